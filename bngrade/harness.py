"""Kernel side: the only module the notebooks' test cells import.

`run_cases(grade_id, cases, **funcs)` calls the student's functions (roles:
`forward`, `backward`) on the seeded inputs of each case `(check, seed)` and
records what they returned. It decides nothing:

* While grading (`BNGRADE_RESULTS` names a directory, set by the sandbox),
  it writes the raw results to `$BNGRADE_RESULTS/<grade_id>.json`, rewritten
  after every case so that a notebook cut short keeps the cases it finished.
  The grader process reads that file after the kernel is gone
  (`bngrade.preprocessors.ScoreOutsideKernel`) and decides the score there.
* In a student's own Jupyter (no `BNGRADE_RESULTS`), it computes the verdict
  on the spot with `bngrade.verdict` (which needs bnkit installed) and
  prints it, so the visible tests answer at home.

Imports numpy and `bngrade.cases` only, never bnkit: inside the sandbox
bnkit's reference is not there. The file format (plain JSON):

    {"format": "bngrade-results/1", "grade_id": str, "cases": [
        {"check": str, "seed": int,
         "outputs": {name: {"dtype": "<f8", "shape": [..], "data": base64} or {"bad": why}},
         "error": null or {"type": str, "message": str, "where": [str, ...]},
         "warnings": [str, ...]}]}

Only exact `numpy.ndarray`s of floats are recorded as data (their bytes);
anything else becomes `{"bad": "not an ndarray of floats: <type>"}`. The
grader validates every field again: this module runs under the student's
control, so nothing it writes is trusted beyond being data.
"""
import base64
import json
import os
import re
import sys
import sysconfig
import traceback
import types
import warnings

import numpy as np

from bngrade.cases import CHECKS

FORMAT = "bngrade-results/1"
RESULTS_ENV = "BNGRADE_RESULTS"
GRADE_ID = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_HERE = os.path.dirname(os.path.abspath(__file__)) + os.sep
# numpy's and the standard library's own directories too: in the sandbox, numpy lives outside site-packages
_LIBRARY_DIRS = tuple(os.path.abspath(p) + os.sep for p in
                      {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
                      | {os.path.dirname(os.path.dirname(np.__file__)), os.path.dirname(os.__file__)})
_ndarray = np.ndarray  # bound now: a later patch of numpy in the kernel changes nothing here


def pack(value):
    """A returned value as plain data: the raw bytes of a float ndarray, or why not."""
    if type(value) is not _ndarray:  # exact type: no subclass with a friendly __eq__
        kind = "None" if value is None else f"{type(value).__module__}.{type(value).__qualname__}"
        return {"bad": f"not an ndarray of floats: {kind}"}
    if value.dtype.kind != "f" or value.dtype.fields is not None:
        return {"bad": f"not an ndarray of floats: an array of dtype {value.dtype}"}
    data = _ndarray.tobytes(value, order="C")
    return {"dtype": value.dtype.str, "shape": list(value.shape), "data": base64.b64encode(data).decode()}


def _own_frames(tb):
    """The student's frames of a traceback: not this package, numpy or the standard library."""
    frames = []
    for f in traceback.extract_tb(tb):
        path = os.path.abspath(f.filename) if not f.filename.startswith("<") else f.filename
        if path.startswith(_HERE) or path.startswith(_LIBRARY_DIRS):
            continue
        line = (f.line or "").strip()
        frames.append(f"line {f.lineno}, in {f.name}" + (f": {line[:100]}" if line else ""))
    return frames[-4:]


def _error(e):
    """The record of an exception the student's code raised. The grader shows the message and frames
    for visible cases only (bngrade.verdict._error_lines); here it is only made safe to record: a
    __str__ that raises, or returns something huge, does not stop the test cell."""
    try:
        message = str(e)[:300]
    except Exception:  # a broken __str__ is the student's own: record that it broke
        message = "(the exception's message could not be read)"
    try:
        where = _own_frames(e.__traceback__)
    except Exception:
        where = []
    return {"type": type(e).__name__[:100], "message": message, "where": where}


def _run_one(check, seed, funcs):
    record = {"check": check, "seed": seed, "outputs": {}, "error": None, "warnings": []}
    with warnings.catch_warnings(record=True) as caught:  # a warning is not a failure
        warnings.simplefilter("always")
        try:
            inputs = CHECKS[check].make(np.random.RandomState(seed))
            raw = CHECKS[check].drive(funcs, inputs)
            record["outputs"] = {name: pack(value) for name, value in raw.items()}
        except Exception as e:  # the student's code raised: record it, go on with the next case
            record["error"] = _error(e)
    record["warnings"] = sorted({str(w.message)[:200] for w in caught})[:3]
    return record


def _write(path, payload):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


def run_cases(grade_id, cases, **funcs):
    """Run `cases` [(check, seed), ...] on the student's `funcs` (forward=..., backward=...).

    Records the raw results for the grader, or (outside grading) prints the
    verdict. Returns None: what this prints never decides a score.
    """
    if not (isinstance(grade_id, str) and GRADE_ID.fullmatch(grade_id)):
        raise ValueError(f"run_cases: grade_id must be a plain name, got {grade_id!r}")
    cases = [(str(c), int(s)) for c, s in cases]
    results_dir = os.environ.get(RESULTS_ENV)
    payload = {"format": FORMAT, "grade_id": grade_id, "cases": []}
    path = os.path.join(results_dir, grade_id + ".json") if results_dir else None
    for check, seed in cases:
        payload["cases"].append(_run_one(check, seed, funcs))
        if path:
            _write(path, payload)
    if path:
        print(f"{len(cases)} cases run; the grader scores them after the notebook has finished.")
        return None
    _print_local_verdict(grade_id, cases, payload, funcs)
    return None


def _references_used(funcs):
    """Names of bnkit's or torch's code a student's function reaches through its globals."""
    found = set()

    def visit(value, seen):
        if isinstance(value, types.ModuleType):
            name = value.__name__
        elif isinstance(value, (types.FunctionType, type)):
            name = getattr(value, "__module__", "") or ""
        else:
            return
        if (name.startswith("bnkit") and name not in ("bnkit", "bnkit.gradcheck")) or name.split(".")[0] == "torch":
            found.add(name)
        elif isinstance(value, types.FunctionType) and value not in seen:
            seen.add(value)
            for code in _codes(value.__code__):
                for n in code.co_names:
                    visit(value.__globals__.get(n), seen)
            for cell in value.__closure__ or ():
                try:
                    visit(cell.cell_contents, seen)
                except ValueError:  # an empty cell
                    pass
    for f in funcs.values():
        visit(f, set())
    return sorted(found)


def _codes(code):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _print_local_verdict(grade_id, cases, payload, funcs):
    for name in _references_used(funcs):
        print(f"note: your code uses {name}, bnkit's (or torch's) own implementation. It is not there when "
              "your notebook is graded, so these tests would score zero: write it yourself with numpy.")
    try:
        from bngrade import verdict
    except ImportError as e:  # bnkit (the reference) is not installed here
        print(f"Cannot check the results here ({e}); see the student quick-start in assignments/README.md.",
              file=sys.stderr)
        return
    data = json.dumps(payload).encode()
    result = verdict.score_cell(grade_id, cases, points=None, data=data)
    print("\n".join(result.lines))
