"""The built smoke book in headless Chromium, served on 127.0.0.1: every page renders, offline.

Checks on every page of the book: no error or traceback output, every image loaded, every internal link
(and its #anchor) resolves, equations rendered by MathJax, and no request for any host but 127.0.0.1.
For readers: no progress bar or warning text, a Findings admonition on every experiment chapter, at least
one citation per chapter linked to the References page, the scorecard on the introduction, and no table wider
than the text column (at a 1280 px window), no 0, 1, 2, ... index column, and every figure numbered,
captioned and referred to from the text.
Screenshots of the home page and one results page go to ``build/test-artifacts/``.
``APNB_BROWSER_BOOK=<path of an index.html>`` checks another built book instead (e.g. the demo book).
"""
import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

pytestmark = pytest.mark.book

ARTIFACTS = Path(__file__).resolve().parents[1] / "build" / "test-artifacts"


def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        msg = "chromium is not installed: `apt-get install chromium` (make install tries it)"
        if os.environ.get("APNB_REQUIRE_BROWSER"):
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


@pytest.fixture(scope="module")
def served(request):
    other = os.environ.get("APNB_BROWSER_BOOK")
    root = Path(other).resolve().parent if other else request.getfixturevalue("smoke_book").parent
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(root))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()


def _book_pages(root: Path):
    pages = ["index.html"] + sorted(str(p.relative_to(root)) for d in ("notebooks", "book") for p in (root / d).glob("*.html"))
    return pages


# what a reader must never meet in a page: a progress bar, a warning, a traceback
NOISE = re.compile(r"\d+%\|[^|]*\||\d+it/s\]|\[\d+:\d+<|TqdmWarning|IProgress not found|UserWarning|FutureWarning|"
                   r"DeprecationWarning|RuntimeWarning|Traceback \(most recent call last\)")
EXPERIMENTS = re.compile(r"notebooks/(0[0-7]|2[0-3])_")  # the chapters that run an experiment


def _reader_problems(page, rel: str) -> list[str]:
    """The reader-facing checks of one page (findings first, citations, no noise, the scorecard)."""
    out = []
    text = page.inner_text("main")
    for m in list(NOISE.finditer(text))[:3]:
        out.append(f"progress bar or warning text shown: ...{text[max(0, m.start() - 40):m.end() + 20]!r}...")
    chapter = re.match(r"notebooks/[0-2]\d_", rel)  # the book's chapters (30 is the execution page)
    if EXPERIMENTS.search(rel):
        items = page.evaluate("""Array.from(document.querySelectorAll('.admonition'))
            .filter(a => (a.querySelector('.admonition-title') || {textContent: ''}).textContent.trim().startsWith('Findings'))
            .map(a => a.querySelectorAll('li').length)""")
        if not items:
            out.append("no Findings admonition")
        elif "00_" not in rel and not max(items):  # 00's findings are a sentence; the others a list of claims
            out.append("the Findings admonition shows its claims as run-on text, not as a list")
    wide = page.evaluate("""(() => {
        const col = document.querySelector('article.bd-article') || document.querySelector('main');
        const w = col.clientWidth;
        return Array.from(col.querySelectorAll('table'))
            .map(t => ({w: Math.round(t.getBoundingClientRect().width), cols: t.rows.length ? t.rows[t.rows.length - 1].cells.length : 0,
                        head: (t.querySelector('th') || {textContent: ''}).textContent.trim().slice(0, 30)}))
            .filter(t => t.w > w + 2).map(t => ({...t, col: w}));
    })()""")
    out += [f"a table is wider than the page's text column ({t['w']} px, {t['cols']} columns, first header "
            f"{t['head']!r}; the column is {t['col']} px)" for t in wide]
    # a DataFrame's 0, 1, 2, ... row labels are not information: a reader should not meet an index column
    counters = page.evaluate("""Array.from(document.querySelectorAll('main table')).filter(t => {
        const labels = Array.from(t.querySelectorAll('tbody tr')).map(r => r.cells[0]).filter(c => c && c.tagName === 'TH')
            .map(c => c.textContent.trim());
        return labels.length > 1 && labels.every((s, i) => s === String(i));
    }).length""")
    if counters:
        out.append(f"{counters} table(s) show a 0, 1, 2, ... index column")
    # every figure a notebook draws is numbered, captioned and referred to from the text
    for f in page.evaluate("""Array.from(document.querySelectorAll('main .cell_output img')).map(img => {
        const fig = img.closest('figure');
        const id = fig ? (fig.id || (fig.querySelector('[id]') || {id: ''}).id) : '';
        return {src: img.getAttribute('src').split('/').pop(), numbered: !!(fig && fig.querySelector('figcaption .caption-number')),
                cited: !!(id && document.querySelector('a[href="#' + id + '"]'))};
    })"""):
        if not f["numbered"]:
            out.append(f"figure {f['src']} has no number and caption")
        elif not f["cited"]:
            out.append(f"figure {f['src']} is not referred to from the text")
    if chapter and not page.locator("a[href*='references.html#']").count():
        out.append("no citation linked to the References page")
    if rel == "book/intro.html":
        heads = page.eval_on_selector_all("table th", "els => els.map(e => e.textContent.trim())")
        if not {"claim", "the paper", "verdict"} <= set(heads):
            out.append(f"no reproduction scorecard on the introduction (table headers: {heads[:8]})")
    return out


def test_every_page_in_headless_chromium(served):
    from playwright.sync_api import sync_playwright

    root, base = served
    exe = _chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    external, problems = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: external.append(r.url) if urlparse(r.url).hostname not in (None, "127.0.0.1") else None)
        page.on("response", lambda r: problems.append(f"HTTP {r.status} for {r.url}") if r.status >= 400 else None)
        for rel in _book_pages(root):
            page.goto(base + rel, wait_until="networkidle")
            if page.locator(".output.traceback, .output.error, .ansi-red-intense-fg").count():
                problems.append(f"{rel}: an error/traceback output is shown")
            broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
            problems += [f"{rel}: image not loaded: {s}" for s in broken]
            if page.locator(".math").count():
                try:
                    page.wait_for_selector("mjx-container", timeout=20000)
                except Exception:
                    problems.append(f"{rel}: equations present but MathJax rendered none")
                if page.locator("mjx-merror").count():
                    problems.append(f"{rel}: MathJax reports an error in an equation")
            for href in page.evaluate("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"):
                u = urlparse(href)
                if u.hostname != "127.0.0.1":
                    continue  # links out are allowed; only requests are not
                target = root / unquote(u.path.lstrip("/"))
                if target.is_dir():
                    target = target / "index.html"
                if not target.exists():
                    problems.append(f"{rel}: broken internal link {href}")
                elif u.fragment and target.suffix == ".html":
                    if not re.search(rf'id="{re.escape(unquote(u.fragment))}"', target.read_text(errors="replace")):
                        problems.append(f"{rel}: link to a missing anchor {href}")
            problems += [f"{rel}: {p}" for p in _reader_problems(page, rel)]
            if rel == "index.html":
                page.screenshot(path=str(ARTIFACTS / "home.png"), full_page=True)
            if rel.endswith("01_voc_distillation.html"):
                page.screenshot(path=str(ARTIFACTS / "results-01_voc_distillation.png"), full_page=True)
        browser.close()
    assert not external, f"requests to external hosts: {sorted(set(external))[:10]}"
    assert not problems, "\n".join(problems[:30])
    assert (ARTIFACTS / "home.png").stat().st_size > 0 and (ARTIFACTS / "results-01_voc_distillation.png").exists()


def test_exercises_show_and_solutions_stay_folded_until_clicked(served):
    """Every exercise of the book renders (sphinx-exercise), and each solution is folded until its toggle is
    clicked (a reader tries first)."""
    from playwright.sync_api import sync_playwright

    from apnb import course, runner

    root, base = served
    chapters = [c for c in course.chapter_exercises(runner.toc_notebooks()) if (root / "notebooks" / f"{c}.html").exists()]
    assert chapters, "no page of this book holds an exercise"
    problems = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        for ch in chapters:
            page.goto(base + f"notebooks/{ch}.html", wait_until="networkidle")
            n_ex = page.locator("main div.exercise.admonition").count()
            sols = page.locator("main div.solution.dropdown")
            if n_ex == 0 or sols.count() == 0:
                problems.append(f"{ch}: {n_ex} exercises and {sols.count()} folded solutions rendered")
            for i in range(sols.count()):
                sol = sols.nth(i)
                body = sol.locator(":scope > :not(.admonition-title)")
                if body.count() == 0:
                    problems.append(f"{ch}: solution {i} has no body")
                    continue
                if body.first.is_visible():
                    problems.append(f"{ch}: solution {i} is open before it is clicked")
                    continue
                sol.locator("button.toggle-button").first.click()
                page.wait_for_timeout(300)
                if not body.first.is_visible():
                    problems.append(f"{ch}: solution {i} does not open when clicked")
        browser.close()
    assert not problems, "\n".join(problems[:30])
