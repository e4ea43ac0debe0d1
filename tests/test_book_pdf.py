"""`make pdf`: the whole book as one PDF, with every chapter and its math typeset.

Runs `make pdf` itself (the singlehtml build reuses the execution cache of
the HTML build, so the chapters are not executed again when it is warm), then
reads the PDF back with pdftotext and pdfimages (poppler-utils; `make test`
installs it): every chapter is there, its math typeset, no page is blank
and no toggle caption ("Show code cell source") is printed.
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

    sys.path.insert(0, str(_book.ROOT / "book" / "_ext"))
    import book_pdf  # the page make pdf prints (index.html may only redirect to it)

    printed = book_pdf.single_page(_book.ROOT / "_build" / "singlehtml")
    page = BeautifulSoup(printed.read_text(), "html.parser")
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


# What a toggle says on screen; on paper it is noise (book/_static/bnkit.css
# prints hidden cells open, without their caption).
TOGGLE_CAPTION = re.compile(r"(Show|Hide) code cell (source|output|content)|Toggle hidden content|"
                            r"Click to (show|hide)", re.I)
# A page whose text has fewer characters than this, and no image, is blank.
MIN_PAGE_CHARS = 25


def images_per_page(pdf):
    """{page number: images on it}, from poppler's pdfimages -list."""
    out = subprocess.run(["pdfimages", "-list", str(pdf)], capture_output=True, text=True, check=True).stdout
    counts = {}
    for line in out.splitlines()[2:]:  # two header lines
        fields = line.split()
        if fields and fields[0].isdigit():
            counts[int(fields[0])] = counts.get(int(fields[0]), 0) + 1
    return counts


def page_problems(pdf):
    """Pages with (almost) no text and no figure, and pages that print a
    toggle's caption: one line each."""
    texts = pdf_text(pdf).split("\f")
    images = images_per_page(pdf)
    problems = []
    for number, text in enumerate(texts[:pdf_pages(pdf)], start=1):
        chars = len(re.sub(r"\s+", "", text))
        if chars < MIN_PAGE_CHARS and not images.get(number):
            problems.append(f"page {number} is blank: {chars} characters of text, no figure: {text.strip()[:60]!r}")
        for m in TOGGLE_CAPTION.finditer(text):
            problems.append(f"page {number} prints a toggle's caption: {m.group(0)!r}")
    return problems


def test_no_page_is_blank_and_no_toggle_caption_prints(book_pdf):
    problems = page_problems(book_pdf)
    assert not problems, f"{len(problems)} problems in {book_pdf}:\n  " + "\n  ".join(problems[:20])


def test_the_page_check_catches_blank_pages_and_toggle_captions(tmp_path):
    """page_problems fails a PDF with a blank page and a printed caption, and
    passes pages of text and a page that holds only a figure."""
    if not shutil.which("pdftotext") or not shutil.which("pdfimages"):
        pytest.skip("needs poppler-utils (`make chromium` installs it as root)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.backends.backend_pdf import PdfPages

    pdf = tmp_path / "sample.pdf"
    with PdfPages(pdf) as pages:
        for content in ("text", "blank", "caption", "figure"):
            fig = plt.figure(figsize=(8.27, 11.69))
            if content == "text":
                fig.text(0.1, 0.5, "A page of prose about batch normalization, long enough.")
            elif content == "caption":
                fig.text(0.1, 0.5, "Show code cell source")
                fig.text(0.1, 0.4, "and enough other words to count as a page of text")
            elif content == "figure":
                fig.figimage(np.random.default_rng(0).random((50, 50)), 100, 100)
            pages.savefig(fig)
            plt.close(fig)
    problems = page_problems(pdf)
    assert len(problems) == 2, problems
    assert problems[0].startswith("page 2 is blank"), problems
    assert problems[1].startswith("page 3 prints a toggle's caption"), problems


def test_the_page_count_is_plausible(book_pdf):
    pages = pdf_pages(book_pdf)
    words = len(pdf_text(book_pdf).split())
    # eleven documents with figures: more than two pages each, fewer than sixty
    assert 25 <= pages <= 660, pages
    assert words / pages > 50, f"{words} words on {pages} pages: mostly blank pages?"
