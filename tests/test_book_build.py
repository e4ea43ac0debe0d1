"""The book builds strictly, every chapter is there, and no page needs the network.

The build is `make book`'s: `jupyter-book build . -W -n --keep-going`, so a
Sphinx warning, a broken reference or a notebook cell that raises fails it.
It runs once per session (see _book.py); test_book_browser.py then opens the
pages in Chromium.
"""
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _book  # noqa: E402

pytestmark = pytest.mark.slow

# Tags whose URL attribute the browser fetches while rendering the page.
RESOURCE_TAG = re.compile(
    r"<(script|link|img|iframe|source|video|audio|embed|object)\b[^>]*?"
    r"\b(src|href|data)\s*=\s*[\"']([^\"']*)[\"']", re.I)
EXTERNAL = re.compile(r"^\s*(https?:)?//", re.I)
CSS_URL = re.compile(r"(?:@import\s+(?:url\()?|url\()\s*[\"']?((?:https?:)?//[^\"')\s]+)", re.I)


@pytest.fixture(scope="module")
def book():
    build = _book.build_book()
    if build.returncode != 0:
        errors = [line for line in build.log.splitlines()
                  if "WARNING:" in line or "ERROR" in line or "Error" in line]
        pytest.fail(
            f"the strict book build failed (exit code {build.returncode}); "
            f"full log in test-artifacts/book-build.log. Problems:\n"
            + "\n".join(errors[-30:] or build.log.splitlines()[-40:]))
    return build


def test_the_strict_build_passes_without_warnings(book):
    warnings = [line for line in book.log.splitlines() if "WARNING:" in line]  # Sphinx's format
    assert not warnings, warnings
    print(f"book build: {book.seconds:.0f} s")


def test_every_chapter_in_the_toc_is_built(book):
    files = _book.toc_files()
    assert len(files) >= 11, files  # preface, nine chapters, bibliography
    missing = [f for f in files if not (book.html / f"{f}.html").is_file()]
    assert not missing, f"pages in _toc.yml without HTML: {missing}"
    assert (book.html / "index.html").is_file()


@pytest.mark.parametrize("chapter", ["03_forward", "04_backward_graph", "05_backward_closed_form",
                                     "06_gradient_checking", "07_beyond_nd"])
def test_derivation_chapters_have_their_figures_and_measured_numbers(book, chapter):
    page = (book.html / "book" / f"{chapter}.html").read_text()
    images = re.findall(r"<img[^>]*\bsrc=\"([^\"]+)\"", page)
    assert images, f"{chapter} has no figure"
    for src in images:
        assert (book.html / "book" / src).resolve().is_file(), f"{chapter}: missing image {src}"
    # numbers in the prose are glued from executed cells (myst-nb's pasted-text)
    assert page.count('class="pasted-text"') >= 3, f"{chapter} has no measured numbers in its prose"
    assert "Traceback (most recent call last)" not in page, f"{chapter} shows a traceback"


def test_no_page_loads_anything_from_the_network(book):
    offenders = []
    for page in _book.html_pages(book.html):
        text = page.read_text(errors="replace")  # a missing page fails here
        for tag, _, url in RESOURCE_TAG.findall(text):
            if EXTERNAL.match(url):
                offenders.append(f"{page.relative_to(book.html)}: <{tag}> {url}")
        offenders += [f"{page.relative_to(book.html)}: inline CSS {url}" for url in CSS_URL.findall(text)]
    for css in (book.html / "_static").rglob("*.css"):
        offenders += [f"{css.relative_to(book.html)}: {url}" for url in CSS_URL.findall(css.read_text())]
    assert not offenders, "external resources:\n" + "\n".join(offenders)


def test_mathjax_is_served_from_the_book(book):
    script = book.html / "mathjax" / "tex-mml-chtml.js"
    fonts = list((book.html / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    assert script.is_file() and len(fonts) > 10
    page = (book.html / "book" / "05_backward_closed_form.html").read_text()
    src = re.search(r"<script[^>]*src=\"([^\"]*tex-mml-chtml\.js[^\"]*)\"", page)
    assert src, "the derivation chapter does not load MathJax"
    assert "://" not in src.group(1)
    assert (book.html / "book" / src.group(1).split("?")[0]).resolve() == script.resolve()


def test_a_cell_that_raises_fails_the_build(tmp_path):
    """The book's own configuration turns an exception in a cell into a failed build."""
    shutil.copy(_book.ROOT / "_config.yml", tmp_path)
    shutil.copy(_book.ROOT / "references.bib", tmp_path)
    (tmp_path / "book" / "_extra").mkdir(parents=True)
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    (tmp_path / "book" / "intro.md").write_text(
        "---\njupytext:\n  text_representation:\n    format_name: myst\n"
        "kernelspec:\n  display_name: Python 3\n  name: python3\n---\n\n"
        "# A chapter with a bug\n\n```{code-cell} ipython3\nprint(1 / 0)\n```\n")
    returncode, log = _book.run_build(tmp_path, timeout=600)
    assert returncode != 0, log[-3000:]
    assert "ZeroDivisionError" in log, log[-3000:]
