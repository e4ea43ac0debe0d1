"""The submitted notebook is read as data: a regular file of bounded size, never followed.

nbgrader's autograde reads each submitted notebook whole, in the grader's
process, before any preprocessor (and so before the sandbox) sees it; a
300 MiB written answer took the grader to 1.04 GiB and made a 300 MiB
autograded notebook for the formgrader to render. And a submission that is
a symlink, a FIFO or a device would be followed, block, or never end.

`CheckedNotebookExporter` is autograde's exporter (the course config sets
`Autograde.exporter_class`): it opens the file with O_NOFOLLOW and
O_NONBLOCK, refuses anything but a regular file, refuses a file over
`max_notebook_mb` before reading a byte of it, and reads at most that much
from the descriptor it checked. A hard link is read for what it holds:
refusing it would refuse the classmate whose file it names too; it is a
copy, which `make autograde`'s check (`course.check_submissions`, by the
link count) and the class report's near-copies point out. nbgrader reports a refused
notebook as that student's failure, with our message, and goes on to the
next student; nothing of it is graded or written. `check` is the same rule
for `make autograde`'s check of the files before grading.
"""
import io
import os
import stat

from nbconvert.exporters import NotebookExporter
from nbconvert.exporters.exporter import ResourcesDict
from traitlets import Integer

MAX_NOTEBOOK_MB = 32  # a released notebook is ~50 KB; answers with pasted images stay far below


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


def check(path, max_mb=MAX_NOTEBOOK_MB):
    """None if `path` would be read, else the reason it would be refused (one line)."""
    try:
        read_checked(path, max_mb << 20)
    except RefusedSubmission as e:
        return str(e).split(": ", 1)[1]
    return None


class CheckedNotebookExporter(NotebookExporter):
    """nbconvert's NotebookExporter, reading the file only through `read_checked` (module docstring)."""

    max_notebook_mb = Integer(MAX_NOTEBOOK_MB, help="largest submitted notebook graded, MiB").tag(config=True)

    def from_filename(self, filename, resources=None, **kw):
        data = read_checked(filename, self.max_notebook_mb << 20)
        if resources is None:
            resources = ResourcesDict()
        if not resources.get("metadata"):
            resources["metadata"] = ResourcesDict()
        path, basename = os.path.split(filename)  # what nbconvert's from_filename records
        resources["metadata"]["name"] = os.path.splitext(basename)[0]
        resources["metadata"]["path"] = path
        return self.from_file(io.StringIO(data.decode("utf-8")), resources=resources, **kw)
