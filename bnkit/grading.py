"""Grading helpers for the bnkit nbgrader course (`assignments/`).

Two halves, because student code and the tests share one kernel:

* In the student's kernel (the locked setup cell and the test cells):
  `lockdown()` takes the reference implementations (bnkit's own batch norm,
  torch, jax, tensorflow) out of reach before any student code runs, and
  `grade(cases, **funcs)` calls the student's functions on seeded inputs,
  watching every Python call they make (a call into bnkit's or torch's code
  is an integrity failure, as is a call to a function named in `forbid`).
  The returned values must be plain `numpy.ndarray`s of floats; they are
  copied out as raw bytes.
* In a clean subprocess (`python -I`, nothing the student patched): the
  same inputs are rebuilt from the seed, the reference is computed with
  bnkit, and the verdict is taken there. So patching `np.allclose`, bnkit's
  helpers or returning objects whose `__eq__` is always True changes nothing.

A case is `(check, seed)`. Each check (see `CHECKS`) states one capability,
builds its inputs from the seed, drives the student's functions and the
reference the same way, and compares named outputs with exact shapes, per
channel relative error <= 1e-6 in float64 (1e-3 for float32 inputs).

Residual risk, as with any nbgrader course: student code runs in the same
process as the test cells, so a determined student could patch this module
or IPython itself. Autograde in a container; `assignments/nbgrader_config.py`
also scans submissions for such tampering.
"""
import base64
import importlib.util
import json
import os
import subprocess
import sys
import types
import warnings

import numpy as np

# --------------------------------------------------------------------------
# The kernel side: lockdown
# --------------------------------------------------------------------------

# Everything in bnkit but the grader and the gradient checker, and the
# frameworks that ship a batch norm.
ALLOWED_BNKIT_MODULES = ("bnkit.grading", "bnkit.gradcheck")
BLOCKED_FRAMEWORKS = ("torch", "triton", "jax", "tensorflow")
_BNKIT_DIR = os.path.dirname(os.path.abspath(__file__))
_ALLOWED_BNKIT_FILES = {os.path.join(_BNKIT_DIR, f) for f in ("grading.py", "gradcheck.py", "__init__.py")}


def _package_dirs(names):
    """Where the installed frameworks live (found without importing them)."""
    dirs = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        for d in (spec.submodule_search_locations or []) if spec else []:
            dirs.append(os.path.abspath(d) + os.sep)
    return tuple(dirs)


_FOREIGN_DIRS = _package_dirs(BLOCKED_FRAMEWORKS)
# Another process could run the reference out of reach of the blocker.
_STDLIB = os.path.dirname(os.path.abspath(subprocess.__file__)) + os.sep
_PROCESS_CODE = tuple(_STDLIB + p for p in ("subprocess.py", "multiprocessing" + os.sep, "pty.py",
                                           os.path.join("concurrent", "futures", "process.py")))
_PROCESS_BUILTINS = {"system", "fork", "forkpty", "execv", "execve", "posix_spawn", "posix_spawnp",
                     "spawnv", "spawnve", "startfile"}
# bound now, so a student's later patch of `subprocess` or `sys` is not used
_run, _executable, _setprofile, _getprofile = subprocess.run, sys.executable, sys.setprofile, sys.getprofile
_ndarray = np.ndarray


def _is_blocked(name):
    if name.startswith("bnkit."):
        return name not in ALLOWED_BNKIT_MODULES
    return any(name == b or name.startswith(b + ".") for b in BLOCKED_FRAMEWORKS)


class _BlockReferences:
    """A meta-path finder that refuses to import the reference implementations."""

    def find_spec(self, name, path=None, target=None):
        if _is_blocked(name):
            raise ImportError(
                f"{name} is not available in this assignment: write batch norm yourself "
                "(numpy only). bnkit.gradcheck (numerical_gradient, rel_error) is allowed."
            )
        return None


def lockdown():
    """Block bnkit's and torch's implementations in this kernel.

    Call once, in the locked setup cell, before any student code runs.
    """
    for name in list(sys.modules):
        if _is_blocked(name):
            del sys.modules[name]
    bnkit = sys.modules.get("bnkit")
    if bnkit is not None:  # the package namespace holds the modules (and BatchNorm) too
        for attr, value in list(vars(bnkit).items()):
            if attr == "BatchNorm" or (isinstance(value, types.ModuleType) and _is_blocked(value.__name__)):
                del vars(bnkit)[attr]
    if not any(isinstance(f, _BlockReferences) for f in sys.meta_path):
        sys.meta_path.insert(0, _BlockReferences())


def _forbidden_file(filename):
    filename = os.path.abspath(filename) if filename and not filename.startswith("<") else filename or ""
    if filename.startswith(_BNKIT_DIR + os.sep):
        return filename not in _ALLOWED_BNKIT_FILES
    return filename.startswith(_FOREIGN_DIRS)


def _code_key(code):
    return (code.co_code, code.co_consts, code.co_names)


class IntegrityError(AssertionError):
    """The submission used a reference implementation or tampered with the grader."""


class _Watch:
    """Profile every Python call while the student's functions run."""

    def __init__(self, forbid):
        self.forbid = {_code_key(f.__code__): f.__name__ for f in forbid}
        self.problems = []

    def __call__(self, frame, event, arg):
        if event == "c_call" and getattr(arg, "__module__", "") in ("posix", "nt", "os") \
                and getattr(arg, "__name__", "") in _PROCESS_BUILTINS:
            self.problems.append(f"starts another process (os.{arg.__name__}) while being graded")
        if event != "call":
            return
        code = frame.f_code
        if code.co_filename.startswith(_PROCESS_CODE):
            self.problems.append(f"starts another process ({os.path.basename(code.co_filename)}) while being graded")
        elif _forbidden_file(code.co_filename):
            self.problems.append(
                f"calls {code.co_name} from {os.path.basename(code.co_filename)}, "
                "a reference implementation (bnkit/torch); write it yourself")
        elif _code_key(code) in self.forbid:
            self.problems.append(f"calls {self.forbid[_code_key(code)]}, which this part must not use")


def _check_student_function(name, f, forbid):
    if not isinstance(f, types.FunctionType):
        raise IntegrityError(f"{name} must be a function you define in this notebook, got {type(f).__name__}")
    if _forbidden_file(f.__code__.co_filename):
        raise IntegrityError(f"{name} is bnkit's or torch's implementation, not yours")
    for g in forbid:
        if _code_key(f.__code__) == _code_key(g.__code__):
            raise IntegrityError(f"{name} is the same code as {g.__name__}, which it must not reuse")


def _pack(value):
    """A student's return value as plain data: raw bytes of a float ndarray."""
    if type(value) is not _ndarray:  # exact type: no subclasses with a friendly __eq__
        return {"bad": f"a {type(value).__module__}.{type(value).__qualname__}, not a numpy.ndarray"}
    if value.dtype.kind != "f" or value.dtype.fields is not None:
        return {"bad": f"an array of dtype {value.dtype}, not floats"}
    data = _ndarray.tobytes(value, order="C")
    return {"dtype": value.dtype.str, "shape": list(value.shape), "data": base64.b64encode(data).decode()}


def _unpack(p):
    return np.frombuffer(base64.b64decode(p["data"]), dtype=np.dtype(p["dtype"])).reshape(p["shape"]).copy()


def grade(cases, forbid=(), **funcs):
    """Run `cases` [(check, seed), ...] against the student's `funcs`.

    Prints what passed; raises AssertionError (nbgrader then gives this
    cell zero points) listing what failed. The verdict is computed in a
    clean subprocess from the raw returned arrays.
    """
    cases = tuple(cases)  # a copy: the student's code cannot shorten the list while it runs
    forbid = [f for f in forbid if isinstance(f, types.FunctionType)]
    for name, f in funcs.items():
        _check_student_function(name, f, forbid)
    records = []
    for check, seed in cases:
        inputs = CHECKS[check].make(np.random.RandomState(seed))
        watch = _Watch(forbid)
        previous = _getprofile()
        _setprofile(watch)
        try:
            with warnings.catch_warnings(record=True) as caught:  # a warning is not a failure
                warnings.simplefilter("always")
                raw = CHECKS[check].drive(funcs, inputs)
            error = None
        except Exception as e:  # the student's code raised: report it, do not crash the run
            raw, error = {}, f"{type(e).__name__}: {e}"
        finally:
            tampered = _getprofile() is not watch
            _setprofile(previous)
        if tampered:
            watch.problems.append("changed the profiler while being graded")
        if watch.problems:  # the first is the outermost call: the one the student wrote
            raise IntegrityError("Integrity: your code " + watch.problems[0])
        for message in sorted({str(w.message) for w in caught})[:3]:
            print(f"note: your code warned: {message}")
        packed = {k: _pack(v) for k, v in raw.items()}
        records.append({"check": check, "seed": seed, "error": error, "outputs": packed})
    if not cases or len(records) != len(cases):
        raise IntegrityError("the grader's list of cases was changed while grading")
    verdict = _ask_clean_process(records)
    for line in verdict["lines"]:
        print(line)
    if not verdict["ok"]:
        failed = sum(line.startswith("FAIL") for line in verdict["lines"])
        raise AssertionError(f"{failed} of {len(records)} checks failed (see above)")


def _ask_clean_process(records):
    proc = _run([_executable, "-I", "-c", "import bnkit.grading as g; g.verdict_main()"],
                input=json.dumps(records), capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError("the grader's verdict process failed:\n" + proc.stderr[-2000:])
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------
# Inputs: seeded, with features whose means and spreads differ by orders
# of magnitude (one has a variance below eps, so eps must sit inside sqrt)
# --------------------------------------------------------------------------

def _features(rng, N, D, dtype=np.float64, mild=False):
    """(N, D) data; feature j has its own mean and spread."""
    if mild:  # float32: keep to what float32 can resolve
        means = rng.uniform(-5, 5, D)
        stds = 10 ** rng.uniform(-1, 0.5, D)
    else:
        base = [(0.5, 1.0), (-2000.0, 30.0), (50.0, 1e-2), (3.0, 1e-3)]
        extra = [(rng.choice([-1, 1]) * 10 ** rng.uniform(-1, 2), 10 ** rng.uniform(-1, 1))
                 for _ in range(max(0, D - len(base)))]
        pairs = (base + extra)[:D]
        order = rng.permutation(D)
        means = np.array([pairs[i][0] for i in order])
        stds = np.array([pairs[i][1] for i in order])
    return (means + stds * rng.randn(N, D)).astype(dtype)


def _affine(rng, C, dtype=np.float64):
    gamma = rng.uniform(0.5, 2.0, C) * rng.choice([-1.0, 1.0], C)
    return gamma.astype(dtype), (3 * rng.randn(C)).astype(dtype)


def _to_nchw(x2d, N, H, W):
    """(N*H*W, C) -> (N, C, H, W), so every channel keeps its own scale."""
    C = x2d.shape[1]
    return np.ascontiguousarray(x2d.reshape(N, H, W, C).transpose(0, 3, 1, 2))


def _copy(inputs):
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in inputs.items()}


def _pair(result, what):
    if not isinstance(result, tuple) or len(result) != 2:
        raise TypeError(f"{what} must return a tuple (out, cache), got {type(result).__name__}")
    return result


def _triple(result, what):
    if not isinstance(result, tuple) or len(result) != 3:
        raise TypeError(f"{what} must return a tuple (dx, dgamma, dbeta), got {type(result).__name__}")
    return result


def _snapshot(value):
    """A copy of a plain array (a student may update running stats in place)."""
    return value.copy() if type(value) is _ndarray else value


def _running(bn_param):
    return {key: _snapshot(bn_param.get(key)) for key in ("running_mean", "running_var")}


class Check:
    """One capability: how to build inputs, drive a forward/backward, compare."""

    def __init__(self, what, make, drive, tol=1e-6, axis=1):
        # axis: the channel axis, along which errors are scaled separately
        self.what, self.make, self.drive, self.tol, self.axis = what, make, drive, tol, axis


# -- forward, train mode ----------------------------------------------------

def _make_train(rng, dtype=np.float64, mild=False):
    N, D = rng.randint(8, 33), rng.randint(4, 8)
    x = _features(rng, N, D, dtype, mild)
    gamma, beta = _affine(rng, D, dtype)
    return {"x": x, "gamma": gamma, "beta": beta, "bn_param": {"mode": "train"}}


def _drive_forward(funcs, inp, forward="forward"):
    i = _copy(inp)
    out, _ = _pair(funcs[forward](i["x"], i["gamma"], i["beta"], dict(i["bn_param"])), forward)
    return {"out": out}


# -- forward, running statistics over several steps ---------------------------

def _make_running(rng, nchw=False, given=False):
    N, D = rng.randint(8, 17), rng.randint(3, 6)
    steps = []
    for t in range(5):  # the data drift, so each step's statistics differ
        x = _features(rng, N * (4 if nchw else 1), D) * (1 + 0.3 * t) + 2.0 * t
        steps.append(_to_nchw(x, N, 2, 2) if nchw else x)
    gamma, beta = _affine(rng, D)
    if not given:
        bn_param = {"mode": "train", "momentum": 0.3}  # running stats created lazily
    else:
        bn_param = {"mode": "train", "momentum": 0.05, "eps": 1e-3,
                    "running_mean": 10 * rng.randn(D), "running_var": rng.uniform(0.5, 5, D)}
    return {"steps": steps, "gamma": gamma, "beta": beta, "bn_param": bn_param}


def _drive_running(funcs, inp, forward="forward"):
    i = _copy(inp)
    bn_param = dict(i["bn_param"])
    for key in ("running_mean", "running_var"):
        if key in bn_param:
            bn_param[key] = bn_param[key].copy()
    result = {}
    for t, x in enumerate(i["steps"]):
        _pair(funcs[forward](x, i["gamma"], i["beta"], bn_param), forward)
        for key, value in _running(bn_param).items():
            result[f"{key} after step {t + 1}"] = value
    return result


def _make_running_default(rng):
    inp = _make_running(rng)
    inp["bn_param"] = {"mode": "train"}  # default momentum 0.1
    return inp


# -- forward, eval mode -------------------------------------------------------

def _make_eval(rng, nchw=False):
    N, D = rng.choice([1, 3, 9]), rng.randint(3, 7)
    x = _features(rng, N * (6 if nchw else 1), D)
    if nchw:
        x = _to_nchw(x, N, 2, 3)
    gamma, beta = _affine(rng, D)
    mode = "test" if rng.rand() < 0.5 else "eval"
    bn_param = {"mode": mode, "momentum": 0.3, "eps": 1e-4,
                "running_mean": 100 * rng.randn(D), "running_var": 10 ** rng.uniform(-2, 3, D)}
    return {"x": x, "gamma": gamma, "beta": beta, "bn_param": bn_param}


def _drive_eval(funcs, inp, forward="forward"):
    i = _copy(inp)
    bn_param = dict(i["bn_param"])
    out, _ = _pair(funcs[forward](i["x"], i["gamma"], i["beta"], bn_param), forward)
    return {"out": out, "running_mean (eval must leave it)": bn_param.get("running_mean"),
            "running_var (eval must leave it)": bn_param.get("running_var")}


# -- backward through the student's own forward and cache ----------------------

def _make_backward(rng, dtype=np.float64, mild=False, nchw=False):
    inp = _make_train(rng, dtype, mild)
    if nchw:
        N, C = inp["x"].shape
        H, W = 2, 3
        inp["x"] = _to_nchw(_features(rng, N * H * W, C, dtype, mild), N, H, W)
    inp["dout"] = (rng.randn(*inp["x"].shape) * 10 ** rng.uniform(-1, 1)).astype(dtype)
    return inp


def _drive_backward(funcs, inp, forward="forward", backward="backward"):
    i = _copy(inp)
    out, cache = _pair(funcs[forward](i["x"], i["gamma"], i["beta"], dict(i["bn_param"])), forward)
    dx, dgamma, dbeta = _triple(funcs[backward](i["dout"], cache), backward)
    return {"dx": dx, "dgamma": dgamma, "dbeta": dbeta}


def _only(drive, keys):
    def driven(funcs, inp):
        return {k: v for k, v in drive(funcs, inp).items() if k in keys}
    return driven


# -- layer norm: samples, not features, differ in scale -------------------------

def _make_layernorm(rng, dtype=np.float64):
    N, D = rng.randint(4, 12), rng.randint(5, 9)
    x = _features(rng, D, N, dtype).T.copy()  # per-sample means and spreads differ
    gamma, beta = _affine(rng, D, dtype)
    return {"x": x, "gamma": gamma, "beta": beta, "ln_param": {},
            "dout": (rng.randn(N, D)).astype(dtype)}


def _drive_layernorm(funcs, inp, backward=False):
    i = _copy(inp)
    out, cache = _pair(funcs["forward"](i["x"], i["gamma"], i["beta"], dict(i["ln_param"])), "forward")
    if not backward:
        return {"out": out}
    return dict(zip(("dx", "dgamma", "dbeta"), _triple(funcs["backward"](i["dout"], cache), "backward")))


def _make_nchw_train(rng):
    inp = _make_train(rng)
    N, C = inp["x"].shape
    inp["x"] = _to_nchw(_features(rng, N * 6, C), N, 2, 3)
    return inp


CHECKS = {
    "train_output": Check("training-mode output, float64, features on very different scales",
                          _make_train, _drive_forward),
    "train_output_float32": Check("training-mode output for float32 input",
                                  lambda r: _make_train(r, np.float32, mild=True), _drive_forward, tol=1e-3),
    "running_stats": Check("running mean and variance over 5 training steps (non-default momentum)",
                           _make_running, _drive_running),
    "running_stats_given": Check("running statistics from given non-trivial values, momentum 0.05, eps 1e-3",
                                 lambda r: _make_running(r, given=True), _drive_running),
    "running_stats_default": Check("running statistics with the default momentum",
                                   _make_running_default, _drive_running),
    "eval_output": Check("eval-mode output with non-trivial running statistics", _make_eval, _drive_eval),
    "backward_dx": Check("dx with a random upstream gradient, through your forward's cache",
                         _make_backward, _only(_drive_backward, ("dx",))),
    "backward_dparams": Check("dgamma and dbeta (shape (D,)) through your forward's cache",
                              _make_backward, _only(_drive_backward, ("dgamma", "dbeta"))),
    "backward_dx_float32": Check("dx for float32 input",
                                 lambda r: _make_backward(r, np.float32, mild=True),
                                 _only(_drive_backward, ("dx",)), tol=1e-3),
    "spatial_train_output": Check("spatial batch norm output, (N, C, H, W), statistics per channel",
                                  _make_nchw_train, _drive_forward),
    "spatial_running_stats": Check("spatial running statistics over 5 steps",
                                   lambda r: _make_running(r, nchw=True), _drive_running),
    "spatial_eval_output": Check("spatial batch norm in eval mode",
                                 lambda r: _make_eval(r, nchw=True), _drive_eval),
    "spatial_backward": Check("spatial batch norm backward: dx (N, C, H, W), dgamma and dbeta (C,)",
                              lambda r: _make_backward(r, nchw=True), _drive_backward),
    "layernorm_output": Check("layer norm output, samples on very different scales",
                              _make_layernorm, _drive_layernorm, axis=0),
    "layernorm_backward": Check("layer norm backward: dx, dgamma and dbeta",
                                _make_layernorm, lambda f, i: _drive_layernorm(f, i, backward=True), axis=0),
}


# --------------------------------------------------------------------------
# The clean side: reference and verdict (runs in `python -I`)
# --------------------------------------------------------------------------

def _reference_funcs(check):
    from bnkit import fast, norms  # imported here only: never in the student's kernel
    if check.startswith("layernorm"):
        return {"forward": norms.layernorm_forward, "backward": norms.layernorm_backward}
    return {"forward": fast.batchnorm_forward, "backward": fast.batchnorm_backward}


def _compare(name, got, want, tol, axis=1):
    """One line: None if `got` matches `want`, else what is wrong."""
    if want is None:
        return None
    if got is None:
        return f"{name}: missing (None); expected an array of shape {want.shape}"
    if got.shape != want.shape:
        return f"{name}: shape {got.shape}, expected exactly {want.shape}"
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    if not np.all(np.isfinite(got64)):
        return f"{name}: contains NaN or Inf"
    # relative error per channel (axis 1 of (N, D) and NCHW; per sample for
    # layer norm), so a bug in a small-scale channel is not hidden by a large one
    if want64.ndim == 1:
        scale = np.abs(want64)
    else:
        other = tuple(a for a in range(want64.ndim) if a != axis)
        scale = np.max(np.abs(want64), axis=other, keepdims=True)
    err = np.abs(got64 - want64) / np.maximum(scale, 1e-12)
    worst = float(np.max(err)) if err.size else 0.0
    if worst > tol:
        return f"{name}: relative error {worst:.2e} (tolerance {tol:.0e})"
    return None


def verdict(records):
    """Compare the students' raw outputs with bnkit's; {'ok': bool, 'lines': [...]}."""
    lines, ok = [], True
    for rec in records:
        check = CHECKS[rec["check"]]
        problems = []
        if rec["error"]:
            problems.append(f"raised {rec['error']}")
        else:
            want = check.drive(_reference_funcs(rec["check"]), check.make(np.random.RandomState(rec["seed"])))
            for name, w in want.items():
                p = rec["outputs"].get(name)
                if p is None:
                    problems.append(f"{name}: not returned")
                elif "bad" in p:
                    problems.append(f"{name}: got {p['bad']}" if w is not None else None)
                else:
                    problems.append(_compare(name, _unpack(p), w, check.tol, check.axis))
        problems = [p for p in problems if p]
        if problems:
            ok = False
            lines.append(f"FAIL {check.what}: " + "; ".join(problems))
        else:
            lines.append(f"ok   {check.what}")
    return {"ok": ok, "lines": lines}


def verdict_main():
    records = json.loads(sys.stdin.read())
    sys.stdout.write(json.dumps(verdict(records)))
