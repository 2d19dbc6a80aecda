"""Browser test of the committed notebooks: render them (nbconvert, no execution) and open them in
headless Chromium. Per notebook: every audio player loads a finite duration, every image loads, no
table is wider than its column, no error/traceback/widget repr/absolute path in the outputs. The
HTML and a full-page screenshot of each go to runs/browser/ (BROWSER_CHECK_OUT overrides it).

Needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver; .ci/run installs
them) and selenium (the `dev` extra); skipped only when the two binaries are absent.
Run alone: `make browser`, or `.venv/bin/python tests/pipeline/browser_check.py` for a plain report.
"""
import base64
import io
import os
import struct
import sys
import wave
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import browser_check  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
OUT = Path(os.environ.get("BROWSER_CHECK_OUT", ROOT / "runs" / "browser"))

_missing = browser_check.missing_browser()
needs_browser = pytest.mark.skipif(_missing is not None, reason=f"browser test skipped: {_missing}")


@pytest.fixture(scope="module")
def browser():
    with browser_check.Browser() as b:
        yield b


def test_notebooks_found():
    assert [p.name[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05"], NOTEBOOKS


@needs_browser
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_in_browser(browser, notebook, capsys):
    report = browser.check(notebook, OUT)
    with capsys.disabled():
        print(f"\n[browser] {report.summary()}")
    assert report.counts["cells"] > 0, f"{notebook.name}: no cells on the rendered page"
    assert report.screenshot.stat().st_size > 0
    if report.problems:
        pytest.fail(f"{len(report.problems)} problem(s) in the rendered {notebook.name} "
                    f"(screenshot {report.screenshot}):\n" + "\n".join(report.problems), pytrace=False)


# --- the instrument itself: a made-up notebook with one of each defect, and a clean one ----------------

def _wav_b64(seconds=0.5, rate=8000) -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(b"\0\0" * int(seconds * rate))
    return base64.b64encode(buf.getvalue()).decode()


def _png_b64(width=40, height=30) -> str:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + b"\x80\x20\x20" * width for _ in range(height))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return base64.b64encode(png).decode()


def _notebook(path: Path, broken: bool) -> Path:
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    wav = "AAAA" if broken else _wav_b64()
    png = "iVBORw0KGgoAAAAbroken" if broken else _png_b64()
    cols = 12 if broken else 3
    wide = ("<table><tr><th></th>" + "".join(f"<th>a long column header {i}</th>" for i in range(cols)) + "</tr>"
            + "<tr><th>row</th>" + "".join(f"<td>{'x' * 20}</td>" for _ in range(cols)) + "</tr></table>")
    players = ('<table><tr><th></th><th>a</th><th>b</th></tr>'
               f'<tr><th>one</th><td><audio controls preload="none" src="data:audio/wav;base64,{wav}"></audio></td>'
               f'<td><audio controls preload="none" src="data:audio/wav;base64,{_wav_b64()}"></audio></td></tr>'
               f'<tr><th>two</th><td><audio controls preload="none" src="data:audio/wav;base64,{_wav_b64()}"></audio></td>'
               + ("<td></td>" if broken else
                  f'<td><audio controls preload="none" src="data:audio/wav;base64,{_wav_b64()}"></audio></td>')
               + "</tr></table>")
    cells = [
        new_markdown_cell("# made-up notebook"),
        new_code_cell("players", execution_count=1, outputs=[
            new_output("execute_result", {"text/html": players, "text/plain": "<HTML>"}, execution_count=1)]),
        new_code_cell("figure", execution_count=2, outputs=[
            new_output("display_data", {"image/png": png, "text/plain": "<Figure>"})]),
        new_code_cell("table", execution_count=3, outputs=[
            new_output("execute_result", {"text/html": wide, "text/plain": "<table>"}, execution_count=3)]),
        new_code_cell("log", execution_count=4, outputs=[new_output("stream", name="stdout", text=(
            "wrote /home/someone/mmdlib/runs/x.pt\nVBox(children=(Dropdown(options=('a',)),))\n"
            if broken else "wrote runs/x.pt\n"))]),
    ]
    if broken:
        cells.append(new_code_cell("1/0", execution_count=5, outputs=[new_output(
            "error", ename="PipelineError", evalue="run notebook 01 first",
            traceback=["Traceback (most recent call last):", "PipelineError: run notebook 01 first"])]))
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    nbformat.write(nb, str(path))
    return path


@needs_browser
def test_clean_made_up_notebook_passes(browser, tmp_path):
    report = browser.check(_notebook(tmp_path / "clean.ipynb", broken=False), tmp_path)
    assert report.counts["players"] == 4 and report.counts["images"] == 1 and report.counts["tables"] == 2
    assert report.problems == []


@needs_browser
def test_broken_made_up_notebook_fails_on_each_defect(browser, tmp_path):
    report = browser.check(_notebook(tmp_path / "broken.ipynb", broken=True), tmp_path)
    text = "\n".join(report.problems)
    expected = {
        "broken player, named by row and column": "cell 1 (id",
        "audio": "row 'one', column 'a': audio player does not load",
        "image": "image does not load",
        "wide table": "px wide in a",
        "hole in the players table": "has cells without a player: 'two' x 'b'",
        "error output": "error output (PipelineError)",
        "traceback text": "output contains a traceback",
        "PipelineError text": "output contains a PipelineError",
        "widget repr": "output contains the raw repr of a widget",
        "absolute path": "an absolute path (/home/someone/mmdlib/runs/x.pt)",
    }
    missing = [what for what, needle in expected.items() if needle not in text]
    assert not missing, f"not reported: {missing}; the report was:\n{text}"
    assert all(p.startswith("broken.ipynb") for p in report.problems), text
