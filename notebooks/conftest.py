"""nbval settings for the notebooks (`make nbval`).

nbval re-executes each notebook and compares every cell's output with the committed one, except:
- cells marked `# NBVAL_IGNORE_OUTPUT` (wall times, training logs, audio players, widgets);
- the output types below: rendered images depend on the matplotlib/freetype build, and HTML tables
  repeat their `text/plain` version, which is compared.

The notebooks save their figures under their run_dir (`runs/tiny/figures/`), not in the committed
`figures/`, which only `make notebooks` refreshes.
"""


def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("image/png", "image/jpeg", "image/svg+xml", "text/html", "stderr",
                                   "application/vnd.jupyter.widget-view+json")
