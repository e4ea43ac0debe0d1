"""Parallel autograde with a progress bar, and the per-student unit it is made of.

nbgrader grades one submission at a time, and two nbgrader processes cannot
share the SQLite gradebook (nbgrader issue #174). Here each student is graded
by plain `nbgrader autograde` in a private scratch copy of the course (its
config, `source/<assignment>/`, a copy of the gradebook and that student's
submission only), many at a time; then the results are brought into the real
gradebook serially, by nbgrader itself: one `nbgrader autograde` run in the
real course whose executor is `ReplayGraded`, which puts each student's
already graded notebook (executed and scored in the scratch copy) in place of
executing it again, so nbgrader's own sanitizing, `SaveAutoGrades` and late
penalties write the rows, exactly as a serial run would.

Commands (python -m bngrade.autograde ...):

    run A [--course DIR] [--jobs N] [--students a,b] [--keep DIR]
        grade every submitted/*/A (N at a time, default: the number of cores),
        with a tqdm bar (ETA, per-student status), then merge and print the grades
    one A STUDENT [STUDENT...] --course DIR --out DIR
        the standalone unit: one submission in, DIR/STUDENT/A/ out (result.json,
        the graded notebooks, the integrity report, nbgrader's log). Needs only
        the course's config, source/A and gradebook.db: run it on any machine
        of a batch runner, copy every DIR/STUDENT back, then `merge`
    merge A --course DIR --results DIR
        bring the results of `one` into the course's gradebook (serial, nbgrader)
    bench [A] [--course DIR] [--students 20] [--out FILE]
        JOBS=1 vs JOBS=2 on sample submissions, seconds per submission, and the
        grader's peak RSS under an output flood; writes a JSON file

Decisions: a student whose scratch grading failed (an invalid notebook, an
error in nbgrader) fails in the merge run too, with the same per-student
"There was an error processing" line; the run goes on. The exit status of
`run` and `merge` is nbgrader's (non-zero when some student failed).
"""
import argparse
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nbgrader.preprocessors.base import NbGraderPreprocessor
from traitlets import Unicode

from bngrade.sandbox_files import copy_given_files

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
def grade_one(course, assignment, student, out):
    """Grade one submission in a private scratch copy of the course; write out/student/assignment/."""
    course, out = Path(course).resolve(), Path(out).resolve()
    t0 = time.monotonic()
    dest = out / student / assignment
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for need in ("nbgrader_config.py", "gradebook.db", f"source/{assignment}", f"submitted/{student}/{assignment}"):
        if not (course / need).exists():
            raise SystemExit(f"{course / need} is missing (run `nbgrader generate_assignment {assignment}` first?)")
    scratch = Path(tempfile.mkdtemp(prefix=f"bngrade-{student}-"))
    try:
        shutil.copy(course / "nbgrader_config.py", scratch)
        shutil.copy(course / "gradebook.db", scratch)
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
        scores = gradebook_scores(scratch, assignment).get(student) if graded.is_dir() else None
        result = dict(student=student, assignment=assignment, returncode=rc, ok=graded.is_dir() and ERROR_LINE
                      not in log, scores=scores, seconds=round(time.monotonic() - t0, 3), grader_maxrss_kib=maxrss,
                      timed_out="running the notebook once more" in log or "ran past" in log,
                      warnings=[f"bngrade: {student}: not given to the kernel: {name} ({why})"
                                for name, why in sorted(refused.items())[:5]]
                      + [line for line in log.splitlines() if "bngrade:" in line and "WARNING" in line][-5:])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    (dest / "result.json").write_text(json.dumps(result, indent=1))
    return result


# ---------------------------------------------------------------------- merge
class ReplayGraded(NbGraderPreprocessor):
    """The executor of the merge run: the notebook graded in the scratch copy, in place of executing it.

    It was sanitized, executed in the sandbox and scored by the same config, so
    SaveAutoGrades, which runs after this, stores what a serial run stores.
    """

    results_dir = Unicode("", help="the --out directory of `one`").tag(config=True)

    def preprocess(self, nb, resources):
        import nbformat

        meta = resources["nbgrader"]
        base = Path(self.results_dir) / meta["student"] / meta["assignment"]
        result = base / "result.json"
        if not result.exists():
            raise RuntimeError(f"no graded result for {meta['student']} in {base} (did `one` run?)")
        info = json.loads(result.read_text())
        path = base / "autograded" / f"{meta['notebook']}.ipynb"
        if not info.get("ok") or not path.exists():
            log = base / "nbgrader.log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise RuntimeError(f"grading {meta['student']} failed in its scratch course:\n{tail}")
        graded = nbformat.read(str(path), as_version=nbformat.NO_CONVERT)
        return graded, resources


def merge(course, assignment, results, students=None):
    """One nbgrader autograde run in the real course that replays the results; returns (rc, log)."""
    course, results = Path(course).resolve(), Path(results).resolve()
    args = [sys.executable, "-m", "bngrade.autograde", "_merge_in_nbgrader", assignment, str(results)]
    if students:
        args += students
    proc = subprocess.run(args, cwd=course, env=_env(), capture_output=True, text=True)
    _copy_reports(course, assignment, results, students or submitted_students(course, assignment))
    return proc.returncode, proc.stdout + proc.stderr


def start_merge(course, assignment, results):
    """A merge process that replays each student named on its stdin, as they arrive (see `run`)."""
    log = tempfile.TemporaryFile(mode="w+")
    args = [sys.executable, "-m", "bngrade.autograde", "_merge_in_nbgrader", assignment, str(results), "-"]
    proc = subprocess.Popen(args, cwd=course, env=_env(), stdin=subprocess.PIPE, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    proc.log_file = log
    return proc


def finish_merge(proc, course, assignment, results, students):
    """Close a `start_merge` process's input, wait for it; returns (rc, log)."""
    proc.stdin.close()
    rc = proc.wait()
    proc.log_file.seek(0)
    log = proc.log_file.read()
    proc.log_file.close()
    _copy_reports(course, assignment, results, students)
    return rc, log


def _copy_reports(course, assignment, results, students):
    for student in students:
        report = Path(results) / student / assignment / "reports"
        if report.is_dir():
            shutil.copytree(report, Path(course) / "reports" / assignment / student, dirs_exist_ok=True)


def _merge_in_nbgrader(assignment, results, students):
    """Runs inside the course directory: nbgrader's AutogradeApp with ReplayGraded as the executor."""
    from nbgrader.apps.autogradeapp import AutogradeApp
    from nbgrader.preprocessors import AssignLatePenalties, CheckCellMetadata, SaveAutoGrades
    from traitlets.config import Config

    # "-": the names arrive on stdin, one a line, while the workers still grade others
    ids = (line.strip() for line in sys.stdin) if students == ["-"] else students or ["*"]
    rc = 0
    for student in ids:
        if not student:
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
        try:
            app.start()
        except SystemExit as e:
            rc = rc or (e.code if isinstance(e.code, int) else 1)
        except Exception as e:  # nbgrader raises NbGraderException after logging the per-student errors
            print(f"{type(e).__name__}: {e}", file=sys.stderr)
            rc = 1
        AutogradeApp.clear_instance()
    return rc


# ---------------------------------------------------------------------- run
def _status(result):
    if not result.get("ok"):
        return "FAILED (see its nbgrader.log)"
    scores = result.get("scores") or {}
    got = sum(s for s, _ in scores.values() if s is not None)
    top = sum(m for s, m in scores.values() if s is not None)
    return f"{got:g}/{top:g}" + (" (timed out once)" if result.get("timed_out") else "")


def run(course, assignment, jobs=None, students=None, keep=None, quiet=False):
    """Grade the submissions `jobs` at a time, merging each into the gradebook as it is done;
    returns (rc, {student: result}, merge log)."""
    from tqdm import tqdm

    course = Path(course).resolve()
    jobs = jobs or os.cpu_count() or 1
    students = students or submitted_students(course, assignment)
    if not students:
        raise SystemExit(f"no submissions in {course}/submitted/*/{assignment}")
    out = Path(keep).resolve() if keep else Path(tempfile.mkdtemp(prefix="bngrade-results-"))
    _preload()
    results, merger = {}, None
    try:
        # The gradebook takes one writer: one merge process replays each student into it as soon as
        # that student's result is in, while the workers grade the others (the merge overlaps them).
        merger = start_merge(course, assignment, out)
        # fork: the workers start with nbgrader, bnkit and the course config already imported
        with multiprocessing.get_context("fork").Pool(jobs) as pool, tqdm(
                total=len(students), desc=f"autograde {assignment}", unit="student", disable=quiet,
                dynamic_ncols=True) as bar:
            tasks = [(str(course), assignment, s, str(out)) for s in students]
            for result in pool.imap_unordered(_grade_task, tasks):
                results[result["student"]] = result
                merger.stdin.write(result["student"] + "\n")
                merger.stdin.flush()
                bar.set_postfix_str(f"{result['student']}: {_status(result)}")
                bar.write(f"  {result['student']:<28} {_status(result)}  ({result.get('seconds', 0):.1f} s)")
                bar.update()
        if not quiet:
            print(f"finishing the merge into {course / 'gradebook.db'} (nbgrader, one student at a time)",
                  flush=True)
        t_merge = time.monotonic()
        rc, log = finish_merge(merger, course, assignment, out, students)
        run.last_merge_seconds = round(time.monotonic() - t_merge, 2)  # the part not overlapped
    finally:
        if merger is not None and merger.poll() is None:  # interrupted: stop the merge too
            merger.kill()
            merger.wait()
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
    return rc, results, log


def _preload():
    """Import what every student's grading needs, before the workers fork."""
    import nbgrader.apps.autogradeapp  # noqa: F401
    import nbgrader.preprocessors  # noqa: F401

    import bngrade.preprocessors  # noqa: F401
    import bngrade.sandbox  # noqa: F401
    import bngrade.verdict  # noqa: F401


def _grade_task(task):
    course, assignment, student, out = task
    try:
        return grade_one(course, assignment, student, out)
    except BaseException as e:  # a worker never dies on one student
        return dict(student=student, assignment=assignment, ok=False, error=f"{type(e).__name__}: {e}")


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


def bench(src, assignment, n, out):
    src = Path(src).resolve()
    base = Path(tempfile.mkdtemp(prefix="bngrade-bench-"))
    figures = dict(assignment=assignment, submissions=n, cores=os.cpu_count(), runs={})
    try:
        for jobs in (1, 2):
            d = _bench_course(src, base / f"jobs{jobs}", assignment, n)
            t0 = time.monotonic()
            rc, results, _ = run(d, assignment, jobs=jobs, quiet=False)
            wall = time.monotonic() - t0
            per = [r["seconds"] for r in results.values() if "seconds" in r]
            figures["runs"][f"jobs{jobs}"] = dict(
                # the merge overlaps the grading; merge_tail_seconds is what is left of it at the end
                wall_seconds=round(wall, 2), merge_tail_seconds=run.last_merge_seconds,
                grading_seconds=round(wall - run.last_merge_seconds, 2), merge_rc=rc,
                graded=sum(r.get("ok", False) for r in results.values()),
                median_seconds_per_submission=round(statistics.median(per), 3) if per else None,
                max_grader_rss_mib=round(max(r.get("grader_maxrss_kib", 0) for r in results.values()) / 1024, 1))
        j1, j2 = figures["runs"]["jobs1"]["wall_seconds"], figures["runs"]["jobs2"]["wall_seconds"]
        figures["speedup_jobs2_over_jobs1"] = round(j1 / j2, 3)
        g1, g2 = (figures["runs"][k]["grading_seconds"] for k in ("jobs1", "jobs2"))
        figures["speedup_of_the_parallel_phase"] = round(g1 / g2, 3)
        figures["load_average_at_end"] = os.getloadavg()
        figures["throughput_seconds_per_submission_jobs2"] = round(j2 / n, 3)
        d = _bench_course(src, base / "flood", assignment, 0, flood=True)
        result = grade_one(d, assignment, "flood", base / "flood-out")
        figures["flood"] = dict(grader_peak_rss_mib=round(result["grader_maxrss_kib"] / 1024, 1),
                                seconds=result["seconds"], scores=result["scores"])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    Path(out).write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
    return figures


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bngrade.autograde", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("assignment")
    r.add_argument("--course", default="assignments")
    r.add_argument("--jobs", type=int, default=0, help="students at a time (0: the number of cores)")
    r.add_argument("--students", default="", help="comma-separated ids (default: every submission)")
    r.add_argument("--keep", default="", help="keep the per-student results in this directory")
    o = sub.add_parser("one")
    o.add_argument("assignment")
    o.add_argument("students", nargs="+", metavar="student")
    o.add_argument("--course", default="assignments")
    o.add_argument("--out", required=True)
    m = sub.add_parser("merge")
    m.add_argument("assignment")
    m.add_argument("--course", default="assignments")
    m.add_argument("--results", required=True)
    b = sub.add_parser("bench")
    b.add_argument("assignment", nargs="?", default="bn_forward")
    b.add_argument("--course", default="assignments")
    b.add_argument("--students", type=int, default=20)
    b.add_argument("--out", default="bench-autograde.json")
    i = sub.add_parser("_merge_in_nbgrader")
    i.add_argument("assignment")
    i.add_argument("results")
    i.add_argument("students", nargs="*")
    args = p.parse_args(argv)
    if args.cmd == "run":
        students = [s for s in args.students.split(",") if s] or None
        rc, results, log = run(args.course, args.assignment, args.jobs or None, students, args.keep or None)
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
    if args.cmd == "merge":  # the students whose results are there (a batch may hold part of the class)
        have = sorted(p.parent.parent.name for p in Path(args.results).glob(f"*/{args.assignment}/result.json"))
        every = set(have) == set(submitted_students(args.course, args.assignment))
        rc, log = merge(args.course, args.assignment, args.results, None if every else have)
        print(log[-5000:])
        print(table(args.course, args.assignment))
        return rc
    if args.cmd == "bench":
        bench(args.course, args.assignment, args.students, args.out)
        return 0
    if args.cmd == "_merge_in_nbgrader":
        return _merge_in_nbgrader(args.assignment, args.results, args.students)
    return 2


if __name__ == "__main__":
    sys.exit(main())
