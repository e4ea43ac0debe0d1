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
import yaml
from bs4 import BeautifulSoup

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
    for local in ("_ext", "_static"):  # the book's own Sphinx extension and CSS
        shutil.copytree(_book.ROOT / "book" / local, tmp_path / "book" / local,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    (tmp_path / "book" / "intro.md").write_text(
        "---\njupytext:\n  text_representation:\n    format_name: myst\n"
        "kernelspec:\n  display_name: Python 3\n  name: python3\n---\n\n"
        "# A chapter with a bug\n\n```{code-cell} ipython3\nprint(1 / 0)\n```\n")
    returncode, log = _book.run_build(tmp_path, timeout=600)
    assert returncode != 0, log[-3000:]
    assert "ZeroDivisionError" in log, log[-3000:]


# ---- Buttons and downloads (what _config.yml's html:, launch_buttons: and
# book/_ext/bnkit_book.py put on the pages)

def notebook_chapters():
    """The toc's documents that are notebooks (a kernelspec in their front matter)."""
    front_matter = {f: (_book.ROOT / f"{f}.md").read_text().split("\n---", 1)[0] for f in _book.toc_files()}
    return [f for f, text in front_matter.items() if "\nkernelspec:" in text]


def repository():
    config = yaml.safe_load((_book.ROOT / "_config.yml").read_text())
    launch = config["launch_buttons"]
    ui = {"classic": "tree", "jupyterlab": "lab/tree"}[launch["notebook_interface"]]
    return config["repository"]["url"], config["repository"]["branch"], launch["binderhub_url"], ui


def hrefs(page_html, css_class):
    soup = BeautifulSoup(page_html, "html.parser")
    return [a.get("href") for a in soup.select(f"a.{css_class}, button.{css_class}")]


def test_every_chapter_page_carries_the_configured_buttons(book):
    url, branch, binderhub, ui = repository()
    owner_repo = url.removeprefix("https://github.com/")
    chapters = notebook_chapters()
    assert len(chapters) >= 9, chapters
    problems = []
    for chapter in chapters:
        html = (book.html / f"{chapter}.html").read_text()
        soup = BeautifulSoup(html, "html.parser")
        links = {a.get("href") for a in soup.find_all("a")}
        expected = {
            "repository": url,
            "issues": f"{url}/issues/new?title=Issue%20on%20page%20%2F{chapter}.html&body=Your%20issue%20content%20here.",  # noqa: E501
            "edit": f"{url}/edit/{branch}/{chapter}.md",
            "Binder": f"{binderhub}/v2/gh/{owner_repo}/{branch}?urlpath={ui}/{chapter}.md",
            ".md download": f"../_sources/{chapter}.md",
            ".ipynb download": f"../_sources/{chapter}.ipynb",
        }
        problems += [f"{chapter}: no {what} button ({href})" for what, href in expected.items() if href not in links]
        for button in ("fullscreen-button", "download-pdf-button", "download-source-button",
                       "download-notebook-button", "source-repository-button", "source-edit-button",
                       "source-issues-button"):
            if not soup.select(f".btn-{button}"):
                problems.append(f"{chapter}: no .btn-{button}")
        # every download the buttons offer is there
        for href in (expected[".md download"], expected[".ipynb download"]):
            if not (book.html / chapter).parent.joinpath(href).resolve().is_file():
                problems.append(f"{chapter}: {href} is not in the build")
    assert not problems, "\n".join(problems)


def test_chapter_downloads_are_the_chapter_as_markdown_and_notebook(book):
    import jupytext
    import nbformat

    for chapter in notebook_chapters():
        source = (_book.ROOT / f"{chapter}.md").read_text()
        assert (book.html / "_sources" / f"{chapter}.md").read_text() == source, chapter
        notebook = nbformat.read(book.html / "_sources" / f"{chapter}.ipynb", as_version=4)
        nbformat.validate(notebook)
        code = [c.source for c in notebook.cells if c.cell_type == "code"]
        assert code == [c.source for c in jupytext.reads(source, fmt="myst").cells if c.cell_type == "code"], chapter
        assert notebook.metadata["kernelspec"]["name"] == "python3", chapter
        markdown = [c.source for c in notebook.cells if c.cell_type == "markdown"]
        assert any(line.startswith("# ") for text in markdown for line in text.splitlines()), chapter


def solution_and_hidden_lines(notebook):
    """The non-trivial lines found only inside the solution and hidden-test
    regions of a source notebook (a line also written outside them is no secret)."""
    region = re.compile(r"### BEGIN (SOLUTION|HIDDEN TESTS)\n(.*?)### END \1", re.S)
    inside, outside = set(), set()
    for cell in notebook.cells:
        for _, body in region.findall(cell.source):
            inside.update(line.strip() for line in body.splitlines() if len(line.strip()) >= 12)
        outside.update(line.strip() for line in region.sub("", cell.source).splitlines())
    return inside - outside


def test_the_student_notebooks_are_downloadable_without_solutions_or_hidden_tests(book):
    import nbformat

    downloads_page = (book.html / "book" / "downloads.html").read_text()
    offered = set(hrefs(downloads_page, "download"))
    sources = sorted((_book.ROOT / "assignments" / "source").glob("*/*.ipynb"))
    assert len(sources) >= 4, sources
    for source in sources:
        name = f"{source.parent.name}/{source.name}"
        href = f"../downloads/assignments/{name}"
        assert href in offered, f"the downloads page does not offer {name}: {sorted(offered)}"
        released = (book.html / "book" / href).resolve()
        assert released.is_file(), released
        text = released.read_text()
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
            assert marker not in text, f"{name}: {marker}"
        secret = solution_and_hidden_lines(nbformat.read(source, as_version=4))
        assert secret, f"{name}: the source has no solution or hidden test to hide?"
        student = nbformat.read(released, as_version=4)
        student_lines = {line.strip() for c in student.cells for line in c.source.splitlines()}
        leaked = sorted(secret & student_lines)
        assert not leaked, f"{name} shows solution or hidden-test lines: {leaked[:5]}"
        assert "raise NotImplementedError" in text, f"{name}: no stub for the student to fill in"
        assert len(student.cells) == len(nbformat.read(source, as_version=4).cells)
        assert not any(c.get("outputs") for c in student.cells if c.cell_type == "code"), f"{name} has outputs"
    # and every chapter's downloads are offered too
    for chapter in notebook_chapters():
        assert f"../_sources/{chapter}.ipynb" in offered and f"../_sources/{chapter}.md" in offered, chapter


def test_the_bibliography_is_sorted_by_first_author(book):
    """Entries in order of their first author's last name (institutional
    authors such as {CS231n} included: book/_ext/bnkit_bib.py), each found
    on the page by its title."""
    from pybtex.database import parse_file

    page = BeautifulSoup((book.html / "book" / "bibliography.html").read_text(), "html.parser")
    entries = [normalise_space(e.get_text(" ")) for e in page.select("div.citation, dl.citation > dd")]
    bib = parse_file(str(_book.ROOT / "references.bib"))
    order = []
    for text in entries:
        found = [(key, e) for key, e in bib.entries.items()
                 if letters_only(e.fields["title"])[:40] in letters_only(text)]
        assert len(found) == 1, f"cannot tell which entry this is ({len(found)} matches): {text[:100]}"
        key, entry = found[0]
        first = entry.persons["author"][0]
        surname = first.prelast_names + first.last_names  # "van Laarhoven" sorts under v
        order.append((re.sub(r"[{}\\]", "", " ".join(surname)).lower(), key))
    assert len(order) >= 10, order
    assert order == sorted(order, key=lambda o: o[0]), f"out of order: {[k for _, k in order]}"


def normalise_space(text):
    return re.sub(r"\s+", " ", text).strip()


def letters_only(text):
    """Lower-case letters and digits, one space between words: LaTeX quotes and braces
    (``batch'', {BatchNorm}) and their rendered forms compare equal."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def test_glued_numbers_have_no_space_before_punctuation(book):
    """A glued number ({glue:text}) followed by punctuation prints without a
    space between them ("0.41," not "0.41 ,")."""
    problems = []
    for path in sorted((book.html / "book").glob("*.html")):
        page = BeautifulSoup(path.read_text(), "html.parser")
        for span in page.select("span.pasted-text"):
            after = span.next_sibling
            text = after if isinstance(after, str) else (after.get_text() if after is not None else "")
            if re.match(r"\s+[,.;:)%]", text) or span.get_text() != span.get_text().strip():
                problems.append(f"{path.name}: {span.get_text()!r} then {text[:20]!r}")
    assert not problems, "\n".join(problems[:20])
