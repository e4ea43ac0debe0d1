"""The numpy implementations timed in fresh Python processes: one that
never imports torch (the process a student's notebook or the book's numpy
cells run in) and one that imports torch first, as a reader's process that
also uses PyTorch does.

Why fresh processes: what a process has imported and allocated before
changes where numpy's arrays land in memory and whether their pages are
already mapped, and that changes their speed (chapter 9 tells the story of
`bnkit.fast` and 4K aliasing). The benchmark's own process has imported
torch and allocated large arrays (the copy bandwidth), a state no reader's
process is in; two fresh processes that differ only in ``import torch``
isolate that one difference. `driver.run` reports both side by side (the
rows' ``process`` field).

`measure_in_fresh_process` starts ``python -m bnkit.bench.numpy_process``,
hands it the cases as JSON on stdin and reads the rows back from stdout
(progress goes to stderr, as everywhere in the benchmark). Each row carries
a SHA-256 digest of its output, so the parent can check that the child
computed exactly what it computes itself.
"""
import hashlib
import json
import subprocess
import sys
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

NUMPY_ONLY = "numpy-only"  # the rows' `process` field: a fresh process that never imports torch
TORCH_IMPORTED = "torch-imported"  # a fresh process that imports torch before it measures


def digest(a) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype}{a.shape}".encode() + a.tobytes()).hexdigest()


def measure_in_fresh_process(cases: Sequence[Tuple[str, Tuple[int, ...], str, str]], quick: bool,
                             repeat: Optional[int], process: str = NUMPY_ONLY
                             ) -> Dict[Tuple[str, str, str, str], Dict]:
    """Time each (layout, shape, dtype, impl) of the numpy implementations in
    a new interpreter, of kind `process` (NUMPY_ONLY or TORCH_IMPORTED);
    {(layout, 'NxM', dtype, impl): {'rows': [...], 'digests': [...]}}.
    Raises RuntimeError if the child fails, or did (or did not) import torch
    against its kind."""
    if process not in (NUMPY_ONLY, TORCH_IMPORTED):
        raise ValueError(f"process must be {NUMPY_ONLY!r} or {TORCH_IMPORTED!r}, not {process!r}")
    request = dict(cases=[[lay, list(shape), dt, impl] for lay, shape, dt, impl in cases], quick=quick,
                   repeat=repeat, process=process)
    proc = subprocess.run([sys.executable, "-m", "bnkit.bench.numpy_process"], input=json.dumps(request),
                          stdout=subprocess.PIPE, stderr=None, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the numpy-only process failed (exit {proc.returncode})")
    answer = json.loads(proc.stdout)
    if answer["torch_imported"] != (process == TORCH_IMPORTED):
        did = "imported" if answer["torch_imported"] else "did not import"
        raise RuntimeError(f"the {process} process {did} torch")
    return {tuple(k.split("|")): v for k, v in answer["results"].items()}


def main() -> int:
    from .driver import measure_numpy  # the same measurement code as the parent's
    from .timing import log

    request = json.loads(sys.stdin.read())
    if request["process"] == TORCH_IMPORTED:
        import torch  # noqa: F401  (the one difference between the two kinds of process)
    groups = {}  # (layout, shape, dtype) -> implementations, timed side by side
    for layout, shape, dtype, impl in request["cases"]:
        groups.setdefault((layout, tuple(shape), dtype), []).append(impl)
    results = {}
    for k, ((layout, shape, dtype), impls) in enumerate(groups.items(), 1):
        measured = measure_numpy(impls, layout, shape, dtype, request["quick"], request["repeat"])
        for impl, res in measured.items():
            for r in res["rows"]:
                r["process"] = request["process"]
                log(f"[{request['process']} {k}/{len(groups)}] {layout:4} {'x'.join(map(str, shape)):>16} "
                    f"{dtype:8} {impl:13} {r['pass']}: {r['median_ms']:9.3f} ms")
            key = "|".join([layout, "x".join(map(str, shape)), dtype, impl])
            results[key] = dict(rows=res["rows"], digests=[digest(o) for o in res["outputs"]])
    json.dump(dict(results=results, torch_imported="torch" in sys.modules), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
