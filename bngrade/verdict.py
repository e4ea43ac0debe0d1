"""Grader side: rebuild the inputs, compute bnkit's reference, score, explain.

Runs in the grader's own process (or, for a student at home, in their
kernel through `bngrade.harness`), never trusting the results file beyond
it being data: every field is validated, every array must have exactly the
expected shape, a float dtype and the bytes its shape needs.

Rules, stated once (the notebooks' intros and assignments/README.md repeat them):

* Partial credit: a test cell's points are split equally over its cases
  (visible and hidden); a case scores when every output it checks matches
  bnkit within the tolerance: relative error per channel <= 1e-6 in
  float64, 1e-3 for float32 input (the error of each channel is scaled by
  that channel's largest reference value, so a bug confined to a
  small-scale feature is not hidden by a large one). Shapes must match
  exactly: `(D,)` is not `(1, D)`. The cell's score is rounded to 0.01.
* A case without a valid result (the cell did not run to it, the file is
  missing, malformed or too large, the function raised) scores zero and
  says why. A result for a case the trusted test cell does not list is
  ignored.
* Feedback: one line per case, `PASS` or `FAIL`, its mode and parameters
  (never its seed); hidden cases are marked `(hidden)`. Common porting
  mistakes are recognised from the numbers (CS231n's momentum convention,
  a biased running_var, 'eval' rejected, `(1, D)` shapes, running statistics
  not stored) and get a hint, once per cell.
  When the student's function raised, the line shows the exception and the
  student's own frames, nothing of the grader.
* Hidden cases never reach feedback: once the kernel has been given a test
  cell that lists hidden cases (the whole cell is in the kernel, `In[]` and
  the caller's frames, before its first case runs), nothing the student's
  code produces reaches the feedback as text, for any case, visible or hidden, in
  that cell or a later one: no exception message, warning, frame, repr, shape
  or error value. The line shows the case's mode and shapes (the grader's),
  PASS or FAIL, and a category from a fixed list (the exception's type if a
  built-in or numpy one, "wrong values", "wrong shape", ...), plus the
  grader's fixed hints. Visible cases of test cells that run before any
  hidden case keep their full messages, and so does a student's own run of
  the visible tests at home (no hidden case there).
"""
import base64
import binascii
import builtins
import json
import textwrap
from dataclasses import dataclass, field

import numpy as np

from bngrade.cases import CHECKS, inputs

MAX_RESULT_BYTES = 8 * 2 ** 20
WIDTH = 100  # feedback lines are wrapped to this many characters
_MAX_DIMS = 8


@dataclass
class CellVerdict:
    grade_id: str
    points: float
    score: float
    passed: int
    total: int
    lines: list = field(default_factory=list)


# --------------------------------------------------------------------------
# The reference, and the porting mistakes modelled on it
# --------------------------------------------------------------------------

def reference_funcs(check):
    """bnkit's implementation for a check's roles (imported here: never in the kernel)."""
    from bnkit import fast, norms
    if check.startswith("layernorm"):
        return {"forward": norms.layernorm_forward, "backward": norms.layernorm_backward}
    if check.startswith("spatial"):
        return {"forward": norms.spatial_batchnorm_forward, "backward": norms.spatial_batchnorm_backward}
    return {"forward": fast.batchnorm_forward, "backward": fast.batchnorm_backward}


def _cs231n_momentum(forward):
    """running = momentum * running + (1 - momentum) * batch: bnkit with momentum 1 - m."""
    def wrong(x, gamma, beta, bn_param):
        p = dict(bn_param, momentum=1.0 - bn_param.get("momentum", 0.1))
        out = forward(x, gamma, beta, p)
        bn_param.update(running_mean=p["running_mean"], running_var=p["running_var"])
        return out
    return wrong


def _biased_running_var(forward):
    """running_var updated with the biased batch variance (bnkit's unbiased one times (n - 1) / n)."""
    def wrong(x, gamma, beta, bn_param):
        channels = gamma.size
        n = x.size // channels
        previous = bn_param.get("running_var", np.ones(channels))
        batch = dict(bn_param, momentum=1.0)  # momentum 1: running_var becomes the batch's unbiased variance
        forward(x, gamma, beta, batch)
        out = forward(x, gamma, beta, bn_param)
        m = bn_param.get("momentum", 0.1)
        bn_param["running_var"] = (1 - m) * previous + m * batch["running_var"] * (n - 1) / n
        return out
    return wrong


def _as_training(forward):
    def wrong(x, gamma, beta, bn_param):
        return forward(x, gamma, beta, dict(bn_param, mode="train"))
    return wrong


HINT_MOMENTUM = ("hint: your running statistics follow CS231n's convention, momentum * running + "
                 "(1 - momentum) * batch; here (PyTorch's) it is (1 - momentum) * running + momentum * batch, "
                 "default momentum 0.1.")
HINT_BIASED = ("hint: running_var must be updated with the unbiased batch variance, N / (N - 1) * var "
               "(normalise with the biased one).")
HINT_EVAL_RAISED = "hint: mode 'eval' must work exactly like 'test' (PyTorch calls it eval): accept both."
HINT_EVAL_AS_TRAIN = ("hint: your function treated mode 'eval' as training; 'eval' must work exactly like "
                      "'test': accept both.")
HINT_SHAPE = ("hint: return shape {want}, not {got}: per-feature values are (D,) (e.g. x.mean(axis=0) "
              "without keepdims, or .reshape(-1)).")
HINT_NOT_STORED = ("hint: store the updated running_mean and running_var back into bn_param "
                   "(bn_param['running_mean'] = ...): the caller keeps bn_param between steps.")
HINT_REFERENCE = ("hint: bnkit's and torch's own implementations are not available when your notebook is "
                  "graded: write it yourself with numpy (bnkit.gradcheck is there).")


# --------------------------------------------------------------------------
# Reading the kernel's results
# --------------------------------------------------------------------------

def _clean(text, limit=300):
    """A string from the kernel, as one short printable line."""
    text = str(text).replace("\n", " ").replace("\r", " ")
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text[:limit] + ("..." if len(text) > limit else "")


def parse_results(data, grade_id):
    """Records {(check, seed): record} from a results file's bytes, or raise ValueError(why)."""
    if len(data) > MAX_RESULT_BYTES:
        raise ValueError(f"the results file is too large ({len(data)} bytes, limit {MAX_RESULT_BYTES})")
    try:
        payload = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"the results file is not valid JSON ({_clean(e, 80)})")
    if not isinstance(payload, dict) or payload.get("format") != "bngrade-results/1":
        raise ValueError("the results file is not in bngrade's format")
    if payload.get("grade_id") != grade_id:
        raise ValueError(f"the results file belongs to another test cell, not {grade_id!r}")
    records = {}
    if not isinstance(payload.get("cases"), list):
        raise ValueError("the results file has no list of cases")
    for rec in payload["cases"]:
        if not isinstance(rec, dict):
            continue
        key = (rec.get("check"), rec.get("seed"))
        if isinstance(key[0], str) and type(key[1]) is int and key not in records:
            records[key] = rec
    return records


def _unpack(packed, want_shape):
    """(array, None) from a packed output, or (None, why)."""
    if not isinstance(packed, dict):
        return None, "malformed result"
    if "bad" in packed:
        return None, _clean(packed["bad"], 120)
    try:
        dtype = np.dtype(packed["dtype"])
        shape = tuple(packed["shape"])
        if dtype.kind != "f" or dtype.fields is not None or dtype.itemsize > 16:
            return None, f"got dtype {dtype}, not floats"
        if len(shape) > _MAX_DIMS or not all(type(n) is int and n >= 0 for n in shape):
            return None, "malformed result (shape)"
        if shape != tuple(want_shape):
            return None, _clean(f"shape {shape}", 60) + f", expected exactly {tuple(int(n) for n in want_shape)}"
        raw = base64.b64decode(packed["data"], validate=True)
        if len(raw) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            return None, "malformed result (data does not match its shape)"
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy(), None
    except (KeyError, TypeError, ValueError, binascii.Error):
        return None, "malformed result"


def relative_error(got, want, axis):
    """Largest error, each channel scaled by its largest reference value."""
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    if want64.ndim <= 1:
        scale = np.abs(want64)
    else:
        other = tuple(a for a in range(want64.ndim) if a != axis)
        scale = np.max(np.abs(want64), axis=other, keepdims=True)
    err = np.abs(got64 - want64) / np.maximum(scale, 1e-12)
    return float(np.max(err)) if err.size else 0.0


def compare(outputs, want, tol, axis):
    """[(output name, problem, got array or None)] for every output that differs."""
    problems = []
    for name, w in want.items():
        if w is None:
            continue
        w = np.asarray(w)
        packed = outputs.get(name) if isinstance(outputs, dict) else None
        if packed is None:
            problems.append((name, "not returned", None))
            continue
        got, why = _unpack(packed, w.shape)
        if why:
            problems.append((name, why, _shape_of(packed)))
        elif not np.all(np.isfinite(got.astype(np.float64))):
            problems.append((name, "contains NaN or Inf", got))
        else:
            err = relative_error(got, w, axis)
            if not err <= tol:
                problems.append((name, f"relative error {err:.1e} (tolerance {tol:.0e})", got))
    return problems


def _shape_of(packed):
    try:
        return tuple(int(n) for n in packed["shape"])
    except (KeyError, TypeError, ValueError):
        return None


def _matches(outputs, funcs, check, inp, keys=None):
    """Do the student's outputs (those named in `keys`, or all) match what `funcs` produce?"""
    try:
        want = CHECKS[check].drive(funcs, inp)
    except Exception:
        return False
    want = {k: v for k, v in want.items() if keys is None or k in keys}
    return not compare(outputs, want, CHECKS[check].tol, CHECKS[check].axis)


def _hints(check, inp, rec, problems, test_mode_works=False):
    hints = []
    for name, why, got in problems:
        if isinstance(got, tuple) and why.startswith("shape"):
            want = tuple(int(n) for n in _want_shape(name, check, inp))
            if want and tuple(n for n in got if n != 1) == tuple(n for n in want if n != 1):
                hints.append(HINT_SHAPE.format(want=want, got=got))
                break
    ref = reference_funcs(check)
    outputs = rec.get("outputs", {})
    if "running" in check and any(why.endswith(": None") for _, why, _ in problems):
        hints.append(HINT_NOT_STORED)
    elif "running" in check:
        if _matches(outputs, dict(ref, forward=_cs231n_momentum(ref["forward"])), check, inp):
            hints.append(HINT_MOMENTUM)
        elif _matches(outputs, dict(ref, forward=_biased_running_var(ref["forward"])), check, inp):
            hints.append(HINT_BIASED)
    if "eval" in check and inp["bn_param"]["mode"] == "eval":
        if rec.get("error"):
            message = str(rec["error"].get("message", "")) if isinstance(rec["error"], dict) else ""
            if "eval" in message or test_mode_works:
                hints.append(HINT_EVAL_RAISED)
        elif _matches(outputs, dict(ref, forward=_as_training(ref["forward"])), check, inp, keys=("out",)):
            hints.append(HINT_EVAL_AS_TRAIN)
    return hints


def _want_shape(name, check, inp):
    want = CHECKS[check].drive(reference_funcs(check), inp)
    return np.shape(want.get(name))


# --------------------------------------------------------------------------
# Scoring a test cell
# --------------------------------------------------------------------------

def _wrap(first, rest=()):
    lines = textwrap.wrap(first, WIDTH, subsequent_indent="      ")
    for r in rest:
        lines += textwrap.wrap(r, WIDTH, initial_indent="      ", subsequent_indent="            ")
    return lines


# Exception types whose name the feedback may show for a hidden case: a class the student wrote
# could be named after what it carries.
_KNOWN_ERRORS = frozenset({n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}
                          | {"LinAlgError", "AxisError",  # numpy's; then the names the grader's run gives errors
                             "CellTimeoutError", "NotRun", "DroppedReply", "MalformedReply", "DeadKernelError"})


WITHHELD_HIDDEN = "messages are not shown for hidden cases"
WITHHELD_EXPOSED = ("messages are not shown once the hidden tests are in the kernel; run the visible tests "
                    "in your own notebook to see them")


def _error_lines(error, withheld=None):
    """(what the student's code raised, its frames) for a case's line.

    A case that ran before the kernel held any hidden case shows the
    exception, its message and the student's own frames. Otherwise
    (`withheld` says why) only the exception's type (a built-in or numpy one;
    any other class is named 'an exception of your own'): the message, the
    repr of values and the frames are the student's own strings, computed
    when the kernel could read the hidden cases, and could carry them.
    """
    if not isinstance(error, dict):
        return "your code raised an error", []
    if withheld:
        kind = error.get("type")
        kind = kind if isinstance(kind, str) and kind in _KNOWN_ERRORS else "an exception of your own"
        return f"failed: your code raised {kind}" + (" (not written yet?)" if kind == "NotImplementedError" else "") \
            + f" ({withheld})", []
    kind, message = _clean(error.get("type"), 40), _clean(error.get("message"), 200)
    what = f"your code raised {kind}" + (f": {message}" if message else "")
    if kind == "NotImplementedError":
        what += " (not written yet?)"
    where = error.get("where") if isinstance(error.get("where"), list) else []
    return what, [_clean(w, 140) for w in where[-4:]]


def _hidden_why(why):
    """What went wrong with an output of a hidden case, as a category (no value the student's code chose)."""
    if why == "not returned":
        return "not returned"
    if why.startswith("relative error") or why == "contains NaN or Inf":
        return "wrong values"
    if why.startswith("got dtype") or why.startswith("not an ndarray"):
        return "not an array of floats"
    if "shape" in why:
        return "wrong shape"
    return "not a valid result"


def _case_lines(check, seed, rec, tag, test_mode_works=False, hidden=False, exposed=False):
    """(passed, lines, hints) for one case; the hints are not yet in the lines.

    For a hidden case, and for any case run once the kernel held hidden cases
    (`exposed`), the line holds only the case's mode and shapes, PASS or FAIL
    and a category: nothing the student's code wrote (see _error_lines).
    """
    withheld = WITHHELD_HIDDEN if hidden else WITHHELD_EXPOSED if exposed else None
    inp = inputs(check, seed)
    what = tag + CHECKS[check].describe(inp)
    if rec is None:
        return False, _wrap(f"FAIL  {what}: no result (the test cell did not get to this case)"), []
    if rec.get("error") is not None:
        message, where = _error_lines(rec["error"], withheld)
        hints = _hints(check, inp, rec, [], test_mode_works)
        if isinstance(rec["error"], dict) and rec["error"].get("type") in ("ImportError", "ModuleNotFoundError") \
                and any(m in str(rec["error"].get("message")) for m in ("bnkit", "torch")):
            hints.append(HINT_REFERENCE)
        return False, _wrap(f"FAIL  {what}: {message}", where), hints
    want = CHECKS[check].drive(reference_funcs(check), inp)
    problems = compare(rec.get("outputs"), want, CHECKS[check].tol, CHECKS[check].axis)
    if not problems:
        return True, _wrap(f"PASS  {what}"), []
    name, why, _ = problems[0]
    more = f" ({len(problems) - 1} more outputs differ)" if len(problems) > 1 else ""
    hints = _hints(check, inp, rec, problems)
    if hidden:
        hints = [h for h in hints if not h.startswith(HINT_SHAPE.split("{")[0])]  # it quotes the student's shape
    if withheld:  # (a visible case's shape hint stays: it shows the expected shape with 1s added or removed)
        return False, _wrap(f"FAIL  {what}: failed: {name}: {_hidden_why(why)}{more}"), hints
    warned = rec.get("warnings") if isinstance(rec.get("warnings"), list) else []
    notes = [f"note: your code warned: {_clean(w, 160)}" for w in warned[:1]]
    return False, _wrap(f"FAIL  {what}: {name}: {why}{more}", notes), hints


GATE_FAILED = ("the case at scale did not pass, and this test counts its other cases only when it does: a "
               "backward that does O(N*D) work (numpy, einsum or plain loops) finishes it in seconds; one that "
               "differentiates the forward numerically, or builds an N x N Jacobian, cannot finish in the time "
               "limit")


def score_cell(grade_id, cases, points, data=None, problem=None, visible=None, context=None, exposed=None):
    """Score one test cell from its results file.

    - cases: the trusted list [(check, seed), ...], from the source notebook;
    - points: the cell's points, split equally over the cases (None: no score, lines only);
    - data: the results file's bytes (None: there is none); problem: why it
      could not be read (from the sandbox), if so;
    - visible: the cases the student can see (the others are tagged hidden);
      None means all;
    - a case whose check is a gate (`Check.gate`, the backward at scale):
      when it does not pass, every case of the cell scores zero and the
      lines say why (the grader's cell timeout, measured outside the
      kernel, is what a numerical derivative of the forward runs into);
    - context: a line about why results may be missing (the kernel's own
      error in that cell, a timeout), shown when some are;
    - exposed: had the kernel been given hidden cases when this cell began (this
      cell's own, or an earlier test cell's)? Then no case's line holds text the
      student's code produced (module docstring). None: this cell's own hidden
      cases decide.
    Returns a CellVerdict.
    """
    cases = [(str(c), int(s)) for c, s in cases]
    if exposed is None:
        exposed = visible is not None and any(c not in visible for c in cases)
    lines, records, passed, given = [], {}, 0, set()
    if not cases:
        raise ValueError(f"{grade_id}: the test cell lists no cases")
    unknown = sorted({c for c, _ in cases if c not in CHECKS})
    if unknown:
        raise ValueError(f"{grade_id}: unknown checks {unknown} in the test cell")
    reason = None
    if problem:
        reason = f"the results could not be read: {_clean(problem, 200)}"
    elif data is None:
        reason = "no results were recorded for this test cell"
    else:
        try:
            records = parse_results(data, grade_id)
        except ValueError as e:
            reason = str(e)
    # 'eval' rejected while 'test' works: an eval case in mode 'test' ran without raising
    test_mode_works = any("eval" in c and rec.get("error") is None and inputs(c, s)["bn_param"]["mode"] == "test"
                          for (c, s), rec in records.items() if (c, s) in cases)
    gates_failed = []
    for check, seed in cases:
        tag = "" if visible is None or (check, seed) in visible else "(hidden) "
        if reason:
            lines += _wrap(f"FAIL  {tag}{CHECKS[check].describe(inputs(check, seed))}")
            continue
        ok, case_lines, hints = _case_lines(check, seed, records.get((check, seed)), tag, test_mode_works,
                                            hidden=bool(tag), exposed=exposed)
        passed += ok
        if CHECKS[check].gate and not ok:
            gates_failed.append(check)
        lines += case_lines + [line for h in hints if h not in given for line in _wrap("", [h])]
        given.update(hints)  # each hint once per cell, under the first case that shows it
    if gates_failed and not reason:  # a case at scale did not pass: the other cases do not count (cases.py)
        reason = GATE_FAILED
    if points is None:  # a student's own check: no points to give
        score, points = None, 0.0
        head = f"{grade_id}: {passed} of {len(cases)} cases passed"
    else:
        counted = 0 if gates_failed else passed
        score = min(float(points), round(float(points) * counted / len(cases), 2))
        head = f"{grade_id}: {passed} of {len(cases)} cases passed, {score:g} of {float(points):g} points"
    extra = []
    if reason:
        extra += _wrap(f"Every case scores zero: {reason}.")
    missing = [c for c in cases if c not in records]
    if context and (reason or missing):
        extra += _wrap(context)
    return CellVerdict(grade_id, float(points), score, passed, len(cases), [head] + extra + lines)


# --------------------------------------------------------------------------
# The trusted test cell
# --------------------------------------------------------------------------

@dataclass
class TestCell:
    grade_id: str
    cases: list  # [(check, seed), ...], visible and hidden, in order
    visible: set  # the cases outside the hidden region
    roles: dict  # {role: name of the student's function}, e.g. {"forward": "batchnorm_forward"}


def parse_test_cell(source):
    """The case list of a test cell, read from its (trusted) source, or None if it calls no run_cases.

    Literals only (ast.literal_eval): `cases = [...]`, `cases += [...]`, and
    `run_cases("<grade id>", cases, forward=<name>, ...)`. Statements inside
    `### BEGIN/END HIDDEN TESTS` are the hidden cases.
    """
    import ast
    tree = ast.parse(source)
    lines = source.split("\n")
    hidden, inside = set(), False
    for number, line in enumerate(lines, start=1):
        if "### BEGIN HIDDEN TESTS" in line:
            inside = True
        elif "### END HIDDEN TESTS" in line:
            inside = False
        elif inside:
            hidden.add(number)
    cases, visible, call = [], set(), None
    for node in tree.body:
        value = None
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["cases"]:
            cases, value = [], node.value
        elif isinstance(node, ast.AugAssign) and getattr(node.target, "id", None) == "cases":
            value = node.value
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) \
                and getattr(node.value.func, "id", None) == "run_cases":
            call = node.value
        if value is not None:
            new = [(str(c), int(s)) for c, s in ast.literal_eval(value)]
            cases += new
            if node.lineno not in hidden:
                visible.update(new)
    if call is None:
        return None
    grade_id = ast.literal_eval(call.args[0])
    roles = {k.arg: k.value.id for k in call.keywords if isinstance(k.value, ast.Name)}
    return TestCell(grade_id, cases, visible, roles)
