"""Where a submission's time goes, by phase, and where JOBS=2 loses time against JOBS=1.

    python -m bngrade.phases [--assignments bn_forward,bn_backward_fast] [--students 4]
                             [--class-size 8] [--out test-artifacts/autograde-phases.json]

Part 1 grades a few submissions of each assignment one after the other in this
process (as one local worker does) with the phases timed from outside the code
they time (wrappers installed here, nothing in the grader changes):

- per nbconvert/nbgrader preprocessor (sanitizers, the sandboxed executor, the
  verdict, the integrity analysis child process, ...): wall, the grader's own
  CPU and its reaped children's CPU (sandboxes, analysis);
- inside the executor: the sandbox's start (bwrap to a kernel that answers;
  wall and the sandbox cgroup's CPU) and every cell (wall, cgroup CPU), the
  test cells by grade id (the at-scale cases are a test cell of their own);
- around nbgrader: the scratch copy, `AutogradeApp.initialize` (config load),
  the scores read back, the merge (rows copied into the course's gradebook);
- once per process or run: a fresh interpreter importing the grader, a trial
  sandbox (bwrap + python + numpy + ipykernel imports), the reference-time
  calibration (cached on disk after its first run).

Part 2 grades one class at JOBS=1 then JOBS=2 with `autograde.run` and splits
the JOBS=2 wall time into: the ideal (sum of per-student seconds / 2), the
serial start (before the first student starts), idle worker time between
students, the tail (one worker done, the other still grading), the merge tail,
and the per-student slow-down (the same students' seconds at JOBS=2 over
JOBS=1: two jobs contending for 2 cores and anything else running).

CPU seconds do not depend on the load; wall seconds do: the 1-minute load
average is recorded next to every figure. The figures go to a JSON file.
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
from collections import defaultdict
from pathlib import Path

EVENTS = []


def _cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime


def _load():
    return round(os.getloadavg()[0], 2)


class _Span:
    def __init__(self, phase, **extra):
        self.phase, self.extra = phase, extra

    def __enter__(self):
        self.t0, (self.s0, self.c0) = time.monotonic(), _cpu()
        return self

    def __exit__(self, *exc):
        s1, c1 = _cpu()
        EVENTS.append(dict(phase=self.phase, wall=time.monotonic() - self.t0, cpu_self=s1 - self.s0,
                           cpu_children=c1 - self.c0, load=_load(), **self.extra))


def _wrap(owner, name, phase):
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        with _Span(phase(args) if callable(phase) else phase):
            return original(*args, **kwargs)
    setattr(owner, name, timed)


def install():
    """Time the phases of grading in this process (and in processes forked from it)."""
    import nbconvert.preprocessors.base as nbc_base
    from nbgrader.apps.autogradeapp import AutogradeApp

    import bngrade.autograde as ag
    import bngrade.unit as unit
    from bngrade.sandbox import SandboxedExecute

    _wrap(nbc_base.Preprocessor, "__call__", lambda a: f"preprocessor {type(a[0]).__name__}")
    _wrap(AutogradeApp, "initialize", "nbgrader AutogradeApp.initialize (config, gradebook open)")
    _wrap(ag, "gradebook_scores", "scores read back from the scratch gradebook")
    _wrap(unit, "submission_digest", "submission sha256")
    _wrap(ag, "copy_given_files", "submission copied into the scratch course")
    _wrap(ag, "_autograde_in_process", "nbgrader autograde (whole)")

    start = SandboxedExecute.async_start_new_kernel
    find = SandboxedExecute._find_kernel_pid
    execute = SandboxedExecute.async_execute_cell

    async def start_kernel(self, **kw):
        self._phase_t0 = time.monotonic()
        return await start(self, **kw)

    def kernel_ready(self):
        pid = find(self)
        cpu = self._cgroup.cpu_seconds() if self._cgroup is not None else None
        EVENTS.append(dict(phase="sandbox start: bwrap to a kernel that answers", wall=time.monotonic() -
                           self._phase_t0, cpu_sandbox=cpu, load=_load()))
        return pid

    async def execute_cell(self, cell, index, **kw):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        kind = f"test cell {meta.get('grade_id')}" if meta.get("grade") and cell.cell_type == "code" and \
            not meta.get("solution") else "student/other cell" if cell.cell_type == "code" else "markdown cell"
        cg = self._cgroup
        c0, t0 = cg.cpu_seconds() if cg is not None else None, time.monotonic()
        try:
            return await execute(self, cell, index, **kw)
        finally:
            c1 = cg.cpu_seconds() if cg is not None else None
            EVENTS.append(dict(phase=f"cell: {kind}", wall=time.monotonic() - t0,
                               cpu_sandbox=None if c0 is None or c1 is None else c1 - c0, load=_load()))

    SandboxedExecute.async_start_new_kernel = start_kernel
    SandboxedExecute._find_kernel_pid = kernel_ready
    SandboxedExecute.async_execute_cell = execute_cell

    grade_one = ag.grade_one

    def grade_one_timed(*args, **kwargs):  # when and where each student ran (the JOBS=2 timeline)
        t0 = time.time()
        result = grade_one(*args, **kwargs)
        return dict(result, t_start=t0, t_end=time.time(), pid=os.getpid())
    ag.grade_one = grade_one_timed


def _summary(events, students):
    """Per phase: total per student (median over students is not kept per student here: mean of sums)."""
    by = defaultdict(lambda: defaultdict(float))
    count = defaultdict(int)
    loads = defaultdict(list)
    for e in events:
        count[e["phase"]] += 1
        loads[e["phase"]].append(e["load"])
        for k in ("wall", "cpu_self", "cpu_children", "cpu_sandbox"):
            if e.get(k) is not None:
                by[e["phase"]][k] += e[k]
    rows = []
    for phase in by:
        row = dict(phase=phase, calls_per_student=round(count[phase] / students, 2))
        row.update({f"{k}_s_per_student": round(v / students, 3) for k, v in by[phase].items()})
        row["load_average_1min"] = [min(loads[phase]), max(loads[phase])]
        rows.append(row)
    return sorted(rows, key=lambda r: -r.get("wall_s_per_student", 0))


def per_student(src, base, assignment, n):
    """Part 1: n submissions of `assignment` graded here, one after the other, the merge timed too."""
    from bngrade import bench
    from bngrade.autograde import _preload, transplant
    from bngrade.unit import blank_gradebook

    course = bench.make_class(src, base / f"phases-{assignment}", assignment, n)
    out = base / f"phases-{assignment}-out"
    out.mkdir()
    _preload()
    gradebook = out / "blank.db"
    with _Span("blank gradebook (once per run)"):
        blank_gradebook(course, gradebook)
    students = sorted(p.parent.name for p in course.glob(f"submitted/*/{assignment}"))
    # the first student of a process also pays the sandbox trial and the reference time (cached on disk)
    import bngrade.autograde as ag

    del EVENTS[:]
    totals = []
    for s in students:
        t0, (a0, b0) = time.monotonic(), _cpu()
        with _Span("grade_one (whole unit)"):
            r = ag.grade_one(course, assignment, s, out, gradebook)
        a1, b1 = _cpu()
        totals.append(dict(student=s, ok=r["ok"], wall=round(time.monotonic() - t0, 3),
                           cpu_self=round(a1 - a0, 3), cpu_children=round(b1 - b0, 3), load=_load()))
        print(json.dumps(totals[-1]), flush=True)
    for s in students:
        with _Span("merge: rows copied into the course gradebook"):
            transplant(course, assignment, out / s / assignment, s)
    phases = _summary(EVENTS, len(students))
    row = {r["phase"]: r for r in phases}
    whole = row.get("nbgrader autograde (whole)", {}).get("cpu_self_s_per_student")
    if whole is not None:  # what nbgrader does around its preprocessors: notebook reads/writes, gradebook ORM
        named = sum(r.get("cpu_self_s_per_student", 0) for r in phases
                    if r["phase"].startswith("preprocessor ") or "initialize" in r["phase"])
        phases.append(dict(phase="nbgrader's own work between the preprocessors (derived: whole - named)",
                           cpu_self_s_per_student=round(whole - named, 3)))
    shutil.rmtree(course, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return dict(assignment=assignment, students=totals, phases=phases)


def once_per_process():
    """A fresh interpreter importing the grader; a trial sandbox; the reference-time calibration."""
    fig = {}
    code = ("import time, resource; t = time.monotonic(); from bngrade.autograde import _preload; _preload(); "
            "r = resource.getrusage(resource.RUSAGE_SELF); print(time.monotonic() - t, r.ru_utime + r.ru_stime)")
    c0, t0 = _cpu()[1], time.monotonic()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    imports = p.stdout.split()
    fig["fresh interpreter + grader imports (_preload)"] = dict(
        wall_s=round(time.monotonic() - t0, 3), cpu_s=round(_cpu()[1] - c0, 3),
        imports_wall_s=round(float(imports[0]), 3) if imports else None, load_average_1min=_load(),
        note="paid once per local worker pool (fork after _preload), once per Dask worker's grading process, "
             "once by the merge process; not per student")
    from bngrade.sandbox import SandboxedExecute

    trials = []
    for _ in range(3):
        ex = SandboxedExecute()
        c0, t0 = _cpu()[1], time.monotonic()
        ok = ex._trial()
        trials.append((time.monotonic() - t0, _cpu()[1] - c0, ok))
    fig["trial sandbox (bwrap + setpriv + python + import numpy, ipykernel)"] = dict(
        wall_s=round(statistics.median(t[0] for t in trials), 3),
        cpu_s=round(statistics.median(t[1] for t in trials), 3), ok=all(t[2] is True for t in trials),
        load_average_1min=_load(), note="once per worker process (check_sandbox); close to the CPU of every "
                                        "kernel's start-up, which is paid per student")
    return fig


def reference_calibration(src, base, assignment):
    """The reference solution's time, measured with an empty cache (what the first run of a course pays)."""
    from bngrade import bench
    from bngrade.sandbox import SandboxedExecute

    course = bench.make_class(src, base / "calib", assignment, 0)
    ex = SandboxedExecute(budget_cache_dir=str(base / "calib-cache"))
    ex.check_sandbox()
    nb_dir = course / "autograded" / "nobody" / assignment
    nb_dir.mkdir(parents=True)
    name = sorted((course / "source" / assignment).glob("*.ipynb"))[0].stem
    resources = {"metadata": {"path": str(nb_dir), "name": name}}
    c0, t0 = _cpu()[1], time.monotonic()
    seconds = ex._reference_seconds(resources)
    fig = dict(wall_s=round(time.monotonic() - t0, 3), cpu_children_s=round(_cpu()[1] - c0, 3),
               reference_seconds=seconds, load_average_1min=_load(),
               note="once per course and source notebook: cached in ~/.cache/bngrade (per process in memory)")
    shutil.rmtree(course, ignore_errors=True)
    return fig


def jobs_compare(src, base, assignment, n):
    """Part 2: the same class at JOBS=1 and JOBS=2, and where JOBS=2's wall time goes."""
    from bngrade import bench
    from bngrade.autograde import CpuMeter, run

    template = bench.make_class(src, base / "jobs-template", assignment, n)
    meter = CpuMeter()
    runs = {}
    try:
        for jobs in (1, 2):
            d = base / f"jobs{jobs}"
            shutil.copytree(template, d, symlinks=True)
            load0, cpu0, t0, w0 = _load(), meter.seconds(), time.time(), time.monotonic()
            rc, results, _ = run(d, assignment, jobs=jobs, quiet=True)
            wall, end = time.monotonic() - w0, time.time()
            cpu = meter.seconds() - cpu0 if meter.group else None
            rs = [r for r in results.values() if "t_start" in r]
            starts, ends = sorted(r["t_start"] for r in rs), sorted(r["t_end"] for r in rs)
            busy = sum(r["t_end"] - r["t_start"] for r in rs)
            by_pid = defaultdict(list)
            for r in rs:
                by_pid[r["pid"]].append((r["t_start"], r["t_end"]))
            gaps = sum(b[0] - a[1] for spans in by_pid.values() for a, b in zip(sorted(spans), sorted(spans)[1:]))
            runs[jobs] = dict(
                jobs=jobs, wall_s=round(wall, 2), cpu_s_per_student=round(cpu / n, 3) if cpu else None,
                sum_student_s=round(busy, 2), ideal_s=round(busy / jobs, 2),
                serial_start_s=round(starts[0] - t0, 2), idle_between_students_s=round(gaps, 2),
                tail_one_worker_idle_s=round(ends[-1] - (ends[-2] if jobs > 1 and len(ends) > 1 else ends[-1]), 2),
                after_last_student_s=round(end - ends[-1], 2), merge_tail_s=run.last_merge_seconds,
                median_student_s=round(statistics.median(r["seconds"] for r in rs), 3),
                per_student={r["student"]: round(r["t_end"] - r["t_start"], 3) for r in rs},
                rc=rc, load_average_1min_before=load0, load_average_1min_after=_load())
            print(json.dumps({k: v for k, v in runs[jobs].items() if k != "per_student"}), flush=True)
            shutil.rmtree(d, ignore_errors=True)
    finally:
        meter.close()
    one, two = runs[1], runs[2]
    slow = statistics.median(two["per_student"][s] / one["per_student"][s] for s in one["per_student"]
                             if s in two["per_student"])
    return dict(students=n, runs=[one, two], speedup=round(one["wall_s"] / two["wall_s"], 3),
                per_student_slowdown_jobs2_over_jobs1=round(slow, 3),
                jobs2_wall_breakdown_s=dict(
                    ideal_at_jobs1_speed=round(one["sum_student_s"] / 2, 2),
                    per_student_slowdown=round(two["ideal_s"] - one["sum_student_s"] / 2, 2),
                    serial_start=two["serial_start_s"],
                    idle_between_students=round(two["idle_between_students_s"] / 2, 2),
                    tail=two["tail_one_worker_idle_s"], after_last_student=two["after_last_student_s"]))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bngrade.phases", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--course", default="assignments")
    p.add_argument("--assignments", default="bn_forward,bn_backward_fast")
    p.add_argument("--students", type=int, default=4, help="submissions per assignment for the phases")
    p.add_argument("--class-size", type=int, default=8, help="students in the JOBS=1 vs 2 comparison (0: skip)")
    p.add_argument("--out", default="test-artifacts/autograde-phases.json")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    install()
    base = Path(tempfile.mkdtemp(prefix="bngrade-phases-"))
    fig = dict(cores=os.cpu_count(), load_average_at_start=os.getloadavg())
    try:
        fig["once_per_process"] = once_per_process()
        print(json.dumps(fig["once_per_process"], indent=1), flush=True)
        fig["reference_calibration"] = reference_calibration(args.course, base, args.assignments.split(",")[-1])
        print(json.dumps(fig["reference_calibration"]), flush=True)
        fig["per_student"] = [per_student(args.course, base, a, args.students) for a in args.assignments.split(",")]
        out.write_text(json.dumps(fig, indent=1) + "\n")
        if args.class_size:
            fig["jobs1_vs_jobs2"] = jobs_compare(args.course, base, args.assignments.split(",")[0], args.class_size)
    finally:
        fig["load_average_at_end"] = os.getloadavg()
        out.write_text(json.dumps(fig, indent=1) + "\n")
        shutil.rmtree(base, ignore_errors=True)
    print(f"{out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
