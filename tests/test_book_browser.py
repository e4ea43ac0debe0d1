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
Screenshots of the derivation chapters go to test-artifacts/.

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
SCREENSHOTS = ["04_backward_graph", "05_backward_closed_form"]

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


def test_every_page_renders_offline_in_chromium(site):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing and could not be installed (`make test` runs "
                    "`apt-get install -y chromium` as root; run `make chromium` to see why it failed)")
    from playwright.sync_api import sync_playwright

    base, root = site
    pages = _book.html_pages(root)
    assert len(pages) >= 11, pages
    external, report, math_pages = [], {}, 0
    _book.ARTIFACTS.mkdir(exist_ok=True)

    def block_external(route):
        if urlsplit(route.request.url).hostname not in LOCAL_HOSTS:
            external.append(route.request.url)
            return route.abort()
        return route.continue_()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.route("**/*", block_external)
        for path in pages:
            rel = path.relative_to(root).as_posix()
            page, problems, facts = check_page(context, base + rel, base, root)
            math_pages += facts["math"] > 0
            if path.stem in SCREENSHOTS:
                page.screenshot(path=str(_book.ARTIFACTS / f"book-{path.stem}.png"), full_page=True)
            page.close()
            if problems:
                report[rel] = problems
        browser.close()

    assert not external, f"requests to non-local hosts (blocked): {sorted(set(external))}"
    assert not report, "\n".join(f"{page}:\n  " + "\n  ".join(p) for page, p in report.items())
    assert math_pages >= 5, f"only {math_pages} pages have math: is MathJax running?"
    for name in SCREENSHOTS:
        assert (_book.ARTIFACTS / f"book-{name}.png").stat().st_size > 10_000
