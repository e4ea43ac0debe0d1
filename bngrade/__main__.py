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

The same command line as `python -m bngrade.autograde` (one parser,
`bngrade.autograde.parser`): `run`, `one` and `bench` work here too, and
`make autograde` is `run`, on this machine's cores or on a Dask cluster.
"""
import sys

from bngrade.autograde import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m bngrade", description=__doc__))
