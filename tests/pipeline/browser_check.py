"""Render executed notebooks to HTML and check them in headless Chromium.

Used by tests/pipeline/test_browser.py; also a command line tool for a person:

    .venv/bin/python tests/pipeline/browser_check.py                      # all notebooks/*.ipynb
    .venv/bin/python tests/pipeline/browser_check.py notebooks/01_train_codec.ipynb --out runs/browser

Nothing is executed: nbconvert renders the committed outputs. Each page is opened from a file in a
fresh headless Chromium (Debian's /usr/bin/chromium driven by /usr/bin/chromedriver, no network:
every http(s) request, e.g. the CDN scripts of the nbconvert template, is blocked, so the page looks
the way an offline reader sees it). Per notebook it checks that

- every <audio> element loads its metadata and gets a finite, positive duration,
- every <img> loads (naturalWidth > 0),
- no table is wider than the column that holds it (the cell's output or markdown area), and no
  other output scrolls sideways; no players table has a hole (a row without a player in a column
  of players),
- no output is an error (marked in the HTML by this module's template), nor contains 'Traceback'
  or 'PipelineError', the raw repr of a widget (`VBox(children=...`) or an absolute path of the
  machine the notebook ran on (/home/..., /work/..., C:\\...),
- the page shows at least the players and images that the notebook's outputs hold,

and it saves the HTML and a full-page PNG screenshot (`<out>/<notebook>.html`, `.png`).
The page is 1280 px wide (CSS px, scale 1): the code column is then 1143 px.

This module does not import mmdlib.
"""
from __future__ import annotations

import argparse
import base64
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1280, 1000)  # CSS px; the height only matters for the first paint, screenshots are full page
CHROME_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio", "--lang=en-US",
    "--force-device-scale-factor=1", f"--window-size={WINDOW[0]},{WINDOW[1]}",
]
MEDIA_TIMEOUT_S = 20.0  # all players and images of one page together

# The nbconvert `lab` template, with a hidden marker after every error output (the template itself
# renders errors and stderr streams alike, as data-mime-type="application/vnd.jupyter.stderr").
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{% block error -%}
{{ super() }}<span hidden class="browser-check-error" data-ename="{{ output.ename | e }}"></span>
{%- endblock error %}
"""


def missing_browser() -> str | None:
    """Why the browser check cannot run here (None when it can): only the two Debian binaries.

    A missing `selenium` is not a reason to skip: it is in the `dev` extra, so importing it fails loudly.
    """
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        return (f"{' and '.join(missing)} not found: install Debian's browser with "
                "`apt-get install -y chromium chromium-driver` (.ci/run does)")
    return None


def render(notebook: Path, html_path: Path) -> Path:
    """nbconvert the notebook's committed outputs (no execution) to a standalone HTML file."""
    import jinja2
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", template_file="browser_check.html.j2",
                            extra_loaders=[jinja2.DictLoader({"browser_check.html.j2": _TEMPLATE})])
    exporter.log.setLevel("ERROR")  # not its 'Alternative text is missing on N image(s)' for every figure
    body, _ = exporter.from_filename(str(notebook))
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(body, encoding="utf-8")
    return html_path


def start_browser(user_data_dir: str):
    """Headless Chromium through chromedriver at fixed paths (Selenium Manager never runs)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(MEDIA_TIMEOUT_S + 10)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["http://*", "https://*", "ws://*", "wss://*"]})
    return driver


# --- what runs in the page -----------------------------------------------------------------------
# Every element is described by `where`: its cell (index in the notebook, id, Out[n] prompt) and,
# inside a table, the row and column headers, so that a failure message points at it.
_JS_COMMON = r"""
const cells = [...document.querySelectorAll('main > .jp-Cell, body > .jp-Cell')];
const squash = s => (s || '').replace(/\s+/g, ' ').trim();
const short = (s, n) => { s = squash(s); return s.length > n ? s.slice(0, n - 1) + '…' : s; };
function cellOf(el) {
  const cell = el.closest('.jp-Cell');
  const index = cells.indexOf(cell);
  const id = cell ? (cell.id || '').replace(/^cell-id=/, '') : '';
  const child = el.closest('.jp-OutputArea-child');
  const noColon = s => squash(s).replace(/:$/, '');
  const prompt = child ? noColon(child.querySelector('.jp-OutputArea-prompt')?.textContent) : '';
  const inPrompt = cell ? noColon(cell.querySelector('.jp-InputPrompt')?.textContent) : '';
  const kind = cell && cell.classList.contains('jp-MarkdownCell') ? 'markdown cell' : 'cell';
  let s = `${kind} ${index}` + (id ? ` (id ${id})` : '');
  if (prompt) s += ` ${prompt}`; else if (inPrompt) s += ` ${inPrompt}`;
  return s;
}
function headerRow(table) {  // the row of column headers: <thead>'s last, or a first row of <th> only
  if (table.tHead && table.tHead.rows.length) return table.tHead.rows[table.tHead.rows.length - 1];
  const first = table.rows[0];
  return first && first.cells.length && [...first.cells].every(c => c.tagName === 'TH') ? first : null;
}
function tableLabel(table) {
  const head = headerRow(table);
  const heads = head ? [...head.cells].map(c => squash(c.textContent)).filter(Boolean) : [];
  const rows = table.rows.length, cols = Math.max(0, ...[...table.rows].map(r => r.cells.length));
  let s = `${rows}x${cols} table`;
  if (heads.length) s += ` with columns [${short(heads.join(' | '), 100)}]`;
  else if (table.rows.length) s += ` starting '${short(table.rows[0].textContent, 60)}'`;
  return s;
}
function where(el) {
  let s = cellOf(el);
  const td = el.closest('td, th');
  const table = td && td.closest('table');
  if (table) {
    const tr = td.parentElement;
    const rowHead = squash(tr.querySelector('th')?.textContent) || `row ${[...table.rows].indexOf(tr)}`;
    const col = [...tr.cells].indexOf(td);
    const headRow = headerRow(table);
    const colHead = headRow && headRow.cells[col] ? squash(headRow.cells[col].textContent) : `column ${col}`;
    s += `, row '${short(rowHead, 60)}', column '${short(colHead || 'column ' + col, 60)}'`;
  } else {
    const child = el.closest('.jp-OutputArea-child, .jp-Cell');
    const siblings = [...child.querySelectorAll(el.tagName)];
    s += `, ${el.tagName.toLowerCase()} ${siblings.indexOf(el) + 1} of ${siblings.length} in this output`;
    const alt = /^No description has been provided/.test(el.alt || '') ? '' : el.alt;  // nbconvert's default alt
    const label = squash(el.title || alt || el.previousElementSibling?.textContent || el.parentElement?.previousElementSibling?.textContent);
    if (label) s += ` ('${short(label, 60)}')`;
  }
  return s;
}
"""

_JS_MEDIA = _JS_COMMON + r"""
const done = arguments[arguments.length - 1];
const timeoutMs = arguments[0];
const waitFor = (el, ok, events) => new Promise(resolve => {
  if (ok()) return resolve();
  const finish = () => resolve();
  for (const e of events) el.addEventListener(e, finish, {once: true});
  setTimeout(finish, timeoutMs);
});
const loaded = document.readyState === 'complete' ? Promise.resolve()
  : new Promise(resolve => addEventListener('load', resolve, {once: true}));
loaded.then(() => {
const audios = [...document.querySelectorAll('audio')];
const images = [...document.querySelectorAll('img')];
const waits = [];
for (const a of audios) {
  waits.push(waitFor(a, () => a.readyState >= 1 || a.error, ['loadedmetadata', 'error']));
  if (a.readyState < 1 && !a.error) { a.preload = 'metadata'; a.load(); }  // players are preload="none"
  for (const s of a.querySelectorAll('source')) s.addEventListener('error', () => a.dispatchEvent(new Event('error')), {once: true});
}
for (const img of images) waits.push(waitFor(img, () => img.complete, ['load', 'error']));
Promise.all(waits).then(() => done({
  audios: audios.map(a => ({where: where(a), duration: String(a.duration), readyState: a.readyState,
                            error: a.error ? `MediaError code ${a.error.code} ${a.error.message || ''}`.trim() : null,
                            src: short(a.currentSrc || a.src || a.querySelector('source')?.src, 40)})),
  images: images.map(img => ({where: where(img), complete: img.complete, naturalWidth: img.naturalWidth,
                              naturalHeight: img.naturalHeight, width: Math.round(img.getBoundingClientRect().width),
                              height: Math.round(img.getBoundingClientRect().height),
                              src: short(img.currentSrc || img.src, 40)})),
}));
});
"""

_JS_LAYOUT = _JS_COMMON + r"""
const px = v => parseFloat(v) || 0;
function contentWidth(el) {  // the width its children may use: client width minus padding
  const cs = getComputedStyle(el);
  return el.clientWidth - px(cs.paddingLeft) - px(cs.paddingRight);
}
const tables = [...document.querySelectorAll('table')].filter(t => !t.parentElement.closest('table'));
const out = {
  page: {innerWidth: innerWidth, clientWidth: document.documentElement.clientWidth,
         scrollWidth: document.documentElement.scrollWidth, bodyScrollWidth: document.body.scrollWidth,
         height: document.documentElement.scrollHeight},
  cells: cells.length,
  tables: tables.map(t => {
    const box = t.closest('.jp-OutputArea-output, .jp-MarkdownOutput, .jp-RenderedMarkdown, .jp-Cell');
    return {where: cellOf(t), label: tableLabel(t),
            width: Math.ceil(Math.max(t.getBoundingClientRect().width, t.scrollWidth)),
            column: box.clientWidth, inner: Math.floor(contentWidth(box)),
            scrolls: Math.max(0, box.scrollWidth - box.clientWidth)};
  }),
  wide: [...document.querySelectorAll('.jp-OutputArea-output, .jp-MarkdownOutput')]
    .filter(b => b.scrollWidth > b.clientWidth + 1 && !b.querySelector('table'))
    .map(b => ({where: cellOf(b), mime: b.dataset.mimeType || '', width: b.scrollWidth, column: b.clientWidth,
                excerpt: short(b.textContent, 80)})),
  errors: [...document.querySelectorAll('.browser-check-error')].map(m => ({where: cellOf(m), ename: m.dataset.ename})),
  texts: [],
  holes: [],
  widgets: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
};
// players tables with holes: a row without a player under a column that has players elsewhere
for (const t of tables) {
  if (!t.querySelector('audio')) continue;
  const head = headerRow(t);
  const bodyRows = [...t.rows].filter(r => r !== head);
  const ncols = Math.max(0, ...bodyRows.map(r => r.cells.length));
  const colHasAudio = [...Array(ncols).keys()].map(c => bodyRows.some(r => r.cells[c]?.querySelector('audio')));
  const holes = [];
  for (const r of bodyRows) for (let c = 0; c < ncols; c++) {
    const cell = r.cells[c];
    if (colHasAudio[c] && (!cell || (!cell.querySelector('audio') && !squash(cell.textContent)))) {
      const colHead = head && head.cells[c] ? squash(head.cells[c].textContent) : `column ${c}`;
      holes.push(`'${short(squash(r.querySelector('th')?.textContent) || 'row', 40)}' x '${short(colHead, 50)}'`);
    }
  }
  if (holes.length) out.holes.push({where: cellOf(t), label: tableLabel(t), holes: holes});
}
const absPath = new RegExp(arguments[0]);
for (const o of document.querySelectorAll('.jp-OutputArea-output')) {
  const text = o.textContent || '';
  const m = absPath.exec(text);
  if (m) out.texts.push({where: cellOf(o), why: `an absolute path (${short(m[1], 70)})`, mime: o.dataset.mimeType || '',
                         excerpt: short(text.slice(Math.max(0, m.index - 30), m.index + 90), 120)});
  for (const [needle, why] of [['Traceback', 'a traceback'], ['PipelineError', 'a PipelineError'],
                               ['children=(', 'the raw repr of a widget']]) {
    const i = text.indexOf(needle);
    if (i >= 0) out.texts.push({where: cellOf(o), why: why, mime: o.dataset.mimeType || '',
                                excerpt: short(text.slice(Math.max(0, i - 40), i + 80), 120)});
  }
}
return out;
"""


@dataclass
class Report:
    notebook: str
    html: Path
    screenshot: Path
    counts: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        c = self.counts
        s = (f"{self.notebook}: {c.get('players', 0)} players, {c.get('images', 0)} images, "
             f"{c.get('tables', 0)} tables, {c.get('widgets', 0)} widgets, {c.get('cells', 0)} cells; "
             f"{len(self.problems)} problem(s); {self.seconds:.1f} s; screenshot {self.screenshot}")
        return s

    def details(self) -> str:
        lines = [self.summary()]
        lines += [f"  FAIL {p}" for p in self.problems]
        lines += [f"  note {n}" for n in self.notes]
        return "\n".join(lines)


# An absolute path in an output: the machine the notebook ran on (home folders, this checkout, /work,
# /tmp, Windows drives). Outputs should print paths relative to the repository.
ABSOLUTE_PATH = re.compile(
    "(?:^|[\\s'\"(=:,\\[])((?:/(?:home|Users|root|work|mnt|tmp|private|var/folders|content|data|scratch)/"
    "|[A-Za-z]:\\\\)[^\\s'\"),:\\]]+)")


def expected_counts(nb) -> dict:
    """Players and images in the notebook's outputs, from the JSON (what the page must show at least)."""
    players = images = 0
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            players += cell.source.count("<audio")
            continue
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                continue  # a widget shows whatever its (JavaScript) view draws
            html = data.get("text/html", "")
            html = "".join(html) if isinstance(html, list) else html
            players += html.count("<audio")
            images += html.count("<img")
            images += any(k in data for k in ("image/png", "image/jpeg", "image/gif", "image/svg+xml"))
    return {"players": players, "images": images}


def _screenshot(driver, path: Path) -> None:
    """Full-page PNG at scale 1 (Chrome DevTools protocol: selenium's Chrome has no full-page call)."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    clip = {"x": 0, "y": 0, "width": max(1, int(size["width"])), "height": max(1, int(size["height"])), "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot",
                                  {"format": "png", "captureBeyondViewport": True, "clip": clip})
    path.write_bytes(base64.b64decode(shot["data"]))


def _wait_loaded(driver, url: str, timeout_s: float = 60.0) -> None:
    """Wait for the whole document: driver.get can return while a large page is still being parsed."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = driver.execute_script("return [location.href, document.readyState]")
        if state == [url, "complete"]:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not finish loading in {timeout_s:.0f} s (last state {state})")
        time.sleep(0.05)


def check_page(driver, notebook: Path, out_dir: Path) -> Report:
    """Render one notebook, open it, run every check, save the screenshot."""
    import nbformat

    t0 = time.perf_counter()
    name = notebook.stem
    html = render(notebook, out_dir / f"{name}.html")
    report = Report(notebook=notebook.name, html=html, screenshot=out_dir / f"{name}.png")
    nb = nbformat.read(str(notebook), as_version=4)

    url = html.resolve().as_uri()
    driver.get(url)
    _wait_loaded(driver, url)
    media = driver.execute_async_script(_JS_MEDIA, int(MEDIA_TIMEOUT_S * 1000))
    layout = driver.execute_script(_JS_LAYOUT, ABSOLUTE_PATH.pattern)
    _screenshot(driver, report.screenshot)

    nbname = notebook.name
    for a in media["audios"]:
        try:
            duration = float(a["duration"])
        except ValueError:
            duration = float("nan")
        if a["error"] or not (math.isfinite(duration) and duration > 0):
            why = a["error"] or (f"duration {a['duration']}" if a["readyState"] >= 1
                                 else f"no metadata after {MEDIA_TIMEOUT_S:.0f} s (readyState {a['readyState']})")
            report.problems.append(f"{nbname}, {a['where']}: audio player does not load: {why} (src {a['src']})")
    for img in media["images"]:
        if not img["complete"] or img["naturalWidth"] <= 0:
            report.problems.append(f"{nbname}, {img['where']}: image does not load "
                                   f"(complete={img['complete']}, naturalWidth={img['naturalWidth']}, src {img['src']})")
    for t in layout["tables"]:
        over = max(t["scrolls"], t["width"] - t["inner"])
        if over > 1:
            report.problems.append(
                f"{nbname}, {t['where']}: {t['label']} is {t['width']} px wide in a {t['column']} px output "
                f"column ({t['inner']} px inside its padding): {over} px too wide"
                + (", the output scrolls sideways" if t["scrolls"] > 1 else ""))
    for w in layout["wide"]:
        report.problems.append(f"{nbname}, {w['where']}: output ({w['mime']}) is {w['width']} px wide in a "
                               f"{w['column']} px column, it scrolls sideways: '{w['excerpt']}'")
    for h in layout["holes"]:
        report.problems.append(f"{nbname}, {h['where']}: players {h['label']} has cells without a player: "
                               + ", ".join(h["holes"][:6]) + (" ..." if len(h["holes"]) > 6 else ""))
    for e in layout["errors"]:
        report.problems.append(f"{nbname}, {e['where']}: error output ({e['ename']})")
    for t in layout["texts"]:
        report.problems.append(f"{nbname}, {t['where']}: output contains {t['why']} "
                               f"({t['mime']}): '{t['excerpt']}'")
    # error outputs straight from the notebook too, in case a template ever drops the marker
    rendered_errors = {e["where"].split(" (")[0] for e in layout["errors"]}
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error" and f"cell {i}" not in rendered_errors:
                report.problems.append(f"{nbname}, cell {i}: error output {o.get('ename')}: {o.get('evalue', '')[:100]}")

    # what the notebook's outputs hold: a page that shows fewer players or images lost some
    expected = expected_counts(nb)
    for what, shown in (("players", len(media["audios"])), ("images", len(media["images"]))):
        if shown < expected[what]:
            report.problems.append(f"{nbname}: the page shows {shown} {what}, the notebook's outputs hold "
                                   f"{expected[what]}")

    page = layout["page"]
    if page["scrollWidth"] > page["clientWidth"] + 1:
        report.notes.append(f"the page scrolls sideways: {page['scrollWidth']} px of content "
                            f"in a {page['clientWidth']} px window")
    if layout["cells"] != len(nb.cells):
        report.notes.append(f"{layout['cells']} cells on the page, {len(nb.cells)} in the notebook "
                            "(cell numbers above count the page's cells)")
    if layout["widgets"]:
        report.notes.append(f"{layout['widgets']} widget view(s): static HTML needs the widget manager "
                            "from a CDN, so offline they show nothing")
    durations = [float(a["duration"]) for a in media["audios"] if not a["error"]]
    durations = [d for d in durations if math.isfinite(d)]
    if durations:
        report.notes.append(f"player durations {min(durations):.2f} to {max(durations):.2f} s")
    for img in media["images"]:
        report.notes.append(f"image {img['where']}: {img['naturalWidth']}x{img['naturalHeight']} px, "
                            f"shown at {img['width']}x{img['height']}")
    report.counts = {"players": len(media["audios"]), "images": len(media["images"]),
                     "tables": len(layout["tables"]), "widgets": layout["widgets"], "cells": layout["cells"],
                     "page_height": page["height"]}
    report.seconds = time.perf_counter() - t0
    return report


class Browser:
    """One Chromium for several pages, with its own throw-away profile."""

    def __enter__(self):
        self._profile = tempfile.mkdtemp(prefix="browser-check-profile-")
        try:
            self.driver = start_browser(self._profile)
        except BaseException:
            shutil.rmtree(self._profile, ignore_errors=True)
            raise
        return self

    def check(self, notebook: Path, out_dir: Path) -> Report:
        return check_page(self.driver, Path(notebook), Path(out_dir))

    def __exit__(self, *exc):
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        default=sorted((root / "notebooks").glob("[0-9]*.ipynb")))
    parser.add_argument("--out", type=Path, default=root / "runs" / "browser",
                        help="where the HTML and screenshots go (default runs/browser/)")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    args = parser.parse_args(argv)
    why = missing_browser()
    if why:
        print(why, file=sys.stderr)
        return 2
    reports = []
    with Browser() as browser:
        for nb in args.notebooks:
            reports.append(browser.check(nb, args.out))
            print(reports[-1].details(), flush=True)
    if args.json:
        print(json.dumps([{"notebook": r.notebook, "counts": r.counts, "problems": r.problems,
                           "notes": r.notes, "screenshot": str(r.screenshot)} for r in reports]))
    return 1 if any(r.problems for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
