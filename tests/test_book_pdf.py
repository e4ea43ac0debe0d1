"""`make pdf`: the whole book as one PDF, with every chapter and its math typeset.

Runs `make pdf` itself (the singlehtml build reuses the execution cache of
the HTML build, so the chapters are not executed again when it is warm), then
reads the PDF back with pdftotext (poppler-utils; `make test` installs it).
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _book  # noqa: E402

pytestmark = pytest.mark.slow

PDF = _book.ROOT / "_build" / "pdf" / "book.pdf"
# What TeX looks like when MathJax has not typeset it.
RAW_TEX = re.compile(r"\$\$|\\(frac|sum|sqrt|mathbf|hat|partial|begin|end|left|right|sigma|gamma|beta|mu|epsilon)\b")


def pdf_text(pdf):
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout


def pdf_pages(pdf):
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))


@pytest.fixture(scope="module")
def book_pdf():
    if not os.access("/usr/bin/chromium", os.X_OK) or not shutil.which("pdftotext"):
        pytest.skip("make pdf needs /usr/bin/chromium and pdftotext (`make chromium` installs both as root)")
    if not _book.ensure_mathjax():
        pytest.fail("MathJax is missing and `make mathjax` could not create it")
    PDF.unlink(missing_ok=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["make", "-s", "pdf"], cwd=_book.ROOT, capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=_book.BUILD_TIMEOUT_S)
    _book.ARTIFACTS.mkdir(exist_ok=True)
    (_book.ARTIFACTS / "book-pdf.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert PDF.is_file(), proc.stdout[-2000:]
    return PDF


def chapter_titles():
    """The first `# ` heading of every document in the toc."""
    titles = {}
    for name in _book.toc_files():
        text = (_book.ROOT / f"{name}.md").read_text()
        titles[name] = re.search(r"^# (.+)$", text, re.M).group(1).strip()
    return titles


def normalise(text):
    return re.sub(r"\s+", " ", text.replace("\u00ad", "")).strip().lower()


def test_every_chapter_is_in_the_pdf(book_pdf):
    text = normalise(pdf_text(book_pdf))
    titles = chapter_titles()
    assert len(titles) >= 11
    # titles keep their MyST markup out: compare the words
    missing = [f"{name}: {title!r}" for name, title in titles.items()
               if normalise(re.sub(r"[`*_{}]|\{[a-z]+\}", "", title)) not in text]
    assert not missing, f"chapters missing from {book_pdf}: {missing}"


def code_text():
    """The text of every code block and cell output of the single-page book:
    there, TeX is code (e.g. a matplotlib label), not math left untypeset."""
    from bs4 import BeautifulSoup

    page = BeautifulSoup((_book.ROOT / "_build" / "singlehtml" / "index.html").read_text(), "html.parser")
    return "\n".join(pre.get_text() for pre in page.find_all("pre"))


def test_the_math_is_typeset_not_raw_tex(book_pdf):
    text, code = pdf_text(book_pdf), code_text()
    in_pdf = {}
    for m in RAW_TEX.finditer(text):
        in_pdf[m.group(0)] = in_pdf.get(m.group(0), 0) + 1
    in_code = {token: len(re.findall(re.escape(token) + (r"\b" if token[-1].isalpha() else ""), code))
               for token in in_pdf}
    raw = {token: n - in_code[token] for token, n in in_pdf.items() if n > in_code[token]}
    assert not raw, f"raw TeX in the PDF outside code (MathJax did not typeset it): {raw}"
    # typeset math leaves its symbols: the Greek letters of the derivations
    assert sum(text.count(c) for c in "γβσμ∂") > 50


def test_the_page_count_is_plausible(book_pdf):
    pages = pdf_pages(book_pdf)
    words = len(pdf_text(book_pdf).split())
    # eleven documents with figures: more than two pages each, fewer than sixty
    assert 25 <= pages <= 660, pages
    assert words / pages > 50, f"{words} words on {pages} pages: mostly blank pages?"
