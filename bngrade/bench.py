"""Cost as the class grows: grade synthetic classes of 100, 300, 1000 students on this machine.

    python -m bngrade.bench [A] --sizes 100,300 --jobs 2 --out test-artifacts/bench-class.json
    (make bench-autograde SIZES=100,300)

A class is made from the catalogue's variants of assignment A, cycled in a
fixed mix: correct (the source solution and the correct variants), buggy,
damaged (cells deleted, retyped, metadata stripped, invalid JSON) and a few
hostile ones (2 in 100). For every size it records the wall time, the median
and p95 seconds per submission (one unit: scratch copy, nbgrader, sandbox,
verdict), the merge time per student in the order the students were merged
(does the SQLite gradebook slow down as it grows? the first and last tenth
are compared), and peak memory (the grader workers' and this process's).
The figures go to a JSON file and a plot (time against class size) beside it.
"""
import argparse
import json
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

DAMAGED = ("deleted_test_cell", "retyped_test_cell", "edited_test_cell", "metadata_stripped", "invalid_json",
           "duplicated_cell_last_correct")
HOSTILE = ("hostile_kill_parent", "hostile_gradebook_rewrite")


def class_mix(assignment):
    """The variants a synthetic class cycles through (None: the source solution)."""
    import catalogue

    mine = [v for v in catalogue.VARIANTS if v.assignment == assignment]
    correct = [None] + [v for v in mine if v.kind == "correct"]
    buggy = [v for v in mine if v.kind == "buggy"]
    damaged = [v for v in mine if v.name in DAMAGED]
    hostile = [v for v in mine if v.name in HOSTILE]
    mix = []
    for i in range(100):  # per 100 students: 45 correct, 35 buggy, 18 damaged, 2 hostile
        pool = correct if i < 45 else buggy if i < 80 else damaged if i < 98 else hostile
        pool = pool or correct  # an assignment without such variants: the correct ones take their place
        mix.append(pool[i % len(pool)])
    return mix


def make_class(src, dest, assignment, n):
    sys.path.insert(0, str(Path(src).resolve()))
    import course as course_mod

    d = course_mod.copy_course(dest)
    rc, log = course_mod.nbgrader(d, "generate_assignment", assignment, "--force", quiet=True)
    if rc:
        raise SystemExit(log)
    mix, made = class_mix(assignment), {}
    notebooks = {}
    for i in range(n):
        v = mix[(i * 37) % len(mix)]  # spread the kinds over the class
        key = v.name if v is not None else None
        if key not in made:
            made[key] = course_mod.submission(d, assignment, v)
        notebooks[f"s{i:04d}"] = made[key]
    course_mod.place(d, assignment, notebooks)
    return d


MERGE_LINE = re.compile(r"\[bngrade merge\] (\S+): (rows copied|replayed)[^(]*\(([\d.]+) ms\)")


def grade_class(src, base, assignment, n, jobs):
    from bngrade.autograde import run

    d = make_class(src, base / f"class{n}", assignment, n)
    load0 = [round(x, 2) for x in os.getloadavg()]
    print(f"class of {n}: grading with {jobs} workers (load average {load0[0]})", flush=True)
    t0 = time.monotonic()
    rc, results, log = run(d, assignment, jobs=jobs, quiet=False)
    wall = time.monotonic() - t0
    per = sorted(r["seconds"] for r in results.values() if "seconds" in r)
    merges = [(m.group(1), m.group(2), float(m.group(3))) for m in MERGE_LINE.finditer(log)]
    ms = [x for _, _, x in merges]
    tenth = max(1, len(ms) // 10)
    db = d / "gradebook.db"
    fig = dict(
        students=n, jobs=jobs, wall_seconds=round(wall, 1), seconds_per_student_wall=round(wall / n, 3),
        graded_ok=sum(bool(r.get("ok")) for r in results.values()),
        failed=sorted(s for s, r in results.items() if not r.get("ok")),
        median_seconds_per_submission=round(statistics.median(per), 3),
        p95_seconds_per_submission=round(per[min(len(per) - 1, int(0.95 * len(per)))], 3),
        merge_ms_per_student_median=round(statistics.median(ms), 2) if ms else None,
        merge_ms_first_tenth=round(statistics.mean(ms[:tenth]), 2) if ms else None,
        merge_ms_last_tenth=round(statistics.mean(ms[-tenth:]), 2) if ms else None,
        merged_by_copy=sum(1 for _, how, _ in merges if how == "rows copied"),
        merged_by_replay=sum(1 for _, how, _ in merges if how == "replayed"),
        merge_tail_seconds=run.last_merge_seconds,
        gradebook_mib=round(db.stat().st_size / 2**20, 2),
        worker_peak_rss_mib=round(max(r.get("grader_maxrss_kib", 0) for r in results.values()) / 1024, 1),
        main_peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        load_average_at_start=load0, load_average_at_end=[round(x, 2) for x in os.getloadavg()])
    shutil.rmtree(d, ignore_errors=True)
    return fig


def plot(figures, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = figures["runs"]
    n = [r["students"] for r in runs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(n, [r["wall_seconds"] for r in runs], "o-", label="wall time of the run")
    a.set_xlabel("students")
    a.set_ylabel("seconds")
    a.set_title(f"grading a class, {runs[0]['jobs']} workers")
    a.legend()
    b.plot(n, [r["median_seconds_per_submission"] for r in runs], "o-", label="median per submission")
    b.plot(n, [r["p95_seconds_per_submission"] for r in runs], "s--", label="p95 per submission")
    b.plot(n, [(r["merge_ms_per_student_median"] or 0) / 1000 for r in runs], "^-", label="merge per student")
    b.set_xlabel("students")
    b.set_ylabel("seconds")
    b.set_yscale("log")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bngrade.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("assignment", nargs="?", default="bn_forward")
    p.add_argument("--course", default="assignments", help="the course whose catalogue and sources are used")
    p.add_argument("--sizes", default="100,300,1000")
    p.add_argument("--jobs", type=int, default=0)
    p.add_argument("--out", default="test-artifacts/bench-class.json")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    jobs = args.jobs or os.cpu_count() or 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="bngrade-class-bench-"))
    figures = dict(assignment=args.assignment, cores=os.cpu_count(), jobs=jobs, runs=[])
    from bngrade.autograde import _preload

    _preload()  # imported once, before the first class is timed
    try:
        for n in sizes:
            figures["runs"].append(grade_class(args.course, base, args.assignment, n, jobs))
            print(json.dumps(figures["runs"][-1]), flush=True)
            out.write_text(json.dumps(figures, indent=1) + "\n")  # what is measured so far survives a stop
            plot(figures, out.with_suffix(".png"))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
