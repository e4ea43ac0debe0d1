"""The per-student unit that travels: one submission and the assignment in, one bounded result out.

A machine that grades (a Dask worker, a Slurm or Kubernetes array task) needs
only the project installed and bubblewrap: no course directory, no gradebook,
no shared disk with the instructor. What it gets:

- the *assignment pack* (`pack_assignment`): the course's nbgrader_config.py,
  source/<assignment>/ and a gradebook holding the assignment but no student
  (a snapshot taken once, so its size does not grow with the class);
- a *submission pack* (`pack_submission`): submitted/<student>/<assignment>/.

It returns a *result pack*: the tar.gz of `autograde.grade_one`'s directory
(result.json, the graded notebooks, the integrity report, nbgrader's log),
at most `MAX_RESULT_BYTES`; a larger one comes back as a failed result.

Packs hold only directories and regular files: a submission is packed by
content, as the sandbox copies one (`sandbox_files.copy_given_files`), so
links, hard links, FIFOs and devices never travel. Unpacking drops anything
else and refuses paths that leave the destination.

The array-job manifest (`write_manifest`, `unit_task`) is the same unit for
sites without Dask: one index (Slurm's SLURM_ARRAY_TASK_ID, Kubernetes'
JOB_COMPLETION_INDEX) grades one student from files on a shared disk.
"""
import atexit
import ctypes
import hashlib
import io
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

from bngrade import COURSE_CONFIG
from bngrade.sandbox_files import copy_given_files, listing

MAX_RESULT_BYTES = 64 << 20


# ---------------------------------------------------------------------- packs
def _walk(root):
    """(relative path, kind) under root, never following a link: kind is dir, file or link."""
    root = Path(root)
    for here, dirs, files in os.walk(root, followlinks=False):
        rel_here = Path(here).relative_to(root)
        for name in sorted(dirs + files):
            path = Path(here) / name
            kind = "link" if os.path.islink(path) else "dir" if os.path.isdir(path) else \
                "file" if os.path.isfile(path) else None
            if kind:
                yield rel_here / name, kind
        dirs.sort()


def _add_tree(tar, root, arcroot):
    root = Path(root)
    info = tarfile.TarInfo(str(arcroot))
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(info)
    for rel, kind in _walk(root):
        info = tarfile.TarInfo(str(Path(arcroot) / rel))
        if kind == "dir":
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        elif kind == "file":  # a regular file, read through a descriptor that refuses a link swapped in meanwhile
            fd = os.open(root / rel, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                info.mtime = int(os.fstat(f.fileno()).st_mtime)
                data = f.read()
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))


def _tar_bytes(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for root, arcroot in entries:
            _add_tree(tar, root, arcroot)
    return buf.getvalue()


def _unpack(data, dest):
    """Extract a pack under dest: directories and regular files only."""
    def only_plain(member, path):
        if not (member.isdir() or member.isreg()):
            return None
        return tarfile.data_filter(member, path)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter=only_plain)


def blank_gradebook(course, dest):
    """A copy of the course's gradebook with every student (and submission) taken out."""
    src = sqlite3.connect(f"file:{Path(course) / 'gradebook.db'}?mode=ro", uri=True)
    out = sqlite3.connect(dest)
    with out:
        src.backup(out)  # consistent even while the merge writes
    src.close()
    with out:
        for table in ("comment", "grade", "submitted_notebook", "submitted_assignment", "student"):
            out.execute(f"DELETE FROM {table}")
    out.execute("VACUUM")
    out.close()


def pack_assignment(course, assignment):
    """The assignment pack: nbgrader_config.py/.json, source/A, a gradebook without students (bytes)."""
    course = Path(course)
    for need in (*COURSE_CONFIG, "gradebook.db", f"source/{assignment}"):
        if not (course / need).exists():
            raise SystemExit(f"{course / need} is missing (run `nbgrader generate_assignment {assignment}` first?)")
    with tempfile.TemporaryDirectory(prefix="bngrade-pack-") as tmp:
        tmp = Path(tmp)
        for name in COURSE_CONFIG:
            shutil.copy(course / name, tmp)
        blank_gradebook(course, tmp / "gradebook.db")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
            for name in COURSE_CONFIG:
                tar.add(tmp / name, name)
            tar.add(tmp / "gradebook.db", "gradebook.db")
            _add_tree(tar, course / "source" / assignment, f"source/{assignment}")
        return buf.getvalue()


def pack_submission(course, assignment, student):
    """The submission pack (bytes), copied by content as the sandbox copies a submission: symbolic links,
    hard links, FIFOs and devices are left out here, before the pack travels (a tar of a hard-linked
    classmate's notebook would carry its content as an ordinary file)."""
    with tempfile.TemporaryDirectory(prefix="bngrade-pack-") as tmp:
        given = Path(tmp) / "given"
        refused, _ = copy_given_files(Path(course) / "submitted" / student / assignment, given)
        for entry in sorted(refused.items())[:5]:
            print(f"bngrade: {student}: not packed for grading: {listing([entry])}", file=sys.stderr)
        return _tar_bytes([(given, f"submitted/{student}/{assignment}")])


def submission_digest(course, assignment, student):
    """sha256 of a submission's names, link targets and file contents (a resubmission changes it)."""
    h = hashlib.sha256()
    root = Path(course) / "submitted" / student / assignment
    for rel, kind in _walk(root):
        h.update(f"{kind}\0{rel}\0".encode())
        if kind == "link":
            h.update(os.readlink(root / rel).encode())
        elif kind == "file":  # never a link or a FIFO swapped in since the walk
            fd = os.open(root / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                continue
            with os.fdopen(fd, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------- grading a pack
def die_with_parent():
    """preexec_fn: this child gets SIGKILL when its parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


_COURSES = {}


def _assignment_dir(assignment_pack):
    """The unpacked assignment pack, once per process (keyed by its digest)."""
    key = hashlib.sha256(assignment_pack).hexdigest()
    if key not in _COURSES or not Path(_COURSES[key]).exists():
        d = tempfile.mkdtemp(prefix=f"bngrade-assignment-{key[:8]}-")
        atexit.register(shutil.rmtree, d, True)  # removed when this process (a worker, an array task) ends
        _unpack(assignment_pack, d)
        _COURSES[key] = d
    return Path(_COURSES[key])


def grade_pack(assignment_pack, submission_pack, assignment, student):
    """Grade one packed submission in a child process; return the result pack (bytes)."""
    base = _assignment_dir(assignment_pack)
    with tempfile.TemporaryDirectory(prefix=f"bngrade-unit-{student}-") as tmp:
        course, out = Path(tmp) / "course", Path(tmp) / "out"
        course.mkdir()
        for name in (*COURSE_CONFIG, "gradebook.db"):
            shutil.copy(base / name, course / name)
        (course / "source").mkdir()
        os.symlink(base / "source" / assignment, course / "source" / assignment)
        _unpack(submission_pack, course)
        if not (course / "submitted" / student / assignment).is_dir():
            raise ValueError(f"the submission pack holds no submitted/{student}/{assignment}")
        status = _grader().grade(course, assignment, student, out)
        dest = out / student / assignment
        if not (dest / "result.json").exists():
            raise RuntimeError(f"grading {student} produced no result (wait status {status}; "
                               "the worker's stderr has the traceback)")
        data = _tar_bytes([(dest, ".")])
        if len(data) > MAX_RESULT_BYTES:
            result = json.loads((dest / "result.json").read_text())
            result.update(ok=False, error=f"result of {len(data)} bytes, over the {MAX_RESULT_BYTES} allowed")
            small = Path(tmp) / "small"
            small.mkdir()
            (small / "result.json").write_text(json.dumps(result, indent=1))
            data = _tar_bytes([(small, ".")])
        return data


class _Grader:
    """A child process of the worker (`python -m bngrade.unit serve`) that imported nbgrader, bnkit and the
    sandbox once and forks one grandchild per student: nbgrader changes the working directory and fds 1
    and 2 while it grades, which a worker's other threads (Dask's) must not see, and a fresh interpreter
    per student would cost more CPU than grading it. Both die with the worker (PDEATHSIG)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "bngrade.unit", "serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent,
                                     env=_child_env())

    def grade(self, course, assignment, student, out):
        self.proc.stdin.write(json.dumps([str(course), assignment, student, str(out)]) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the grading process died (exit {self.proc.wait()}) while it graded {student}")
        return json.loads(line)["status"]


_LOCAL = threading.local()


def _grader():
    g = getattr(_LOCAL, "grader", None)
    if g is None or g.proc.poll() is not None:
        g = _LOCAL.grader = _Grader()
    return g


def serve():
    """The loop of `_Grader`'s process: one JSON line [course, assignment, student, out] in, one out."""
    import traceback

    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever else prints goes to stderr, never into the replies
    from bngrade.autograde import _preload, grade_one

    _preload()
    for line in sys.stdin:
        course, assignment, student, out = json.loads(line)
        pid = os.fork()
        if pid == 0:
            rc = 1
            try:
                die_with_parent()
                grade_one(course, assignment, student, out)
                rc = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(rc)
        _, status = os.waitpid(pid, 0)
        reply.write(json.dumps({"status": status}) + "\n")
        reply.flush()


def _child_env():
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("NBGRADER_EXECUTION", None)
    return env


def store_result(data, results, assignment, student, digest=None):
    """Unpack a result pack into results/student/assignment/ (replacing it whole); return result.json's dict."""
    dest = Path(results) / student / assignment
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{assignment}-", dir=dest.parent))
    try:
        _unpack(data, tmp)
        info = json.loads((tmp / "result.json").read_text())
        if info.get("student") != student or info.get("assignment") != assignment:
            raise ValueError(f"a result for {info.get('student')}/{info.get('assignment')} "
                             f"arrived as {student}/{assignment}")
        if digest:
            info["submission_sha256"] = digest
        publish_result(tmp, info)
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def publish_result(directory, info):
    """Write result.json last and atomically: a directory holding one is a finished result."""
    path = Path(directory) / "result.json"
    part = path.with_suffix(".json.part")
    part.write_text(json.dumps(info, indent=1))
    os.replace(part, path)


# ---------------------------------------------------------------------- array jobs
def write_manifest(course, assignment, directory, students=None):
    """Pack an assignment and its submissions for an array job; return the manifest's path.

    DIR/assignment.tar.gz, DIR/submissions/<student>.tar.gz, DIR/results/ and
    DIR/manifest.json (index i grades students[i]).
    """
    from bngrade.autograde import submitted_students

    directory = Path(directory).resolve()
    students = students or submitted_students(course, assignment)
    (directory / "submissions").mkdir(parents=True, exist_ok=True)
    (directory / "results").mkdir(exist_ok=True)
    (directory / "assignment.tar.gz").write_bytes(pack_assignment(course, assignment))
    digests = {}
    for s in students:
        (directory / "submissions" / f"{s}.tar.gz").write_bytes(pack_submission(course, assignment, s))
        digests[s] = submission_digest(course, assignment, s)
    manifest = dict(assignment=assignment, course=str(Path(course).resolve()), students=students,
                    digests=digests, assignment_pack="assignment.tar.gz", submissions="submissions",
                    results="results")
    path = directory / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1))
    return path


def unit_task(manifest_path, index):
    """Grade the student at `index` of a manifest into its results directory (skipped if already there)."""
    manifest_path = Path(manifest_path).resolve()
    m = json.loads(manifest_path.read_text())
    base = manifest_path.parent
    if not 0 <= index < len(m["students"]):
        raise SystemExit(f"index {index} is outside 0..{len(m['students']) - 1} ({manifest_path})")
    student, assignment = m["students"][index], m["assignment"]
    results = base / m["results"]
    done = results / student / assignment / "result.json"
    if done.exists() and json.loads(done.read_text()).get("submission_sha256") == m["digests"].get(student):
        print(f"{student}: already graded ({done})")
        return 0
    data = grade_pack((base / m["assignment_pack"]).read_bytes(),
                      (base / m["submissions"] / f"{student}.tar.gz").read_bytes(), assignment, student)
    info = store_result(data, results, assignment, student, m["digests"].get(student))
    print(f"{student}: {'graded' if info.get('ok') else 'FAILED'} in {info.get('seconds')} s -> {done}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
