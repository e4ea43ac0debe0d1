"""python -m bngrade: the grader's commands for batch runners (array jobs).

    manifest A --course DIR --out JOBDIR
        pack the assignment and every submission for an array job:
        JOBDIR/manifest.json (index i grades students[i]), the packs, JOBDIR/results/
    unit --manifest JOBDIR/manifest.json --index I
        grade the student at index I (Slurm: $SLURM_ARRAY_TASK_ID; a Kubernetes
        Indexed Job: $JOB_COMPLETION_INDEX; default: whichever is set). Needs only
        the project installed and bubblewrap; a student already graded is skipped
    merge --manifest JOBDIR/manifest.json [--course DIR]
        bring JOBDIR/results into the course's gradebook (one writer, nbgrader), then print the grades

`make autograde` (python -m bngrade.autograde run) is the same unit on this
machine's cores or on a Dask cluster.
"""
import argparse
import json
import os
import sys
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bngrade", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("manifest")
    m.add_argument("assignment")
    m.add_argument("--course", default="assignments")
    m.add_argument("--out", required=True)
    u = sub.add_parser("unit")
    u.add_argument("--manifest", required=True)
    u.add_argument("--index", type=int, default=None)
    g = sub.add_parser("merge")
    g.add_argument("--manifest", required=True)
    g.add_argument("--course", default="", help="default: the course the manifest was made from")
    args = p.parse_args(argv)

    from bngrade import unit

    if args.cmd == "manifest":
        path = unit.write_manifest(args.course, args.assignment, args.out)
        n = len(json.loads(path.read_text())["students"])
        print(f"{path}: {n} students, indexes 0..{n - 1} (e.g. sbatch --array=0-{n - 1})")
        return 0
    if args.cmd == "unit":
        index = args.index
        if index is None:
            found = os.environ.get("SLURM_ARRAY_TASK_ID") or os.environ.get("JOB_COMPLETION_INDEX")
            if found is None:
                raise SystemExit("--index, SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX is needed")
            index = int(found)
        return unit.unit_task(args.manifest, index)
    if args.cmd == "merge":
        from bngrade.autograde import merge_results

        manifest = Path(args.manifest).resolve()
        mf = json.loads(manifest.read_text())
        return merge_results(args.course or mf["course"], mf["assignment"], manifest.parent / mf["results"])
    return 2


if __name__ == "__main__":
    sys.exit(main())
