"""Print the single-page HTML book to one PDF with Debian's chromium, offline.

    python book/_ext/book_pdf.py _build/singlehtml _build/pdf/book.pdf

`make pdf` builds _build/singlehtml (Sphinx's singlehtml builder) and runs
this. The folder is served from a localhost http.server; every request to
another host is refused (the PDF must not depend on the network). Printing
waits until MathJax has typeset every formula, the fonts and every image have
loaded, and stops with a clear error if a formula is left as TeX or an image
is broken. Playwright drives /usr/bin/chromium; it never downloads a browser.
"""
import argparse
import functools
import re
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
# Collapsed cells and dropdowns are opened: paper cannot be clicked. A cell
# toggle (<details>) is opened, and book/_static/bnkit.css prints it without
# its caption or fade-in; a sphinx-togglebutton dropdown (the exercises'
# solutions) loses its hidden state, and its button does not print.
READY = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  document.querySelectorAll('details').forEach(d => d.open = true);
  document.querySelectorAll('.toggle-hidden').forEach(e => e.classList.remove('toggle-hidden'));
  document.querySelectorAll('button.toggle-button').forEach(b => b.remove());
  await document.fonts.ready;
  await Promise.all([...document.images].map(i => i.complete ? null :
      new Promise(r => { i.onload = i.onerror = r; })));
  const math = [...document.querySelectorAll('.math')];
  return {
    math: math.length,
    unrendered: math.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 60)),
    merrors: [...document.querySelectorAll('mjx-merror')].map(e => e.textContent.slice(0, 60)),
    broken_images: [...document.images].filter(i => i.naturalWidth === 0).map(i => i.src),
  };
}"""


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def single_page(site):
    """The page that holds the whole book. Jupyter Book's index.html only
    redirects to the root document (book/intro.html), whose links singlehtml
    writes relative to the folder's root: serve a copy of it from there."""
    index = site / "index.html"
    redirect = re.search(r'http-equiv="Refresh" content="0; url=([^"]+)"', index.read_text(), re.I)
    if not redirect:
        return index
    page = site / "book-print.html"
    page.write_text((site / redirect.group(1)).read_text())
    return page


def print_pdf(site, pdf, chromium=CHROMIUM):
    """Print site/index.html to `pdf`; returns the page's facts. Raises
    RuntimeError when the page cannot be printed faithfully."""
    from playwright.sync_api import sync_playwright

    site, pdf = Path(site).resolve(), Path(pdf).resolve()
    if not (site / "index.html").is_file():
        raise RuntimeError(f"{site}/index.html is missing: build the single-page book first (make pdf does)")
    if not Path(chromium).exists():
        raise RuntimeError(f"{chromium} is missing: `make chromium` installs Debian's chromium")
    pdf.parent.mkdir(parents=True, exist_ok=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    refused, failed = [], []
    start = time.perf_counter()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=LAUNCH_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            def local_only(route):
                if urlsplit(route.request.url).hostname not in ("127.0.0.1", "localhost"):
                    refused.append(route.request.url)
                    return route.abort()
                return route.continue_()

            page.route("**/*", local_only)
            page.on("requestfailed", lambda r: failed.append(r.url))
            book = single_page(site)
            print(f"opening {book} ...", flush=True)
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/{book.name}", wait_until="networkidle",
                      timeout=0)
            print("waiting for MathJax, fonts and images ...", flush=True)
            facts = page.evaluate(READY)
            problems = []
            if facts["unrendered"] or facts["merrors"]:
                problems.append(f"math not typeset: {(facts['unrendered'] + facts['merrors'])[:5]}")
            if facts["broken_images"]:
                problems.append(f"images not loaded: {facts['broken_images'][:5]}")
            # singlehtml writes no search index; the search box is no part of a PDF
            failed = [url for url in failed if url not in refused and not url.endswith("/searchindex.js")]
            if failed:
                problems.append(f"requests failed: {failed[:5]}")
            if refused:
                problems.append(f"the page asked for other hosts (refused): {sorted(set(refused))[:5]}")
            if problems:
                raise RuntimeError("cannot print the book faithfully:\n  " + "\n  ".join(problems))
            print(f"printing {facts['math']} formulas to {pdf} ...", flush=True)
            page.pdf(path=str(pdf), format="A4", print_background=True, outline=True,
                     margin={"top": "18mm", "bottom": "18mm", "left": "16mm", "right": "16mm"})
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    print(f"wrote {pdf} ({pdf.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.0f} s", flush=True)
    return facts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", help="the singlehtml build folder (holds index.html)")
    parser.add_argument("pdf", help="the PDF to write")
    args = parser.parse_args(argv)
    try:
        print_pdf(args.site, args.pdf)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
