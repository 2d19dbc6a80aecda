"""nbval settings for the notebooks (`make nbval`).

nbval re-executes each notebook and compares every cell's output with the committed one, except:
- cells marked `# NBVAL_IGNORE_OUTPUT` (wall times, training logs, audio players, widgets);
- the output types below: rendered images depend on the matplotlib/freetype build, and HTML tables
  repeat their `text/plain` version, which is compared.

The notebooks save their figures to `figures/` as a run would; the figures committed there are put
back when the session ends (and figures the run added are removed), so `make test` leaves the work
tree as it found it. `make notebooks` is the command that refreshes them.
"""
import shutil
import tempfile
from pathlib import Path

FIGURES = Path(__file__).resolve().parent.parent / "figures"
_snapshot: dict = {}


def pytest_sessionstart(session):
    if FIGURES.is_dir():
        keep = Path(tempfile.mkdtemp(prefix="mmdlib-figures-"))
        shutil.copytree(FIGURES, keep / "figures")
        _snapshot["dir"] = keep


def pytest_sessionfinish(session, exitstatus):
    keep = _snapshot.pop("dir", None)
    if keep is None:
        return
    shutil.rmtree(FIGURES)
    shutil.copytree(keep / "figures", FIGURES)
    shutil.rmtree(keep)


def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("image/png", "image/jpeg", "image/svg+xml", "text/html", "stderr",
                                   "application/vnd.jupyter.widget-view+json")
