"""The submitted notebook is read as data: a regular file of bounded size, never followed.

nbgrader's autograde reads each submitted notebook whole, in the grader's
process, before any preprocessor (and so before the sandbox) sees it; a
300 MiB written answer took the grader to 1.04 GiB and made a 300 MiB
autograded notebook for the formgrader to render. And a submission that is
a symlink, a FIFO or a device would be followed, block, or never end.

`CheckedNotebookExporter` is autograde's exporter (the course config sets
`Autograde.exporter_class`): it opens the file with O_NOFOLLOW and
O_NONBLOCK, refuses anything but a regular file, refuses a file over
`max_notebook_mb` before reading a byte of it, reads at most that much
from the descriptor it checked, and refuses a notebook of more than
`max_cells` cells, or of lists and dicts nested more than 64 levels,
before any preprocessor runs (200,000 empty markdown cells, 11 MiB, held
the grader 6.7 minutes at 1.24 GiB; 100,000 levels of metadata raised
RecursionError in the grader and in `make autograde`'s check). A hard link is read for what it holds:
refusing it would refuse the classmate whose file it names too; it is a
copy, which `make autograde`'s check (`course.check_submissions`, by the
link count) and the class report's near-copies point out. nbgrader reports a refused
notebook as that student's failure, with our message, and goes on to the
next student; nothing of it is graded or written. `check` is the same rule
for `make autograde`'s check of the files before grading.

The exporter also guards nbgrader's copy of the submission's *other* files,
which runs before any notebook is read (`guard_assignment_copy`): a
symbolic link, FIFO, socket or device anywhere in the submission is left
out (and the log says so); more than 2000 entries or more than 256 MiB of
files, or directories nested more than 16 deep, refuse the submission, as
that student's error, before anything is copied. And a submission whose
only notebook has another name than the released one (a browser's
"bn_forward (1).ipynb") has it graded under the released name, from a copy
placed beside it: nbgrader would skip it as unknown and grade nothing.
"""
import glob
import json
import os
import stat
from contextlib import contextmanager

import nbformat
from nbconvert.exporters import NotebookExporter
from nbconvert.exporters.exporter import ResourcesDict
from traitlets import Integer

from .sandbox_files import listing, shown

MAX_NOTEBOOK_MB = 32  # a released notebook is ~50 KB; answers with pasted images stay far below
MAX_CELLS = 1000  # a released notebook has 12-14 cells; 200,000 empty cells (11 MiB) held a worker 6.7 min
MAX_NESTING = 64  # levels of lists and dicts; a notebook has about 8 (metadata may add a few)


class RefusedSubmission(ValueError):
    """The submitted notebook is not graded; the message says why, for the instructor."""


def read_checked(path, max_bytes=MAX_NOTEBOOK_MB << 20):
    """The bytes of `path` if it is a regular file (not a symlink) of at most max_bytes; else RefusedSubmission."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise RefusedSubmission(f"{path}: not read ({'a symlink' if os.path.islink(path) else e.strerror})") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RefusedSubmission(f"{path}: not read (not a regular file)")
        if st.st_size > max_bytes:
            raise RefusedSubmission(f"{path}: not graded ({st.st_size >> 20} MiB, over the {max_bytes >> 20} MiB "
                                    "limit for a notebook); ask the student for a smaller copy")
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:  # it grew while we read
            raise RefusedSubmission(f"{path}: not graded (over the {max_bytes >> 20} MiB limit for a notebook)")
        return data
    finally:
        os.close(fd)


def _nesting(value):
    """How deep lists and dicts nest in a JSON value, measured without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
        deepest = max(deepest, depth)
    return deepest


def cells_over(text, max_cells=MAX_CELLS, max_nesting=MAX_NESTING):
    """Why a notebook's JSON text is not graded, or None (also None for text that is not a notebook:
    nbformat says why): too many cells (each costs the grader's process time and memory), or
    lists and dicts nested deeper than a notebook's ~8 levels (nbformat, nbconvert and Python's
    json recurse: 100,000 levels, 600 KB, raised RecursionError in the grader)."""
    again = "ask the student for the answers in the released one"
    too_deep = f"lists and dicts nested over the {max_nesting} level limit; {again}"
    try:
        nb = json.loads(text)
    except ValueError:
        return None
    except RecursionError:  # json itself recursed too deep: the same refusal as a measured depth
        return too_deep
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if isinstance(cells, list) and len(cells) > max_cells:
        return f"{len(cells)} cells, over the {max_cells} cell limit for a notebook; {again}"
    return too_deep if _nesting(nb) > max_nesting else None


def check(path, max_mb=MAX_NOTEBOOK_MB, max_cells=MAX_CELLS):
    """None if `path` would be graded as far as its file goes, else the reason it would be refused."""
    try:
        data = read_checked(path, max_mb << 20)
    except RefusedSubmission as e:
        return str(e).split(": ", 1)[1]
    why = cells_over(data.decode("utf-8", "replace"), max_cells)
    return f"not graded ({why})" if why else None


MAX_ENTRIES = 2000  # files and directories in one submission
MAX_TOTAL_MB = 256  # their sizes together (nbgrader copies every one into autograded/)
MAX_DEPTH = 16  # directory levels (nbgrader's copy and Python's os.walk recurse: 1900 levels raised RecursionError)


def unsafe_entries(directory, max_entries=MAX_ENTRIES, max_total_mb=MAX_TOTAL_MB, max_depth=MAX_DEPTH):
    """(skip, refuse) for a submission directory, before nbgrader's copy touches it.

    nbgrader's autograde copies every file of submitted/<student>/<assignment>/ into autograded/
    with shutil.copy, before any notebook is read: it follows a symbolic link (a link to /dev/zero
    writes zeros until the disk is full; a link to a host file copies it as root), blocks on
    nothing but a FIFO, and has no bound on count, size or depth. Nothing is followed here (lstat),
    and the walk keeps its own stack. skip: [(relative path, why)] for links, FIFOs, sockets and
    devices, which the copy must leave out (an accident the grader can repair: the rest is graded);
    refuse: why the whole submission is not copied (more than max_entries entries, more than
    max_total_mb of files, directories nested deeper than max_depth), or None."""
    skip, total, count = [], 0, 0
    stack = [(directory, 1)]
    while stack:
        here, depth = stack.pop()
        try:
            names = sorted(os.listdir(here))
        except OSError as e:
            return skip, f"{shown(os.path.relpath(here, directory))} could not be read ({e.strerror})"
        for name in names:
            path = os.path.join(here, name)
            try:
                st = os.lstat(path)
            except OSError as e:
                return skip, f"{shown(os.path.relpath(path, directory))} could not be read ({e.strerror})"
            count += 1
            if count > max_entries:
                return skip, f"more than {max_entries} files and directories"
            if stat.S_ISLNK(st.st_mode):
                skip.append((os.path.relpath(path, directory), "a symbolic link"))
            elif stat.S_ISDIR(st.st_mode):
                if depth >= max_depth:
                    return skip, f"directories nested more than {max_depth} deep"
                stack.append((path, depth + 1))
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
            else:
                skip.append((os.path.relpath(path, directory), "not a regular file (FIFO, socket or device)"))
    if total > max_total_mb << 20:
        return skip, f"{total >> 20} MiB of files, over the {max_total_mb} MiB limit"
    return skip, None


def renamed_notebook(directory, expected):
    """(found, expected name) when `directory` lacks one of the notebook names in `expected` and holds
    exactly one notebook of another name, which is then that notebook saved under another name
    ("bn_forward (1).ipynb" from a browser's download, "bn_forward-Copy1.ipynb" from Jupyter's
    Duplicate): an accident the grader can repair. Else None (nothing missing, or no single candidate)."""
    names = [n for n in os.listdir(directory) if n.endswith(".ipynb") and not n.startswith(".")]
    missing = sorted(set(expected) - set(names))
    others = [n for n in names if n not in expected]
    if len(missing) == 1 and len(others) == 1:
        return others[0], missing[0]
    return None


def place_renamed_notebook(directory, found, name):
    """A copy of `found`, by content, under the expected `name` beside it (the student's file stays).
    nbgrader grades only notebooks of the released names, found in the submission itself."""
    data = read_checked(os.path.join(directory, found))
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@contextmanager
def leaving_out(coursedir, skip, log, message):
    """nbgrader's copies (autograde's of a submission, the exchange's submit) skip the names in
    `skip` ([(relative path, why)] from `unsafe_entries`) while this lasts: their base names, as
    exact globs, join `coursedir.ignore`, which those copies honour; the log says `message` and
    names them."""
    if not skip:
        yield
        return
    log.warning("%s: %s", message, listing(skip))
    ignore = list(coursedir.ignore)
    coursedir.ignore = ignore + sorted({glob.escape(os.path.basename(rel)) for rel, _ in skip})
    try:
        yield
    finally:
        coursedir.ignore = ignore


def guard_assignment_copy(converter):
    """Make `converter.init_assignment` (nbgrader's copy of a submission's other files) leave out
    what `unsafe_entries` says to skip, and refuse, as that student's error, a submission it says
    to refuse, before anything is copied. The one place bngrade reaches into nbgrader's converter:
    autograde offers no hook that can refuse or skip (its pre_convert_hook's errors are ignored)."""
    copy = converter.init_assignment

    def init_assignment(assignment_id, student_id):
        source = converter._format_source(assignment_id, student_id)
        skip, refuse = unsafe_entries(source) if os.path.isdir(source) else ([], None)
        if refuse:
            raise RefusedSubmission(f"{source}: not graded, nothing copied ({refuse})")
        released = converter.coursedir.format_path(converter.coursedir.source_directory, ".", assignment_id)
        renamed = renamed_notebook(source, [n for n in os.listdir(released) if n.endswith(".ipynb")]) \
            if os.path.isdir(source) and os.path.isdir(released) else None
        if renamed:
            found, name = renamed
            place_renamed_notebook(source, found, name)
            converter.notebooks = sorted(converter.notebooks + [os.path.join(source, name)])
            converter.log.warning("bngrade: %s: no %s, one notebook of another name: %s is graded as %s (a copy "
                                  "beside it)", source, name, shown(found), name)
        with leaving_out(converter.coursedir, skip, converter.log, f"bngrade: {source}: left out, not copied"):
            return copy(assignment_id, student_id)

    converter.init_assignment = init_assignment


class CheckedNotebookExporter(NotebookExporter):
    """nbconvert's NotebookExporter, reading the file only through `read_checked` (module docstring)."""

    max_notebook_mb = Integer(MAX_NOTEBOOK_MB, help="largest submitted notebook graded, MiB").tag(config=True)
    max_cells = Integer(MAX_CELLS, help="most cells in a submitted notebook graded").tag(config=True)

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        if type(self.parent).__name__ == "Autograde" and hasattr(self.parent, "init_assignment"):
            guard_assignment_copy(self.parent)  # made by the converter's start(), before any copy

    def from_filename(self, filename, resources=None, **kw):
        data = read_checked(filename, self.max_notebook_mb << 20)
        links = os.lstat(filename).st_nlink
        if links > 1:
            self.log.warning("bngrade: %s has %d names (a hard link): graded for what it holds; it is the very "
                             "file of another name", filename, links)
        if resources is None:
            resources = ResourcesDict()
        if not resources.get("metadata"):
            resources["metadata"] = ResourcesDict()
        path, basename = os.path.split(filename)  # what nbconvert's from_filename records
        resources["metadata"]["name"] = os.path.splitext(basename)[0]
        resources["metadata"]["path"] = path
        text = data.decode("utf-8")
        why = cells_over(text, self.max_cells)  # counted before nbformat builds and validates them
        if why:
            raise RefusedSubmission(f"{filename}: not graded ({why})")
        return self.from_notebook_node(nbformat.reads(text, as_version=4), resources=resources, **kw)
