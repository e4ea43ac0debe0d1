"""Parallel autograde with a progress bar, and the per-student unit it is made of.

nbgrader grades one submission at a time, and two nbgrader processes cannot
share the SQLite gradebook (nbgrader issue #174). Here each student is graded
by plain `nbgrader autograde` in a private scratch course (its config,
`source/<assignment>/`, the gradebook without students and that student's
submission only), many at a time, on an engine (`bngrade.engines`: this
machine's cores, or a Dask cluster). One merge process, the only writer of
the real gradebook, brings each result in as it arrives: it copies the rows
nbgrader wrote in the scratch gradebook (`transplant`), or, where that does
not apply (a re-grade, a failed student), runs `nbgrader autograde` in the
real course with `ReplayGraded` as its executor, so nbgrader's own
`SaveAutoGrades` and late penalties write the rows, exactly as a serial run.

Results are kept (COURSE/.bngrade-results/<student>/<assignment>/): a run
that was killed, started again, grades only the students without a result
and merges only those not merged (`resume_state`).

Commands (python -m bngrade.autograde ...):

    run A [--course DIR] [--jobs N] [--engine local|dask --scheduler ADDR] [--fresh]
          [--students a,b] [--results DIR]
        grade every submitted/*/A with a tqdm bar (done/running/failed, ETA),
        merge, print the grades
    one A STUDENT [STUDENT...] --course DIR --out DIR
        the standalone unit: one submission in, DIR/STUDENT/A/ out (result.json,
        the graded notebooks, the scratch gradebook, the integrity report,
        nbgrader's log). `python -m bngrade unit` is the same from packs (array jobs)
    merge A --course DIR --results DIR   (or: merge --manifest JOBDIR/manifest.json [--course DIR])
        bring the results of `one` (or of an array job) not merged yet into the course's gradebook
    manifest A --course DIR --out JOBDIR;  unit --manifest JOBDIR/manifest.json --index I
        the array-job unit (`python -m bngrade`'s help says more)
    bench [A] [--course DIR] [--students 20] [--rounds 2] [--out FILE]
        JOBS=1 vs JOBS=2 on sample submissions (alternating), CPU seconds per
        student, the grader's peak RSS under an output flood; writes a JSON file

Decisions: a student whose scratch grading failed (an invalid notebook, an
error in nbgrader) fails in the merge run too, with the same per-student
"There was an error processing" line; the run goes on. The exit status of
`run` and `merge` is nbgrader's (non-zero when some student failed).
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bngrade.sandbox_files import copy_given_files, listing

ERROR_LINE = "There was an error processing assignment"


def _env():
    """nbgrader's companions (jupyter, alembic) from this interpreter's bin directory."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("NBGRADER_EXECUTION", None)
    return env


def _autograde_in_process(scratch, assignment, student, log_path):
    """`nbgrader autograde A --student S --force` in this process, cwd `scratch`; returns its exit status.

    A worker grades many students one after the other, so nbgrader, bnkit and
    the config are imported once per worker, not once per student. nbgrader's
    log (and anything else written to fd 1 and 2) goes to log_path.
    """
    from nbgrader.apps.autogradeapp import AutogradeApp

    here = os.getcwd()
    saved = [os.dup(1), os.dup(2)]
    rc = 0
    with open(log_path, "wb") as log:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            os.chdir(scratch)
            app = AutogradeApp()
            try:
                app.initialize([assignment, f"--student={student}", "--force"])
                app.start()
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
                if e.code not in (0, None) and not isinstance(e.code, int):
                    print(e.code, file=sys.stderr)
            except Exception:  # nbgrader's NbGraderException after the per-student error lines
                import traceback
                traceback.print_exc()
                rc = 1
            finally:
                AutogradeApp.clear_instance()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            os.chdir(here)
    return rc


def submitted_students(course, assignment):
    return sorted(p.parent.name for p in Path(course).glob(f"submitted/*/{assignment}") if p.is_dir())


def gradebook_scores(course, assignment):
    """{student: {grade id: [score or None, max score]}} from the course's gradebook."""
    from nbgrader.api import Gradebook, MissingEntry

    result = {}
    with Gradebook(f"sqlite:///{Path(course).resolve() / 'gradebook.db'}") as gb:
        for student in gb.students:
            try:
                sub = gb.find_submission(assignment, student.id)
            except MissingEntry:
                continue
            result[student.id] = {g.name: [None if g.needs_manual_grade else g.score, g.max_score]
                                  for nb in sub.notebooks for g in nb.grades}
    return result


# ---------------------------------------------------------------------- one student
def grade_one(course, assignment, student, out, gradebook=None):
    """Grade one submission in a private scratch copy of the course; write out/student/assignment/.

    The scratch course gets `gradebook` (a gradebook without students, made once per run by
    `bngrade.unit.blank_gradebook`; by default one is made here), so its size and the cost of a
    student do not grow with the class. Its gradebook, holding the rows nbgrader wrote for this one
    student, is kept as out/student/assignment/gradebook.db for the merge.
    """
    from bngrade import COURSE_CONFIG
    from bngrade.unit import blank_gradebook, publish_result, submission_digest

    course, out = Path(course).resolve(), Path(out).resolve()
    t0 = time.monotonic()
    dest = out / student / assignment
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for need in (*COURSE_CONFIG, "gradebook.db", f"source/{assignment}", f"submitted/{student}/{assignment}"):
        if not (course / need).exists():
            raise SystemExit(f"{course / need} is missing (run `nbgrader generate_assignment {assignment}` first?)")
    digest = submission_digest(course, assignment, student)
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-{student}-"))
    try:
        for name in COURSE_CONFIG:
            shutil.copy(course / name, scratch)
        if gradebook:
            shutil.copy(gradebook, scratch / "gradebook.db")
        else:
            blank_gradebook(course, scratch / "gradebook.db")
        shutil.copytree(course / "source" / assignment, scratch / "source" / assignment, symlinks=True)
        (scratch / "submitted" / student).mkdir(parents=True)
        # by content: links, hard links, FIFOs and devices are left out (a copy would hide a hard link)
        refused, _ = copy_given_files(course / "submitted" / student / assignment,
                                      scratch / "submitted" / student / assignment)
        rc = _autograde_in_process(scratch, assignment, student, dest / "nbgrader.log")
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # this worker's peak so far
        log = (dest / "nbgrader.log").read_text(errors="replace")
        graded = scratch / "autograded" / student / assignment
        if graded.is_dir():
            shutil.copytree(graded, dest / "autograded", symlinks=True)
        report = scratch / "reports" / assignment / student
        if report.is_dir():
            shutil.copytree(report, dest / "reports", symlinks=True)
        shutil.copy(scratch / "gradebook.db", dest / "gradebook.db")
        scores = gradebook_scores(scratch, assignment).get(student) if graded.is_dir() else None
        result = dict(student=student, assignment=assignment, returncode=rc, ok=graded.is_dir() and ERROR_LINE
                      not in log, scores=scores, seconds=round(time.monotonic() - t0, 3), grader_maxrss_kib=maxrss,
                      timed_out="running the notebook once more" in log or "ran past" in log,
                      warnings=[f"bngrade: {student}: not given to the kernel: {listing([entry])}"
                                for entry in sorted(refused.items())[:5]]
                      + [line for line in log.splitlines() if "bngrade:" in line and "WARNING" in line][-5:],
                      submission_sha256=digest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    publish_result(dest, result)  # last: a directory with a result.json is a finished result
    return result


SCRATCH_PREFIX = "bngrade-p"


def _remove_stale_scratch():
    """Scratch courses left by graders that were killed (their pid is in the name and no longer runs)."""
    for d in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = d.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------- merge
def merge(course, assignment, results, students=None):
    """One nbgrader autograde run in the real course that replays the results; returns (rc, log)."""
    course, results = Path(course).resolve(), Path(results).resolve()
    args = [sys.executable, "-m", "bngrade.autograde", "_merge_in_nbgrader", assignment, str(results)]
    if students:
        args += students
    proc = subprocess.run(args, cwd=course, env=_env(), capture_output=True, text=True)
    _copy_reports(course, assignment, results, students or submitted_students(course, assignment))
    return proc.returncode, proc.stdout + proc.stderr


def start_merge(course, assignment, results, fork=False):
    """A merge process that replays each student named on its stdin, as they arrive (see `run`).

    `fork`: fork it from this process, which has imported nbgrader already (`_preload`), instead of
    starting a fresh interpreter: importing nbgrader costs ~3 s of CPU (jsonschema's rfc3987_syntax
    grammar alone ~1.8 s), which at JOBS = cores is taken from the workers grading (measured by
    `python -m bngrade.phases`). Only where no other thread runs here (the local engine); a Dask
    client's threads make a fork unsafe, and there the merge competes with no worker anyway.
    """
    log = tempfile.TemporaryFile(mode="w+")
    if fork:
        return _ForkedMerge(Path(course), assignment, str(results), log)
    args = [sys.executable, "-m", "bngrade.autograde", "_merge_in_nbgrader", assignment, str(results), "-"]
    proc = subprocess.Popen(args, cwd=course, env=_env(), stdin=subprocess.PIPE, stdout=log,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=_die_with_parent)
    proc.log_file = log
    return proc


class _ForkedMerge:
    """The merge run in a child forked from this process; the part of subprocess.Popen that `run` uses."""

    def __init__(self, course, assignment, results, log):
        self.log_file, self.returncode = log, None
        read, write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            rc = 1
            try:
                os.close(write)
                _die_with_parent()
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                os.environ.update(_env())
                os.environ.pop("NBGRADER_EXECUTION", None)
                os.chdir(course)
                with os.fdopen(read) as names:
                    rc = _merge_in_nbgrader(assignment, results, ["-"], names=names)
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc if isinstance(rc, int) else 1)
        os.close(read)
        self.pid = pid
        self.stdin = os.fdopen(write, "w")

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self):
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def kill(self):
        if self.returncode is None:
            os.kill(self.pid, 9)


def _die_with_parent():
    from bngrade.unit import die_with_parent

    die_with_parent()


def finish_merge(proc, course, assignment, results, students):
    """Close a `start_merge` process's input, wait for it; returns (rc, log)."""
    proc.stdin.close()
    rc = proc.wait()
    proc.log_file.seek(0)
    log = proc.log_file.read()
    proc.log_file.close()
    _copy_reports(course, assignment, results, students)
    return rc, log


def merge_results(course, assignment, results):
    """The merge step after `one` or an array job: the students whose results are there (a batch may
    hold part of the class) and not merged yet; prints the log and the grade table, returns nbgrader's rc."""
    students = submitted_students(course, assignment)
    have = [s for s in students if (Path(results) / s / assignment / "result.json").exists()]
    _, to_merge, finished = resume_state(course, assignment, have, results)
    missing = sorted(set(students) - set(have))
    print(f"merging {len(to_merge)} result(s) into {Path(course).resolve() / 'gradebook.db'} "
          f"({len(finished)} already merged, {len(missing)} student(s) without a result)", flush=True)
    rc, log = merge(course, assignment, results, to_merge) if to_merge else (0, "")
    print(log[-5000:])
    print(table(course, assignment))
    if missing:
        print(f"no result yet for: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
    return rc


def _copy_reports(course, assignment, results, students):
    for student in students:
        report = Path(results) / student / assignment / "reports"
        if report.is_dir():
            shutil.copytree(report, Path(course) / "reports" / assignment / student, dirs_exist_ok=True)


def _merge_in_nbgrader(assignment, results, students, names=None):
    """Runs inside the course directory: nbgrader's AutogradeApp with ReplayGraded as the executor.

    students ["-"]: the names arrive one a line on `names` (default stdin) while the workers grade others.
    """
    from nbgrader.apps.autogradeapp import AutogradeApp
    from nbgrader.preprocessors import AssignLatePenalties, CheckCellMetadata, SaveAutoGrades
    from traitlets.config import Config

    from bngrade.replay import ReplayGraded

    ids = (line.strip() for line in (names or sys.stdin)) if students == ["-"] else students or ["*"]
    rc = 0
    for student in ids:
        if not student:
            continue
        t0 = time.monotonic()
        if student != "*" and transplant(".", assignment, Path(results) / student / assignment, student):
            _mark_merged(Path(results) / student / assignment)
            print(f"[bngrade merge] {student}: rows copied from its scratch gradebook "
                  f"({(time.monotonic() - t0) * 1000:.1f} ms)", flush=True)
            continue
        app = AutogradeApp()
        app.initialize([assignment, "--force", f"--student={student}"])
        extra = Config()
        # the graded notebook replaces the submission whole: sanitizing it first would be work thrown away
        # (a notebook nbgrader cannot read still fails here, before any preprocessor, as in a serial run)
        extra.Autograde.sanitize_preprocessors = []
        extra.Autograde.autograde_preprocessors = [ReplayGraded, SaveAutoGrades, AssignLatePenalties,
                                                   CheckCellMetadata]
        extra.ReplayGraded.results_dir = results
        app.update_config(extra)
        merged = False
        try:
            app.start()
            merged = student != "*"
        except SystemExit as e:
            rc = rc or (e.code if isinstance(e.code, int) else 1)
            merged = e.code in (0, None) and student != "*"
        except Exception as e:  # nbgrader raises NbGraderException after logging the per-student errors
            print(f"{type(e).__name__}: {e}", file=sys.stderr)
            rc = 1
        AutogradeApp.clear_instance()
        if merged:  # this result is in the gradebook: a resumed run need not merge it again
            _mark_merged(Path(results) / student / assignment)
            print(f"[bngrade merge] {student}: replayed through nbgrader ({(time.monotonic() - t0) * 1000:.1f} ms)",
                  flush=True)
    return rc


_ROWS = (  # what nbgrader's autograde writes for one submission, parents first
    ("submitted_assignment", "id = :sub"),
    ("submitted_notebook", "assignment_id = :sub"),
    ("grade", "notebook_id IN (SELECT id FROM {db}.submitted_notebook WHERE assignment_id = :sub)"),
    ("comment", "notebook_id IN (SELECT id FROM {db}.submitted_notebook WHERE assignment_id = :sub)"),
)


def transplant(course, assignment, base, student):
    """Copy the rows nbgrader wrote in a student's scratch gradebook into the course's; True if done.

    The scratch gradebook is a copy of the course's (taken after generate_assignment), so its
    assignment, notebook and cell ids are the course's and nbgrader's own rows (SaveAutoGrades,
    AssignLatePenalties, run in the scratch course with the same config) can be inserted as they
    are, in one transaction: milliseconds where replaying through nbgrader costs ~0.4 s of CPU.
    False (the caller replays through nbgrader instead) when it does not apply: the grading failed
    (nbgrader's own error lines are wanted), the course already has a submission of this student
    (re-grading keeps nbgrader's update semantics: manual grades, extensions), or the ids differ
    (the assignment was generated again since).
    """
    import sqlite3

    base, course = Path(base), Path(course)
    try:
        info = json.loads((base / "result.json").read_text())
    except (OSError, ValueError):
        return False
    scratch = base / "gradebook.db"
    if not info.get("ok") or not scratch.exists() or not (base / "autograded").is_dir():
        return False
    db = sqlite3.connect(str(course / "gradebook.db"), isolation_level=None, timeout=600)
    try:
        db.execute("ATTACH DATABASE ? AS s", (str(scratch),))
        db.execute("BEGIN IMMEDIATE")
        one = db.execute("SELECT a.id FROM main.assignment a JOIN s.assignment b ON a.id = b.id "
                         "WHERE a.name = ?", (assignment,)).fetchone()
        sub = db.execute("SELECT sa.id FROM s.submitted_assignment sa JOIN s.assignment a ON a.id = sa.assignment_id "
                         "WHERE a.name = ? AND sa.student_id = ?", (assignment, student)).fetchall()
        exists = db.execute("SELECT 1 FROM main.submitted_assignment WHERE assignment_id = ? AND student_id = ?",
                            (one[0] if one else None, student)).fetchone()
        unknown = db.execute(  # a cell or notebook the course's gradebook does not know
            "SELECT 1 FROM s.submitted_notebook n WHERE n.notebook_id NOT IN (SELECT id FROM main.notebook) "
            "UNION ALL SELECT 1 FROM s.grade g WHERE g.cell_id NOT IN (SELECT id FROM main.grade_cells) "
            "UNION ALL SELECT 1 FROM s.comment c WHERE c.cell_id NOT IN (SELECT id FROM main.solution_cells)"
        ).fetchone()
        if not one or len(sub) != 1 or exists or unknown:
            db.execute("ROLLBACK")
            return False
        db.execute("INSERT OR IGNORE INTO main.student SELECT * FROM s.student WHERE id = ?", (student,))
        for table, where in _ROWS:
            db.execute(f"INSERT INTO main.{table} SELECT * FROM s.{table} WHERE {where.format(db='s')}",
                       {"sub": sub[0][0]})
        # the files nbgrader's autograde leaves in the course (written before the rows are committed)
        dest = course / "autograded" / student / assignment
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(base / "autograded", dest, symlinks=True)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    finally:
        db.close()
    return True


def _digest_file(path):
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _mark_merged(base):
    marker = base / "merged"
    part = base / "merged.part"
    part.write_text(_digest_file(base / "result.json"))
    os.replace(part, marker)


def resume_state(course, assignment, students, results):
    """Split the class into (to grade, to merge, finished) from what `results` and the gradebook hold.

    A student has a result when results/S/A/result.json exists and was made from the submission
    that is there now (its sha256); it is finished when the merge marked that very result.json as
    merged and the gradebook has the submission.
    """
    from bngrade.unit import submission_digest

    in_gradebook = set(gradebook_scores(course, assignment)) if (Path(course) / "gradebook.db").exists() else set()
    to_grade, to_merge, finished = [], [], []
    for s in students:
        base = Path(results) / s / assignment
        try:
            info = json.loads((base / "result.json").read_text())
        except (OSError, ValueError):
            to_grade.append(s)
            continue
        if info.get("submission_sha256") != submission_digest(course, assignment, s):
            to_grade.append(s)
        elif (s in in_gradebook and (base / "merged").exists()
              and (base / "merged").read_text() == _digest_file(base / "result.json")):
            finished.append(s)
        else:
            to_merge.append(s)
    return to_grade, to_merge, finished


# ---------------------------------------------------------------------- run
def _status(result):
    if result.get("engine_error"):
        return f"NOT GRADED ({result['engine_error'][:200]}); a new run retries it"
    if not result.get("ok"):
        return "FAILED (see its nbgrader.log)"
    scores = result.get("scores") or {}
    got = sum(s for s, _ in scores.values() if s is not None)
    top = sum(m for s, m in scores.values() if s is not None)
    return f"{got:g}/{top:g}" + (" (timed out once)" if result.get("timed_out") else "")


def run(course, assignment, jobs=None, students=None, keep=None, quiet=False, engine="local", scheduler=None,
        fresh=False, client=None):
    """Grade the submissions on an engine, merging each into the gradebook as it is done;
    returns (rc, {student: result}, merge log).

    Resumable: the per-student results stay in `keep` (default COURSE/.bngrade-results), so a run
    that was killed, started again, grades only the students without a result (or whose submission
    changed since) and merges only those not merged yet. `fresh` forgets the results first.
    """
    from bngrade import engines
    from bngrade.unit import submission_digest

    course = Path(course).resolve()
    jobs = jobs or os.cpu_count() or 1
    students = students or submitted_students(course, assignment)
    if not students:
        raise SystemExit(f"no submissions in {course}/submitted/*/{assignment}")
    if engine not in engines.ENGINES:
        raise SystemExit(f"unknown engine {engine!r} (one of {', '.join(engines.ENGINES)})")
    if engine == "dask" and not (scheduler or client):
        raise SystemExit("ENGINE=dask needs SCHEDULER=tcp://host:8786 (the address `dask scheduler` prints)")
    out = engines.results_dir(course, assignment, keep)
    if fresh:
        for s in students:
            shutil.rmtree(out / s / assignment, ignore_errors=True)
    _remove_stale_scratch()
    to_grade, to_merge, finished = resume_state(course, assignment, students, out)
    if (to_merge or finished) and not quiet:
        print(f"resuming: {len(finished) + len(to_merge)} of {len(students)} students already graded "
              f"(results in {out}); grading {len(to_grade)}", flush=True)
    if engine == "local":
        _preload()
        from bngrade.unit import blank_gradebook

        out.mkdir(parents=True, exist_ok=True)
        gradebook = out / f".{assignment}-gradebook.db"  # the course's, without students: once per run
        gradebook.unlink(missing_ok=True)
        blank_gradebook(course, gradebook)
    results, merger, progress = {}, None, None
    try:
        # The gradebook takes one writer: one merge process replays each student into it as soon as
        # that student's result is in, while the workers grade the others (the merge overlaps them).
        merger = start_merge(course, assignment, out, fork=engine == "local")
        for s in to_merge:
            merger.stdin.write(s + "\n")
        merger.stdin.flush()
        progress = engines.Progress(len(students), f"autograde {assignment}", len(students) - len(to_grade), quiet)
        if engine == "local":
            stream = engines.local(course, assignment, to_grade, out, jobs, progress, gradebook)
        else:
            digests = {s: submission_digest(course, assignment, s) for s in to_grade}
            stream = engines.dask(course, assignment, to_grade, out, scheduler, progress, digests, client)
        for student, result in stream:
            results[student] = result
            failed = bool(result.get("engine_error")) or not result.get("ok")
            if not result.get("engine_error"):  # a result to merge (a failed grading fails in the merge too)
                merger.stdin.write(student + "\n")
                merger.stdin.flush()
                _copy_reports(course, assignment, out, [student])  # now, while the workers grade others
            progress.finished(f"  {student:<28} {_status(result)}  ({result.get('seconds', 0):.1f} s)", failed)
        progress.set_running(0)
        progress.close()
        lost = sorted(s for s, r in results.items() if r.get("engine_error"))
        if not quiet:
            print(f"finishing the merge into {course / 'gradebook.db'} (nbgrader, one student at a time)",
                  flush=True)
        t_merge = time.monotonic()
        rc, log = finish_merge(merger, course, assignment, out, [s for s in students if s not in results])
        run.last_merge_seconds = round(time.monotonic() - t_merge, 2)  # the part not overlapped
        if lost:
            log += "".join(f"\nbngrade: {s} was not graded: {results[s]['engine_error']} (run again to retry)"
                           for s in lost)
            rc = rc or 1
    finally:
        if progress is not None:
            progress.close()
        if merger is not None and merger.poll() is None:  # interrupted: stop the merge too
            merger.kill()
            merger.wait()
    return rc, results, log


def _preload():
    """Import what every student's grading needs, before the workers fork."""
    import nbgrader.apps.autogradeapp  # noqa: F401
    import nbgrader.preprocessors  # noqa: F401

    import bngrade.preprocessors  # noqa: F401
    import bngrade.sandbox  # noqa: F401
    import bngrade.verdict  # noqa: F401

    bngrade.sandbox.kernel_site_binds()  # resolved once here, not once per worker


def table(course, assignment):
    sc = gradebook_scores(course, assignment)
    tests = sorted({t for row in sc.values() for t in row})
    width = max([len(s) for s in sc] + [7])
    lines = [f"{'student':<{width}}  " + "  ".join(tests) + "  total"]
    for student in sorted(sc):
        row = sc[student]
        cols = [("-" if t not in row else "?" if row[t][0] is None else f"{row[t][0]:g}") +
                (f"/{row[t][1]:g}" if t in row else "") for t in tests]
        total = sum(v[0] for v in row.values() if v[0] is not None)
        top = sum(v[1] for v in row.values() if v[0] is not None)
        lines.append(f"{student:<{width}}  " + "  ".join(c.rjust(len(t)) for c, t in zip(cols, tests)) +
                     f"  {total:g}/{top:g}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- bench
FLOOD_CELL = "import sys\nfor _ in range(10 ** 9):\n    sys.stdout.write('flood ' * 2000 + '\\n')\n"


def _bench_course(src, dest, assignment, n, flood=False):
    """A scratch course with n sample submissions (catalogue variants, cycled)."""
    sys.path.insert(0, str(src))
    import catalogue
    import course as course_mod

    d = course_mod.copy_course(dest)
    rc, log = course_mod.nbgrader(d, "generate_assignment", assignment, "--force", quiet=True)
    if rc:
        raise SystemExit(log)
    variants = [v for v in catalogue.VARIANTS if v.assignment == assignment and v.kind in ("buggy", "correct")]
    notebooks = {}
    for i in range(n):
        v = variants[i % len(variants)] if variants and i % 3 else None
        notebooks[f"s{i:03d}"] = course_mod.submission(d, assignment, v)
    if flood:
        nb = json.loads(course_mod.submission(d, assignment))
        nb["cells"].insert(1, {"cell_type": "code", "execution_count": None, "id": "flood", "metadata": {},
                               "outputs": [], "source": FLOOD_CELL})
        notebooks = {"flood": json.dumps(nb)}
    course_mod.place(d, assignment, notebooks)
    return d


class CpuMeter:
    """CPU seconds used by this process and every process it starts from now on (the sandboxes, the
    merge), from a cgroup v1 cpuacct group of its own; None where none can be made (not root)."""

    ROOT = Path("/sys/fs/cgroup/cpuacct")

    def __init__(self):
        self.group = None
        try:
            group = self.ROOT / f"bngrade-bench-{os.getpid()}"
            group.mkdir(exist_ok=True)
            (group / "cgroup.procs").write_text(str(os.getpid()))
            self.group = group
        except OSError:
            pass

    def seconds(self):
        return int((self.group / "cpuacct.usage").read_text()) / 1e9 if self.group else None

    def close(self):
        if self.group:
            (self.ROOT / "cgroup.procs").write_text(str(os.getpid()))
            for _ in range(50):  # the group empties as its last processes are reaped
                try:
                    self.group.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def bench(src, assignment, n, out, rounds=2):
    """JOBS=1 against JOBS=2, measured side by side: the runs alternate (1, 2, 2, 1, ...), so a load
    that changes meanwhile (other people on the machine) weighs on both; every run must give the
    grades of the first. CPU seconds per student (the grader, the merge, bwrap; not the kernels,
    which run in cgroups of their own) come from a cgroup and do not depend on the load; the
    per-phase breakdown, kernels included, is `python -m bngrade.phases`."""
    src = Path(src).resolve()
    base = Path(tempfile.mkdtemp(prefix="bngrade-bench-"))
    template = _bench_course(src, base / "template", assignment, n)
    figures = dict(assignment=assignment, submissions=n, cores=os.cpu_count(), rounds=rounds, runs=[])
    _preload()  # the imports once, before any run is timed (else the first run alone would pay them)
    meter = CpuMeter()
    order = [j for r in range(rounds) for j in ((1, 2) if r % 2 == 0 else (2, 1))]
    reference = None
    try:
        for k, jobs in enumerate(order):
            d = base / f"run{k}-jobs{jobs}"
            shutil.copytree(template, d, symlinks=True)
            load = os.getloadavg()[0]
            cpu0, t0 = meter.seconds(), time.monotonic()
            rc, results, _ = run(d, assignment, jobs=jobs, quiet=True)
            wall = time.monotonic() - t0
            cpu = meter.seconds() - cpu0 if meter.group else None
            per = sorted(r["seconds"] for r in results.values() if "seconds" in r)
            grades = gradebook_scores(d, assignment)
            reference = reference or grades
            figures["runs"].append(dict(
                jobs=jobs, wall_seconds=round(wall, 2), merge_tail_seconds=run.last_merge_seconds,
                # the grader, the merge, bwrap: each kernel runs in a cgroup of its own, not counted here
                cpu_seconds_per_student_outside_kernels=round(cpu / n, 3) if cpu is not None else None,
                load_average_before=round(load, 2), grades_equal_first_run=grades == reference,
                graded=sum(r.get("ok", False) for r in results.values()),
                median_seconds_per_submission=round(statistics.median(per), 3) if per else None,
                max_grader_rss_mib=round(max(r.get("grader_maxrss_kib", 0) for r in results.values()) / 1024, 1)))
            print(json.dumps(figures["runs"][-1]), flush=True)
            shutil.rmtree(d, ignore_errors=True)
        walls = {j: [r["wall_seconds"] for r in figures["runs"] if r["jobs"] == j] for j in (1, 2)}
        pairs = [walls[1][i] / walls[2][i] for i in range(rounds)]
        figures["side_by_side"] = [dict(round=i + 1, jobs1_wall_seconds=walls[1][i], jobs2_wall_seconds=walls[2][i],
                                        ratio_jobs1_over_jobs2=round(pairs[i], 3)) for i in range(rounds)]
        figures["speedup_jobs2_over_jobs1_per_round"] = [round(x, 3) for x in pairs]
        figures["speedup_jobs2_over_jobs1"] = round(statistics.median(pairs), 3)
        figures["all_grades_equal"] = all(r["grades_equal_first_run"] for r in figures["runs"])
        figures["load_average_at_end"] = os.getloadavg()
        d = _bench_course(src, base / "flood", assignment, 0, flood=True)
        result = grade_one(d, assignment, "flood", base / "flood-out")
        figures["flood"] = dict(grader_peak_rss_mib=round(result["grader_maxrss_kib"] / 1024, 1),
                                seconds=result["seconds"], scores=result["scores"])
    finally:
        meter.close()
        shutil.rmtree(base, ignore_errors=True)
    Path(out).write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "runs"}, indent=1))
    return figures


def parser(prog="python -m bngrade.autograde", description=__doc__):
    """The one command line of the grader, shared by `python -m bngrade.autograde` and `python -m bngrade`."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="grade every submission (tqdm bar), merge, print the grades")
    r.add_argument("assignment")
    r.add_argument("--course", default="assignments")
    r.add_argument("--jobs", type=int, default=0, help="students at a time (0: the number of cores)")
    r.add_argument("--students", default="", help="comma-separated ids (default: every submission)")
    r.add_argument("--keep", "--results", dest="keep", default="",
                   help="the per-student results (default COURSE/.bngrade-results; kept: a new run resumes)")
    r.add_argument("--engine", default="local", choices=("local", "dask"))
    r.add_argument("--scheduler", default="", help="ENGINE=dask: the scheduler's address, tcp://host:8786")
    r.add_argument("--fresh", action="store_true", help="forget the results of earlier runs: grade everyone")
    o = sub.add_parser("one", help="the standalone unit: grade students into --out")
    o.add_argument("assignment")
    o.add_argument("students", nargs="+", metavar="student")
    o.add_argument("--course", default="assignments")
    o.add_argument("--out", required=True)
    m = sub.add_parser("merge", help="bring results not merged yet into the course's gradebook")
    m.add_argument("assignment", nargs="?", default="", help="with --results (not with --manifest)")
    m.add_argument("--course", default="", help="default: assignments, or the course the manifest was made from")
    m.add_argument("--results", default="", help="the --out directory of `one`")
    m.add_argument("--manifest", default="", help="an array job's manifest.json: its results directory")
    f = sub.add_parser("manifest", help="pack the assignment and every submission for an array job")
    f.add_argument("assignment")
    f.add_argument("--course", default="assignments")
    f.add_argument("--out", required=True)
    u = sub.add_parser("unit", help="grade the student at an array job's index")
    u.add_argument("--manifest", required=True)
    u.add_argument("--index", type=int, default=None,
                   help="default: $SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX, whichever is set")
    b = sub.add_parser("bench", help="JOBS=1 vs JOBS=2 side by side -> JSON")
    b.add_argument("assignment", nargs="?", default="bn_forward")
    b.add_argument("--course", default="assignments")
    b.add_argument("--students", type=int, default=20)
    b.add_argument("--out", default="bench-autograde.json")
    b.add_argument("--rounds", type=int, default=2, help="pairs of runs (JOBS=1, JOBS=2), alternating")
    i = sub.add_parser("_merge_in_nbgrader")
    i.add_argument("assignment")
    i.add_argument("results")
    i.add_argument("students", nargs="*")
    return p


def main(argv=None, prog="python -m bngrade.autograde", description=__doc__):
    args = parser(prog, description).parse_args(argv)
    if args.cmd == "run":
        students = [s for s in args.students.split(",") if s] or None
        rc, results, log = run(args.course, args.assignment, args.jobs or None, students, args.keep or None,
                               engine=args.engine, scheduler=args.scheduler or None, fresh=args.fresh)
        failed = [line.strip() for line in log.splitlines() if ERROR_LINE in line and "for student" in line]
        for line in failed:
            print(line)
        print(table(args.course, args.assignment))
        if rc:
            print(f"{len(failed) or 'some'} student(s) could not be graded (above; each one's nbgrader log says why); "
                  "every other student is in the gradebook. Exit status 1, as nbgrader's.")
        return rc
    if args.cmd == "one":
        ok = [grade_one(args.course, args.assignment, s, args.out)["ok"] for s in args.students]
        return 0 if all(ok) else 1
    if args.cmd == "merge":
        if args.manifest:
            manifest = Path(args.manifest).resolve()
            mf = json.loads(manifest.read_text())
            return merge_results(args.course or mf["course"], mf["assignment"], manifest.parent / mf["results"])
        if not (args.assignment and args.results):
            raise SystemExit("merge needs A --results DIR, or --manifest JOBDIR/manifest.json")
        return merge_results(args.course or "assignments", args.assignment, args.results)
    if args.cmd == "manifest":
        from bngrade.unit import write_manifest

        path = write_manifest(args.course, args.assignment, args.out)
        n = len(json.loads(path.read_text())["students"])
        print(f"{path}: {n} students, indexes 0..{n - 1} (e.g. sbatch --array=0-{n - 1})")
        return 0
    if args.cmd == "unit":
        from bngrade.unit import unit_task

        index = args.index
        if index is None:
            found = os.environ.get("SLURM_ARRAY_TASK_ID") or os.environ.get("JOB_COMPLETION_INDEX")
            if found is None:
                raise SystemExit("--index, SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX is needed")
            index = int(found)
        return unit_task(args.manifest, index)
    if args.cmd == "bench":
        bench(args.course, args.assignment, args.students, args.out, args.rounds)
        return 0
    if args.cmd == "_merge_in_nbgrader":
        return _merge_in_nbgrader(args.assignment, args.results, args.students)
    return 2


if __name__ == "__main__":
    sys.exit(main())
