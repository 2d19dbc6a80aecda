"""Run the numbered notebooks 00..05 in order with papermill: the whole experiment, headless.

    python scripts/run_pipeline.py                                  # tiny preset on CPU (~15 min, 2 cores)
    python scripts/run_pipeline.py --preset paper --device cuda     # the paper's scale on a GPU
    python scripts/run_pipeline.py --only 01_train_codec -p lambdas 0,10,100
    python scripts/run_pipeline.py --inplace                        # refresh the committed outputs and figures/

Executed copies go to <run_dir>/notebooks/ (or replace notebooks/*.ipynb with --inplace, which is how
the outputs committed with the notebooks are produced). Each notebook receives preset, device, seed,
run_dir (if given) and the -p parameters it declares in its `parameters` cell; it checks them in its
first cell and stops with a message if one is wrong. Per-notebook wall times are printed and saved
to <run_dir>/pipeline_times.json.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmdlib.pipeline.params import NOTEBOOKS, PIPELINE_PRESETS, PipelineError, check_device, resolve  # noqa: E402
from mmdlib.train.overrides import apply_overrides  # noqa: E402


def changed(declared: dict, given: dict) -> dict:
    """The given parameters a notebook declares, left out where equal to its default (so that a
    default run injects no parameters cell into the executed notebook)."""
    out = {}
    for name, value in given.items():
        if name not in declared:
            continue
        try:
            if ast.literal_eval(declared[name]["default"]) == value:
                continue
        except (ValueError, SyntaxError):
            pass
        out[name] = value
    return out


def strip_timing(path: Path) -> None:
    """Drop papermill's per-run metadata (timestamps, durations) so that refreshed committed
    notebooks differ only where their content does."""
    import nbformat

    book = nbformat.read(str(path), as_version=4)
    book.metadata.pop("papermill", None)
    for cell in book.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    nbformat.write(book, str(path))


def without_injected(src: Path, tmp_dir: Path) -> Path:
    """A copy of notebook `src` without a stale `injected-parameters` cell (left by an earlier
    papermill run), so that a default run executes the notebook's own defaults."""
    import nbformat

    book = nbformat.read(str(src), as_version=4)
    cells = [c for c in book.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    if len(cells) == len(book.cells):
        return src
    book.cells = cells
    out = tmp_dir / src.name
    nbformat.write(book, str(out))
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help=f"one of {sorted(PIPELINE_PRESETS)} (default tiny)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the preset's)")
    p.add_argument("--run-dir", default=None, help="artifacts folder (default: runs/<preset>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", default=None, metavar="NOTEBOOK",
                   help=f"run only these, in pipeline order (names or prefixes: 01 03_train_lm); of {NOTEBOOKS}")
    p.add_argument("--inplace", action="store_true", help="write the executed notebooks back into notebooks/")
    p.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a notebook parameter, e.g. -p lambdas 0,100 -p lm_steps 500 (repeatable)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    p.add_argument("--log-output", action="store_true",
                   help="stream every cell's output (training progress included) and a progress bar per notebook")
    a = p.parse_args(argv)

    import papermill as pm

    if a.preset not in PIPELINE_PRESETS:
        p.error(f"unknown preset {a.preset!r}; choose one of {sorted(PIPELINE_PRESETS)}")
    preset = PIPELINE_PRESETS[a.preset]
    device = a.device or preset.device
    try:
        check_device(device)
    except PipelineError as e:
        p.error(str(e).replace("-p device cpu (papermill)", "--device cpu"))
    run_dir = a.run_dir or preset.run_dir
    selected = list(NOTEBOOKS)
    if a.only:
        selected = [nb for nb in NOTEBOOKS if any(nb == o or nb.startswith(o) for o in a.only)]
        if not selected:
            p.error(f"--only {a.only}: no notebook matches; choose from {NOTEBOOKS}")

    params = {"preset": a.preset, "device": device, "seed": a.seed}
    if a.run_dir:
        params["run_dir"] = a.run_dir
    extra = dict(a.param)  # strings: each notebook parses them by the config's types (mmdlib.train.overrides)
    try:  # the same parser, here first: a bad value stops before any notebook runs
        apply_overrides(preset, {k: v for k, v in extra.items() if k != "preset"})
    except ValueError as e:
        p.error(f"-p {e}")
    out_dir = ROOT / "notebooks" if a.inplace else resolve(run_dir) / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    # the kernel imports this checkout's mmdlib, installed or not
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [x for x in [os.environ.get("PYTHONPATH")] if x])

    tmp_dir = Path(tempfile.mkdtemp(prefix="mmdlib-pipeline-"))
    times, unused = {}, set(extra)
    t_all = time.time()
    for nb in selected:
        src = ROOT / "notebooks" / f"{nb}.ipynb"
        declared = pm.inspect_notebook(str(src))
        mine = changed(declared, params | extra)
        unused -= set(declared)
        print(f"[{time.strftime('%H:%M:%S')}] {nb} {mine}", flush=True)
        t0 = time.time()
        try:
            pm.execute_notebook(str(without_injected(src, tmp_dir)), str(out_dir / f"{nb}.ipynb"), parameters=mine,
                                kernel_name=a.kernel,
                                cwd=str(ROOT / "notebooks"), progress_bar=a.log_output, log_output=a.log_output)
        except pm.PapermillExecutionError as e:
            print(f"\n{nb} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                  f"the executed notebook with the error: {out_dir / f'{nb}.ipynb'}", file=sys.stderr)
            raise SystemExit(1) from None
        if a.inplace:
            strip_timing(out_dir / f"{nb}.ipynb")
        times[nb] = round(time.time() - t0, 1)
        print(f"    done in {times[nb]:.0f} s", flush=True)
    times["total"] = round(time.time() - t_all, 1)
    if unused:
        print(f"warning: no notebook declares parameter(s) {sorted(unused)}", file=sys.stderr)
    print(f"pipeline finished in {times['total'] / 60:.1f} min; executed notebooks in {out_dir}")
    if a.inplace:  # the committed figures: the run's, copied over figures/ (its sweep/ subfolder stays)
        figs = resolve(extra.get("fig_dir") or f"{run_dir}/figures")
        for f in sorted(figs.glob("*.*")):
            shutil.copy2(f, ROOT / "figures" / f.name)
        print(f"figures of {figs} copied to {ROOT / 'figures'}")
    timing = resolve(run_dir) / "pipeline_times.json"
    timing.parent.mkdir(parents=True, exist_ok=True)
    timing.write_text(json.dumps(times, indent=1))
    return times


if __name__ == "__main__":
    main()
