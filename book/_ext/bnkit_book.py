"""Sphinx hooks of the bnkit book: what a reader can download from it.

- The ``{bnkit-downloads}`` directive (book/downloads.md) writes the table of
  downloads, from _toc.yml and assignments/source/, so no list is typed twice:
  each chapter's source (``_sources/<page>.md``) and, for a notebook chapter,
  the same as a notebook (``_sources/<page>.ipynb``, where sphinx-book-theme's
  download button points; written by jupytext at the end of the build); and
  the student version of each assignment.
- ``{bnkit-downloads} chapters|assignments|package`` writes one of the
  tables; without an argument, the chapters and the assignments.
- ``{bnkit-install}`` writes the one command that installs what a student
  needs (the project's wheel, offered by this book, with its ``student``
  extra) from the published book, no clone needed.
- At the end of an HTML build, the project's wheel (bnkit and bngrade only,
  built from a scratch copy holding nothing else: never the assignments'
  sources) lands in ``downloads/<wheel>``; the build fails if it holds
  anything but those packages and their metadata.
- At the end of an HTML build, the student versions are made by
  ``nbgrader generate_assignment`` in a scratch copy of assignments/ (the
  course directory is never written to) and land in
  ``downloads/assignments/<assignment>/<notebook>.ipynb``: solutions replaced by
  stubs, hidden tests removed. The build fails if nbgrader fails or if a
  solution or hidden-test marker is left in a released notebook.
"""
import os
import shutil
import subprocess
import sys
import tempfile
from html import escape
from pathlib import Path

import yaml
from docutils import nodes
from sphinx.errors import ExtensionError
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.osutil import relative_uri

LOGGER = logging.getLogger(__name__)
DOWNLOADS = "downloads/assignments"
WHEEL_DIR = "downloads"
# What goes into the scratch copy the wheel is built from: the packages and
# the metadata pyproject.toml names (readme, license), nothing else.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "bnkit", "bngrade")
WHEEL_PACKAGES = ("bnkit", "bngrade")
# nbgrader's markers: none may survive into a student's notebook.
LEAK_MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
# What a scratch copy of the course leaves out: nbgrader's own outputs.
COURSE_OUTPUTS = ("release", "submitted", "autograded", "feedback", "gradebook.db", "*.csv", "__pycache__")


def toc_docnames(root):
    """Every document named in _toc.yml, in reading order."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    names = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                names.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return [str(Path(name).with_suffix("")) for name in names]


def assignment_notebooks(source):
    """{assignment: [notebook file names]} of an nbgrader source/ folder."""
    if not source.is_dir():
        return {}
    return {d.name: sorted(nb.name for nb in d.glob("*.ipynb"))
            for d in sorted(source.iterdir()) if d.is_dir() and any(d.glob("*.ipynb"))}


def project_version(root):
    """The version pyproject.toml declares (the one place it is written)."""
    import tomllib

    return tomllib.loads((Path(root) / "pyproject.toml").read_text())["project"]["version"]


def wheel_name(root):
    return f"bnkit-{project_version(root)}-py3-none-any.whl"


def site_url(root):
    """The published book's address, from _config.yml's repository.url (its
    one source): GitHub Pages serves github.com/<owner>/<repo> at
    https://<owner>.github.io/<repo>/."""
    url = yaml.safe_load((Path(root) / "_config.yml").read_text())["repository"]["url"]
    owner, repo = url.rstrip("/").split("/")[-2:]
    return f"https://{owner}.github.io/{repo}/"


def install_command(root):
    """The one command that installs what the released notebooks need, from
    the published book's copy of the wheel."""
    return f'pip install "bnkit[student] @ {site_url(root)}{WHEEL_DIR}/{wheel_name(root)}"'


class downloads_table(nodes.General, nodes.Element):
    """Placeholder, filled in once every page has been read (titles known)."""


TABLES = ("chapters", "assignments", "package")


class DownloadsDirective(SphinxDirective):
    has_content = False
    optional_arguments = 1

    def run(self):
        which = self.arguments[0] if self.arguments else "chapters assignments"
        unknown = set(which.split()) - set(TABLES)
        if unknown:
            raise self.error(f"bnkit-downloads: unknown table {sorted(unknown)}; known: {', '.join(TABLES)}")
        return [downloads_table(tables=which.split())]


class InstallDirective(SphinxDirective):
    """The student install command, as a copyable shell block."""
    has_content = False

    def run(self):
        command = install_command(self.env.app.confdir)
        block = nodes.literal_block(command, command)
        block["language"] = "bash"
        return [block]


def course_dir(app):
    return Path(app.confdir) / "assignments"


def fill_downloads_tables(app, doctree, docname):
    if not list(doctree.findall(downloads_table)):
        return
    env, builder = app.env, app.builder
    here = builder.get_target_uri(docname)

    def link(target, text):
        # a phone may break a long file name after an underscore
        name = escape(text).replace("_", "_<wbr>")
        return f'<a class="reference download" href="{escape(relative_uri(here, target))}" download>{name}</a>'

    rows = []
    for name in toc_docnames(Path(app.confdir)):
        if name == docname or name not in env.found_docs:
            continue
        suffix = Path(env.doc2path(name)).suffix
        files = [link(f"_sources/{name}{suffix}", Path(name).name + suffix)]
        if "kernelspec" in env.metadata.get(name, {}):  # a notebook: its .ipynb too
            files.append(link(f"_sources/{name}.ipynb", Path(name).name + ".ipynb"))
        rows.append([escape(env.titles[name].astext()), "<br>".join(files)])
    chapters = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)

    assignments = "".join(
        f"<tr><td><code>{escape(a)}</code></td><td>"
        + ", ".join(link(f"{DOWNLOADS}/{a}/{nb}", nb) for nb in notebooks) + "</td></tr>"
        for a, notebooks in assignment_notebooks(course_dir(app) / "source").items())

    wheel = wheel_name(app.confdir)
    package = (f"<tr><td>bnkit {escape(project_version(app.confdir))}: <code>bnkit</code> and "
               f"<code>bngrade</code>, what the student notebooks import</td><td>"
               f"{link(f'{WHEEL_DIR}/{wheel}', wheel)}</td></tr>")

    # the theme's scrolling box, as around every other table of the book
    html = {
        "chapters": ('<div class="pst-scrollable-table-container">'
                     '<table class="table bnkit-downloads" id="chapter-downloads"><thead><tr><th>Chapter</th>'
                     '<th>Source (.md) and notebook (.ipynb)</th></tr></thead><tbody>'
                     f'{chapters}</tbody></table></div>'),
        "assignments": ('<div class="pst-scrollable-table-container">'
                        '<table class="table bnkit-downloads" id="assignment-downloads"><thead><tr>'
                        '<th>Assignment</th><th>Student notebook</th></tr></thead><tbody>'
                        f'{assignments}</tbody></table></div>'),
        "package": ('<div class="pst-scrollable-table-container">'
                    '<table class="table bnkit-downloads" id="package-download"><thead><tr><th>Package</th>'
                    f'<th>Wheel</th></tr></thead><tbody>{package}</tbody></table></div>'),
    }
    for node in list(doctree.findall(downloads_table)):
        node.replace_self(nodes.raw("", "\n".join(html[t] for t in node["tables"]), format="html"))


def release_assignments(course, dest):
    """Run `nbgrader generate_assignment` for every assignment of `course` in
    a scratch copy; copy each release/<assignment>/ to dest/<assignment>/."""
    nbgrader = Path(sys.executable).with_name("nbgrader")
    command = [str(nbgrader)] if nbgrader.exists() else [sys.executable, "-m", "nbgrader"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    names = list(assignment_notebooks(course / "source"))
    with tempfile.TemporaryDirectory(prefix="bnkit-release-") as scratch:
        copy = Path(scratch) / "course"
        shutil.copytree(course, copy, ignore=shutil.ignore_patterns(*COURSE_OUTPUTS))
        for i, name in enumerate(names, 1):
            LOGGER.info(f"[bnkit_book] student notebook {i}/{len(names)}: nbgrader generate_assignment {name}")
            proc = subprocess.run(command + ["generate_assignment", name, "--force"], cwd=copy, env=env,
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL)
            released = copy / "release" / name
            if proc.returncode != 0 or not released.is_dir():
                raise ExtensionError(f"nbgrader generate_assignment {name} failed (exit code {proc.returncode}) "
                                     f"in a copy of {course}:\n{(proc.stdout + proc.stderr)[-3000:]}")
            for notebook in released.rglob("*.ipynb"):
                text = notebook.read_text()
                leaks = [m for m in LEAK_MARKERS if m in text]
                if leaks:
                    raise ExtensionError(f"{notebook.relative_to(copy)} still holds {leaks}: "
                                         "the student version must not show solutions or hidden tests")
            shutil.rmtree(dest / name, ignore_errors=True)
            shutil.copytree(released, dest / name)


def write_chapter_notebooks(app, exception):
    """_sources/<page>.ipynb of every notebook chapter, converted from its
    MyST Markdown by jupytext. sphinx-book-theme links that path from the
    download button (and copies myst-nb's jupyter_execute notebook there, in
    which outputs come and go with the execution cache): this replaces it
    with the chapter exactly as written, to run from the top."""
    if exception is not None or app.builder.name not in ("html", "dirhtml"):
        return
    import jupytext
    import nbformat

    for docname in sorted(app.env.found_docs):
        if "kernelspec" not in app.env.metadata.get(docname, {}):
            continue
        notebook = jupytext.read(app.env.doc2path(docname), fmt="myst")
        target = Path(app.outdir) / "_sources" / f"{docname}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, target)


def build_wheel(root, dest):
    """The project's wheel, built offline from a scratch copy of
    WHEEL_SOURCES (so nothing else of the repository can get in), into
    dest; returns its path. Raises ExtensionError if pip fails or the wheel
    holds anything but bnkit, bngrade and their metadata."""
    import zipfile

    root, dest = Path(root), Path(dest)
    with tempfile.TemporaryDirectory(prefix="bnkit-wheel-") as scratch:
        copy = Path(scratch) / "src"
        for name in WHEEL_SOURCES:
            src = root / name
            if src.is_dir():
                shutil.copytree(src, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                copy.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, copy / name)
        out = Path(scratch) / "dist"
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                               "--no-index", "-q", "-w", str(out), str(copy)],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        wheels = list(out.glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise ExtensionError(f"building the bnkit wheel failed (exit code {proc.returncode}):\n"
                                 f"{(proc.stdout + proc.stderr)[-3000:]}")
        allowed = WHEEL_PACKAGES + (f"bnkit-{project_version(root)}.dist-info",)
        strays = [n for n in zipfile.ZipFile(wheels[0]).namelist() if n.split("/")[0] not in allowed]
        if strays:
            raise ExtensionError(f"the bnkit wheel holds more than {allowed}: {strays[:5]}")
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / wheel_name(root)
        shutil.copy2(wheels[0], target)
    return target


def write_wheel(app, exception):
    if exception is not None or app.builder.name not in ("html", "dirhtml"):
        return
    LOGGER.info("[bnkit_book] the project's wheel for the Downloads page")
    build_wheel(app.confdir, Path(app.outdir) / WHEEL_DIR)


def write_student_notebooks(app, exception):
    if exception is not None or app.builder.name not in ("html", "dirhtml"):
        return
    if not (course_dir(app) / "source").is_dir():
        raise ExtensionError(f"{course_dir(app) / 'source'} is missing: the book offers the student version "
                             "of every assignment there")
    release_assignments(course_dir(app), Path(app.outdir) / DOWNLOADS)


def share_html_visitors(app):
    """Give the singlehtml builder (make pdf) every HTML visitor it lacks.

    Sphinx looks a node's visitors up by builder name and falls back to the
    format ("html") only when no extension registered any for that name; one
    of ours registers singlehtml visitors, so myst-nb's HideCodeCellNode
    (html only) would have none there."""
    handlers = app.registry.translation_handlers
    if app.builder.format == "html" and app.builder.name in handlers and app.builder.name != "html":
        for node, visitors in handlers.get("html", {}).items():
            handlers[app.builder.name].setdefault(node, visitors)


def setup(app):
    app.connect("builder-inited", share_html_visitors)
    app.add_node(downloads_table)
    app.add_directive("bnkit-downloads", DownloadsDirective)
    app.add_directive("bnkit-install", InstallDirective)
    app.connect("doctree-resolved", fill_downloads_tables)
    app.connect("build-finished", write_chapter_notebooks)
    app.connect("build-finished", write_student_notebooks)
    app.connect("build-finished", write_wheel)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
