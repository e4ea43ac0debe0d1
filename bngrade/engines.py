"""Where the per-student units run: this machine's cores, or a Dask cluster.

An engine takes the students still to grade and yields `(student, result)`
as each one finishes, in any order; `result` is the dict of result.json,
already stored under `results/<student>/<assignment>/`, or None when the
engine itself failed for that student (a worker lost three times, an
exception outside nbgrader): that student has no result and the next run
grades it again. Student code never runs in the engine's process: every unit
runs nbgrader, whose kernels run in bubblewrap.

- `local`: a pool of forked processes (nbgrader, bnkit and the course config
  are imported once, before the fork); each calls `autograde.grade_one` on
  the course directory. A worker that dies (killed, out of memory) breaks
  the pool: a fresh pool takes the students that were in flight.
- `dask`: `distributed.Client(scheduler)`; the assignment pack is scattered
  to every worker once, each task gets one submission pack and returns one
  result pack (`bngrade.unit`). Dask retries the task of a worker that died
  on another worker (its `allowed_failures`, 3 by default).
"""
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path


class Progress:
    """tqdm bar: done / running / failed and the ETA, the same for every engine."""

    def __init__(self, total, desc, already=0, quiet=False):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=already, desc=desc, unit="student", disable=quiet, dynamic_ncols=True,
                        smoothing=0.1)
        self.failed = 0
        self.running = 0
        self._show()

    def _show(self):
        self.bar.set_postfix_str(f"done={self.bar.n - self.failed} running={self.running} failed={self.failed}",
                                 refresh=True)

    def set_running(self, n):
        if n != self.running:
            self.running = n
            self._show()

    def finished(self, line, failed=False):
        self.failed += bool(failed)
        if line:
            self.bar.write(line)
        self.bar.update()
        self._show()

    def close(self):
        self.bar.close()


# ---------------------------------------------------------------------- local
def _init_worker():
    from bngrade.unit import die_with_parent

    die_with_parent()  # a grader killed abruptly takes its workers (and their sandboxes) with it


def _local_task(course, assignment, student, results, gradebook):
    from bngrade.autograde import grade_one

    return grade_one(course, assignment, student, results, gradebook)


def local(course, assignment, students, results, jobs, progress, gradebook=None):
    pending = list(students)
    lost = {}
    while pending:
        with ProcessPoolExecutor(jobs, mp_context=get_context("fork"), initializer=_init_worker) as pool:
            futures = {pool.submit(_local_task, str(course), assignment, s, str(results), gradebook): s
                       for s in pending}
            pending = []
            running = set(futures)
            try:
                while running:
                    progress.set_running(min(jobs, len(running)))
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for f in done:
                        student = futures[f]
                        try:
                            yield student, f.result()
                        except BrokenProcessPool:
                            raise
                        except Exception as e:  # outside nbgrader: this student has no result
                            yield student, dict(student=student, ok=False, engine_error=f"{type(e).__name__}: {e}")
            except BrokenProcessPool:
                # a worker died: every unfinished student of this pool goes to a fresh one (twice at most)
                for f, student in futures.items():
                    if not f.done() or isinstance(f.exception(), BrokenProcessPool):
                        lost[student] = lost.get(student, 0) + 1
                        if lost[student] <= 2:
                            pending.append(student)
                        else:
                            yield student, dict(student=student, ok=False, engine_error="its worker died 3 times")
                pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------- dask
def _dask_task(assignment_pack, submission_pack, assignment, student):
    from bngrade.unit import grade_pack

    return grade_pack(assignment_pack, submission_pack, assignment, student)


def dask(course, assignment, students, results, scheduler, progress, digests=None, client=None):
    """Grade on a Dask cluster (`scheduler`: its address, or pass a connected `client`)."""
    from distributed import Client, as_completed

    from bngrade.unit import pack_assignment, pack_submission, store_result

    own = client is None
    client = client or Client(scheduler, timeout="60s")
    try:
        pack = client.scatter(pack_assignment(course, assignment), broadcast=True, hash=False)
        futures = {}
        for s in students:
            # pure=False: a retried run must grade again, not reuse a cached result of the same inputs
            f = client.submit(_dask_task, pack, pack_submission(course, assignment, s), assignment, s,
                              key=f"bngrade-{assignment}-{s}-{os.urandom(4).hex()}", pure=False, retries=1)
            futures[f] = s
        left = set(futures)
        for f in as_completed(futures):
            left.discard(f)
            student = futures[f]
            progress.set_running(min(len(left), sum(client.nthreads().values()) or 1))
            try:
                data = f.result()
                yield student, store_result(data, results, assignment, student, (digests or {}).get(student))
            except Exception as e:
                yield student, dict(student=student, ok=False, engine_error=f"{type(e).__name__}: {e}")
            finally:
                f.release()
    finally:
        if own:
            client.close()


ENGINES = ("local", "dask")


def results_dir(course, assignment, keep=None):
    """Where a run keeps its per-student results (kept between runs: that is what makes a run resumable)."""
    return Path(keep).resolve() if keep else Path(course).resolve() / ".bngrade-results"
