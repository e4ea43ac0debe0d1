"""Every page of the built book, opened in headless Chromium, works offline.

The book is served from a localhost http.server. For each page:
- no request fails, and none goes to a host other than localhost (such
  requests are blocked, so a page that needs the network fails here);
- no JavaScript error;
- the math renders: every `.math` element holds an `mjx-container`, and no
  `mjx-merror` (a TeX error) appears;
- every <img> has loaded (naturalWidth > 0);
- every internal link points at an existing file and, with a #fragment, at
  an existing id in it.
At 1280 px (a laptop) and 390 px (a phone), every page is screenshotted to
test-artifacts/screens/ and nothing may push the text column sideways: the
page, the main containers and the article must not scroll horizontally, and
no element may stick out of the column (wide equations and tables scroll
inside their own box; book/_static/bnkit.css). Besides:
- at 1280 px no code or output box hides any of its content (a scroll bar,
  sideways or down, or clipping), with every toggled cell opened;
- at both widths every figure fits the column (none scrolls inside its
  box), and is a link to its own image file, which opens it full size on a
  tap (book/_static/bnkit.js).

Chromium is Debian's /usr/bin/chromium (`make test` installs it); Playwright
never downloads a browser here.
"""
import functools
import html as html_lib
import os
import re
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _book  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
WIDTHS = {"desktop": 1280, "phone": 390}
SCREENS = _book.ARTIFACTS / "screens"

PAGE_CHECKS = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  await document.fonts.ready;
  const math = [...document.querySelectorAll('.math')];
  return {
    math: math.length,
    unrendered: math.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 60)),
    containers: document.querySelectorAll('mjx-container').length,
    merrors: [...document.querySelectorAll('mjx-merror')].map(e => e.textContent.slice(0, 60)),
    broken_images: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
    images: document.images.length,
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  };
}"""


# Horizontal overflow, measured in the page: the page and its main containers
# must not be wider than their box, and no element may stick out of the
# article column (or, for the theme's full-width and margin content, out of
# the viewport) unless a scrolling box around it holds it.
OVERFLOW = """() => {
  const vw = document.documentElement.clientWidth;
  const problems = [];
  const name = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
      (e.className && typeof e.className === 'string' ? '.' + e.className.trim().split(/\\s+/).join('.') : '');
  const root = document.scrollingElement || document.documentElement;
  if (root.scrollWidth > vw + 1) problems.push(`the page scrolls sideways: ${root.scrollWidth} px wide in ${vw} px`);
  for (const sel of ['body', '.bd-container', '.bd-main', '.bd-content']) {
    for (const e of document.querySelectorAll(sel)) {
      if (e.scrollWidth > e.clientWidth + 1) {
        problems.push(`${sel} overflows: content ${e.scrollWidth} px in ${e.clientWidth} px`);
      }
    }
  }
  const article = document.querySelector('article.bd-article');
  if (!article) return {problems, width: vw, article: false};
  const column = article.getBoundingClientRect();
  const WIDE = '.full-width, .tag_full-width, .margin, .sidebar';
  const sticksOut = e => {
    const r = e.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) return false;
    const [left, right] = e.closest(WIDE) ? [0, vw] : [Math.max(column.left, 0), Math.min(column.right, vw)];
    return r.right > right + 1 || r.left < left - 1;
  };
  const inScrollBox = e => {
    for (let a = e.parentElement; a && a !== article; a = a.parentElement) {
      if (getComputedStyle(a).overflowX !== 'visible') return true;
    }
    return false;
  };
  for (const e of article.querySelectorAll('*')) {
    if (!sticksOut(e) || inScrollBox(e)) continue;
    if (e.parentElement !== article && sticksOut(e.parentElement) && !inScrollBox(e.parentElement)) continue;
    const r = e.getBoundingClientRect();
    problems.push(`${name(e)} (${Math.round(r.left)}..${Math.round(r.right)} px, column ` +
                  `${Math.round(column.left)}..${Math.round(column.right)}, viewport ${vw}): ` +
                  JSON.stringify((e.textContent || '').trim().slice(0, 50)));
  }
  return {problems, width: vw, article: true};
}"""


# Code and output boxes whose content does not fit them, measured with every
# toggle (<details>) opened: a code cell, an output, a code block, or any
# box inside them (a table's scroll container, say) hides content when it
# scrolls or clips (overflow other than visible) and what it holds is wider
# or taller than the box itself.
HIDDEN_CONTENT = """() => {
  document.querySelectorAll('details').forEach(d => d.open = true);
  const article = document.querySelector('article.bd-article');
  if (!article) return [];
  const boxes = article.querySelectorAll(
      '.cell_input, .cell_input *, .cell_output, .cell_output *, div.highlight, pre');
  const problems = [];
  for (const e of boxes) {
    if (e.getClientRects().length === 0) continue;  // not displayed
    if (e.closest('.math, mjx-container')) continue;  // MathJax's own boxes: equations
    const style = getComputedStyle(e);
    const wide = style.overflowX === 'visible' ? 0 : e.scrollWidth - e.clientWidth;
    const tall = style.overflowY === 'visible' ? 0 : e.scrollHeight - e.clientHeight;
    if (wide > 1 || tall > 1) {
      const cls = typeof e.className === 'string' ? e.className.trim().split(/\\s+/)[0] : '';
      problems.push(`${e.tagName.toLowerCase()}${cls ? '.' + cls : ''} hides ` +
                    (wide > 1 ? `${wide} px of width ` : '') + (tall > 1 ? `${tall} px of height ` : '') +
                    JSON.stringify((e.textContent || '').trim().slice(0, 60)));
    }
  }
  return problems;
}"""

# Every figure of the article: its width against the column's (the
# viewport's for the theme's full-width and margin content), and whether it
# links to its own image file.
FIGURES = """() => {
  const article = document.querySelector('article.bd-article');
  if (!article) return [];
  const vw = document.documentElement.clientWidth;
  const column = article.getBoundingClientRect();
  const style = getComputedStyle(article);
  const inner = column.width - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const WIDE = '.full-width, .tag_full-width, .margin, .sidebar';
  return [...article.querySelectorAll('img')].map(img => {
    const r = img.getBoundingClientRect();
    const link = img.closest('a');
    const file = img.getAttribute('src') || '';
    const wide = !!img.closest(WIDE);
    return {
      src: file.split('/').pop(),
      width: r.width, column: wide ? vw : inner,
      left: wide ? r.left : r.left - column.left,
      right: wide ? vw - r.right : column.right - r.right,
      displayed: img.getClientRects().length > 0,
      linked: !!link && link.href === img.src,
    };
  });
}"""


def figure_problems(figures):
    """Figures wider than the column, or not linked to their full size."""
    problems = []
    for f in figures:
        if not f["displayed"]:
            continue
        if f["width"] > f["column"] + 1 or f["left"] < -1 or f["right"] < -1:
            problems.append(f"figure {f['src']} is {f['width']:.0f} px wide in a column of {f['column']:.0f} px")
        if not f["linked"]:
            problems.append(f"figure {f['src']} does not open full size (no link to its file)")
    return problems


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site():
    build = _book.build_book()
    if build.returncode != 0:
        pytest.fail("the book did not build; see test_book_build.py and test-artifacts/book-build.log")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(build.html)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", build.html
    server.shutdown()
    server.server_close()


@functools.lru_cache(maxsize=None)
def ids_in(path):
    """Every id and name attribute of an HTML file (link targets)."""
    text = Path(path).read_text(errors="replace")
    return {html_lib.unescape(m) for m in re.findall(r"\b(?:id|name)\s*=\s*\"([^\"]+)\"", text)}


def broken_internal_links(links, base, root):
    """Internal links whose file or #fragment does not exist."""
    broken = []
    for link in set(links):
        if not link.startswith(base):
            continue
        parts = urlsplit(link)
        path = root / unquote(parts.path.lstrip("/"))
        if parts.path.endswith("/") or path.is_dir():
            path = path / "index.html"
        if not path.is_file():
            broken.append(f"{link} (no such file)")
        elif parts.fragment and path.suffix == ".html" and unquote(parts.fragment) not in ids_in(str(path)):
            broken.append(f"{link} (no such anchor)")
    return sorted(broken)


def check_page(context, url, base, root):
    """Open one page; return a list of its problems and the page's facts."""
    problems = []
    page = context.new_page()
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"))
    page.on("pageerror", lambda e: problems.append(f"JavaScript error: {e}"))
    page.goto(url, wait_until="networkidle")
    facts = page.evaluate(PAGE_CHECKS)
    if facts["unrendered"]:
        problems.append(f"math not rendered by MathJax: {facts['unrendered'][:3]}")
    if facts["math"] and not facts["containers"]:
        problems.append("page has math but no mjx-container")
    if facts["merrors"]:
        problems.append(f"TeX errors: {facts['merrors'][:3]}")
    if facts["broken_images"]:
        problems.append(f"images not loaded: {facts['broken_images']}")
    problems += [f"broken link: {b}" for b in broken_internal_links(facts["links"], base, root)]
    return page, problems, facts


def skip_without_chromium():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing and could not be installed (`make test` runs "
                    "`apt-get install -y chromium` as root; run `make chromium` to see why it failed)")


@pytest.fixture(scope="module")
def browser():
    skip_without_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield browser
        browser.close()


def local_only(context):
    """Refuse every request to another host; returns the list of refused URLs."""
    external = []

    def block_external(route):
        if urlsplit(route.request.url).hostname not in LOCAL_HOSTS:
            external.append(route.request.url)
            return route.abort()
        return route.continue_()

    context.route("**/*", block_external)
    return external


def test_every_page_renders_offline_in_chromium(site, browser):
    base, root = site
    pages = _book.html_pages(root)
    assert len(pages) >= 11, pages
    report, math_pages = {}, 0
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    external = local_only(context)
    for path in pages:
        rel = path.relative_to(root).as_posix()
        page, problems, facts = check_page(context, base + rel, base, root)
        math_pages += facts["math"] > 0
        page.close()
        if problems:
            report[rel] = problems
    context.close()

    assert not external, f"requests to non-local hosts (blocked): {sorted(set(external))}"
    assert not report, "\n".join(f"{page}:\n  " + "\n  ".join(p) for page, p in report.items())
    assert math_pages >= 5, f"only {math_pages} pages have math: is MathJax running?"


@pytest.mark.parametrize("device", list(WIDTHS))
def test_no_page_overflows_its_column_and_every_page_is_screenshotted(site, browser, device):
    base, root = site
    width = WIDTHS[device]
    out = SCREENS / f"{width}px"
    out.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": width, "height": 900 if width > 600 else 844})
    local_only(context)
    report, shots = {}, []
    for path in _book.html_pages(root):
        rel = path.relative_to(root).as_posix()
        page = context.new_page()
        page.goto(base + rel, wait_until="networkidle")
        page.evaluate(PAGE_CHECKS)  # MathJax typeset, fonts loaded: the final layout
        measured = page.evaluate(OVERFLOW)
        assert measured["width"] <= width
        if path.parent == root / "book":
            assert measured["article"], f"{rel} has no article.bd-article: the overflow check cannot see it"
        if path.parent == root / "book" or path.name == "index.html":
            shot = out / f"{path.stem}.png"
            page.screenshot(path=str(shot), full_page=True)
            shots.append(shot)
        problems = measured["problems"] + figure_problems(page.evaluate(FIGURES))
        if device == "desktop":
            problems += page.evaluate(HIDDEN_CONTENT)
        page.close()
        if problems:
            report[rel] = problems
    context.close()

    chapters = [f for f in _book.toc_files() if f.startswith("book/")]
    for chapter in chapters:
        shot = out / f"{Path(chapter).name}.png"
        assert shot in shots and shot.stat().st_size > 10_000, f"no screenshot of {chapter} at {width} px"
    print(f"{len(shots)} screenshots at {width} px in {out}")
    assert not report, (f"overflow, hidden content or figures that do not fit at {width} px "
                        f"(screenshots in {out}):\n") + "\n".join(
        f"{page}:\n  " + "\n  ".join(p[:8]) for page, p in report.items())


SYNTHETIC = """<!doctype html><html><head><style>
  body { margin: 0; } article { width: 600px; padding: 0 20px; }
  .scroll { overflow-x: auto; } .short { max-height: 40px; overflow-y: auto; }
</style></head><body><article class="bd-article">
  <div class="cell_output scroll"><pre>{long_line}</pre></div>
  <div class="highlight short"><pre>1\n2\n3\n4\n5\n6\n7\n8</pre></div>
  <div class="cell_output"><pre>fits</pre></div>
  <div class="cell_output scroll"><img src="{wide}" width="900" height="20"></div>
  <a href="{small}"><img src="{small}" width="100" height="20"></a>
</article></body></html>"""


def test_the_layout_checks_catch_hidden_content_and_wide_figures(browser):
    """The checks above fail on what they are meant to catch: a code box and
    an output box that hide content, a figure wider than the column, a
    figure that opens nowhere; and pass a box and a figure that fit."""
    pixel = "data:image/gif;base64,R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw=="
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_content(SYNTHETIC.replace("{long_line}", "x" * 400).replace("{wide}", pixel + "#wide")
                     .replace("{small}", pixel + "#small"))
    hidden = page.evaluate(HIDDEN_CONTENT)
    figures = figure_problems(page.evaluate(FIGURES))
    page.close()
    assert any(p.startswith("div.cell_output hides") and "of width" in p and "xxxx" in p for p in hidden), hidden
    assert any(p.startswith("div.highlight hides") and "of height" in p for p in hidden), hidden
    assert not any("fits" in p for p in hidden), hidden
    assert sum("px wide in a column of" in p for p in figures) == 1, figures
    assert sum("does not open full size" in p for p in figures) == 1, figures
