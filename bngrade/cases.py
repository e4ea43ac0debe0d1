"""The checks: seeded inputs, and the drivers that call a set of functions on them.

numpy only: this module runs inside the sandbox (to drive the student's
functions) and outside it (to drive bnkit's reference the same way).

A case is `(check, seed)`. `CHECKS[check]` states one capability:

- `make(rng)` builds the inputs from `numpy.random.RandomState(seed)`;
- `drive(funcs, inputs)` calls `funcs` (roles such as `forward`, `backward`)
  on a copy of the inputs and returns `{output name: value}`;
- `describe(inputs)` says what the case exercises, for the feedback line:
  its mode and parameters (shapes, dtype, momentum...), never its seed;
- `tol` and `axis`: the relative error allowed, per channel along `axis`.

Inputs are built so that approximations fail: features whose means and
spreads differ by orders of magnitude, one with a variance below eps (so eps
must sit inside the square root), data that drift between training steps.
"""
import numpy as np

# --------------------------------------------------------------------------
# Inputs
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


def _call(funcs, role, *args):
    """funcs[role](*args), and the function's own name for messages."""
    f = funcs[role]
    return f(*args), getattr(f, "__name__", role)


def _pair(result, what):
    if not isinstance(result, tuple) or len(result) != 2:
        raise TypeError(f"{what} must return a tuple (out, cache), got {type(result).__name__}")
    return result


def _triple(result, what):
    if not isinstance(result, tuple) or len(result) != 3:
        raise TypeError(f"{what} must return a tuple (dx, dgamma, dbeta), got {type(result).__name__}")
    return result


def _snapshot(value):
    """A copy of an array (a function may update running stats in place later)."""
    return value.copy() if isinstance(value, np.ndarray) else value


def _shape(x):
    return "(" + ", ".join(str(n) for n in x.shape) + ")"


class Check:
    """One capability: how to build inputs, drive the functions, describe the case."""

    def __init__(self, what, make, drive, describe, roles=("forward",), tol=1e-6, axis=1, gate=False):
        self.what, self.make, self.drive, self.describe = what, make, drive, describe
        self.roles, self.tol, self.axis = roles, tol, axis
        self.gate = gate  # a case at scale: the cell's other cases count only when it passes (verdict.py)


# -- forward, train mode ----------------------------------------------------

def _make_train(rng, dtype=np.float64, mild=False):
    N, D = rng.randint(8, 33), rng.randint(4, 8)
    x = _features(rng, N, D, dtype, mild)
    gamma, beta = _affine(rng, D, dtype)
    return {"x": x, "gamma": gamma, "beta": beta, "bn_param": {"mode": "train"}}


def _drive_forward(funcs, inp):
    i = _copy(inp)
    out, _ = _pair(*_call(funcs, "forward", i["x"], i["gamma"], i["beta"], dict(i["bn_param"])))
    return {"out": out}


def _describe_train(inp):
    x = inp["x"]
    scales = "" if x.dtype == np.float32 else ", features on very different scales"
    return f"training-mode output, {x.dtype} x {_shape(x)}{scales}"


# -- forward, running statistics over several steps ---------------------------

STEPS = 5


def _make_running(rng, nchw=False, given=False):
    N, D = rng.randint(8, 17), rng.randint(3, 6)
    steps = []
    for t in range(STEPS):  # the data drift, so each step's statistics differ
        x = _features(rng, N * (4 if nchw else 1), D) * (1 + 0.3 * t) + 2.0 * t
        steps.append(_to_nchw(x, N, 2, 2) if nchw else x)
    gamma, beta = _affine(rng, D)
    if not given:
        bn_param = {"mode": "train", "momentum": 0.3}  # running stats created lazily
    else:
        bn_param = {"mode": "train", "momentum": 0.05, "eps": 1e-3,
                    "running_mean": 10 * rng.randn(D), "running_var": rng.uniform(0.5, 5, D)}
    return {"steps": steps, "gamma": gamma, "beta": beta, "bn_param": bn_param}


def _drive_running(funcs, inp):
    i = _copy(inp)
    bn_param = dict(i["bn_param"])
    for key in ("running_mean", "running_var"):
        if key in bn_param:
            bn_param[key] = bn_param[key].copy()
    result = {}
    for t, x in enumerate(i["steps"]):
        _pair(*_call(funcs, "forward", x, i["gamma"], i["beta"], bn_param))
        for key in ("running_mean", "running_var"):
            result[f"{key} after step {t + 1}"] = _snapshot(bn_param.get(key))
    return result


def _make_running_default(rng):
    inp = _make_running(rng)
    inp["bn_param"] = {"mode": "train"}  # default momentum 0.1
    return inp


def _describe_running(inp):
    p, x = inp["bn_param"], inp["steps"][0]
    momentum = f"momentum {p['momentum']}" if "momentum" in p else "default momentum"
    start = "from given running stats" if "running_mean" in p else "no running stats given"
    eps = f", eps {p['eps']:g}" if "eps" in p else ""
    return f"running statistics, {STEPS} training steps, {momentum}{eps}, x {_shape(x)}, {start}"


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


def _drive_eval(funcs, inp):
    i = _copy(inp)
    bn_param = dict(i["bn_param"])
    out, _ = _pair(*_call(funcs, "forward", i["x"], i["gamma"], i["beta"], bn_param))
    return {"out": out, "running_mean (eval must leave it)": bn_param.get("running_mean"),
            "running_var (eval must leave it)": bn_param.get("running_var")}


def _describe_eval(inp):
    p, x = inp["bn_param"], inp["x"]
    return (f"eval mode, mode={p['mode']!r}, x {_shape(x)}, eps {p['eps']:g}, "
            "given running statistics")


# -- backward through the student's own forward and cache ----------------------

def _make_backward(rng, dtype=np.float64, mild=False, nchw=False):
    inp = _make_train(rng, dtype, mild)
    if nchw:
        N, C = inp["x"].shape
        H, W = 2, 3
        inp["x"] = _to_nchw(_features(rng, N * H * W, C, dtype, mild), N, H, W)
    inp["dout"] = (rng.randn(*inp["x"].shape) * 10 ** rng.uniform(-1, 1)).astype(dtype)
    return inp


def _drive_backward(funcs, inp):
    i = _copy(inp)
    out, cache = _pair(*_call(funcs, "forward", i["x"], i["gamma"], i["beta"], dict(i["bn_param"])))
    dx, dgamma, dbeta = _triple(*_call(funcs, "backward", i["dout"], cache))
    return {"dx": dx, "dgamma": dgamma, "dbeta": dbeta}


def _only(drive, keys):
    def driven(funcs, inp):
        return {k: v for k, v in drive(funcs, inp).items() if k in keys}
    return driven


def _describe_backward(what):
    def describe(inp):
        x = inp["x"]
        return f"{what}, {x.dtype} x {_shape(x)}, random upstream gradient, through your forward's cache"
    return describe


# -- layer norm: samples, not features, differ in scale -------------------------

def _make_layernorm(rng, dtype=np.float64):
    N, D = rng.randint(4, 12), rng.randint(5, 9)
    x = _features(rng, D, N, dtype).T.copy()  # per-sample means and spreads differ
    gamma, beta = _affine(rng, D, dtype)
    return {"x": x, "gamma": gamma, "beta": beta, "ln_param": {},
            "dout": (rng.randn(N, D)).astype(dtype)}


def _drive_layernorm(funcs, inp, backward=False):
    i = _copy(inp)
    out, cache = _pair(*_call(funcs, "forward", i["x"], i["gamma"], i["beta"], dict(i["ln_param"])))
    if not backward:
        return {"out": out}
    return dict(zip(("dx", "dgamma", "dbeta"), _triple(*_call(funcs, "backward", i["dout"], cache))))


def _describe_layernorm(what):
    def describe(inp):
        return f"{what}, x {_shape(inp['x'])}, samples on very different scales"
    return describe


# -- at scale: an O(N*D) backward finishes, differentiating the forward cannot ---
#
# Differentiating the forward numerically (complex step, finite differences,
# bnkit.gradcheck) needs one forward pass per coupled input: every row of a
# feature for batch norm (the features are independent, so a clever cheat
# perturbs all of them at once), every feature of a sample for layer norm.
# One pass costs O(N*D), so the whole gradient costs O(N^2*D) (batch norm)
# or O(N*D^2) (layer norm). These cases make the coupled dimension 200,000
# and the other one 2: an honest backward does about 400,000 multiply-adds
# (numpy: milliseconds; plain Python loops: seconds), a numerical one about
# 8e10 even perfectly vectorised, far past the grader's cell timeout, which
# the grader's process measures outside the kernel. What passes or times out
# is decided there; these cases are gates (`Check.gate`): the cell's other
# cases count only when they pass. The full dx comes back (a fingerprint,
# e.g. a few random projections of dx, would be a handful of directional
# derivatives of the forward, cheap to compute numerically).

LARGE_ROWS, LARGE_COLUMNS = 200_000, 2


def _make_backward_large(rng):
    x = _features(rng, LARGE_ROWS, LARGE_COLUMNS)
    gamma, beta = _affine(rng, LARGE_COLUMNS)
    dout = rng.randn(LARGE_ROWS, LARGE_COLUMNS)
    return {"x": x, "gamma": gamma, "beta": beta, "bn_param": {"mode": "train"}, "dout": dout}


def _make_spatial_large(rng):
    N, H, W = LARGE_ROWS // 400, 20, 20  # 200,000 positions per channel
    x = _to_nchw(_features(rng, N * H * W, LARGE_COLUMNS), N, H, W)
    gamma, beta = _affine(rng, LARGE_COLUMNS)
    return {"x": x, "gamma": gamma, "beta": beta, "bn_param": {"mode": "train"}, "dout": rng.randn(*x.shape)}


def _make_layernorm_large(rng):
    N, D = LARGE_COLUMNS, LARGE_ROWS  # layer norm couples the features of a sample: many features, few rows
    x = _features(rng, D, N).T.copy()
    gamma, beta = _affine(rng, D)
    return {"x": x, "gamma": gamma, "beta": beta, "ln_param": {}, "dout": rng.randn(N, D)}


def _describe_large(what):
    def describe(inp):
        return (f"{what} at scale, x {_shape(inp['x'])}: an O(N*D) backward takes about a second at most; "
                "one that differentiates the forward numerically cannot finish (the other cases of this test "
                "count only when this one passes)")
    return describe


def _make_nchw_train(rng):
    inp = _make_train(rng)
    N, C = inp["x"].shape
    inp["x"] = _to_nchw(_features(rng, N * 6, C), N, 2, 3)
    return inp


def _spatial(describe):
    def described(inp):
        return "spatial " + describe(inp)
    return described


FB = ("forward", "backward")

CHECKS = {
    "train_output": Check("training-mode output", _make_train, _drive_forward, _describe_train),
    "train_output_float32": Check("training-mode output for float32 input",
                                  lambda r: _make_train(r, np.float32, mild=True), _drive_forward,
                                  _describe_train, tol=1e-3),
    "running_stats": Check("running statistics (non-default momentum)", _make_running, _drive_running,
                           _describe_running),
    "running_stats_given": Check("running statistics from given values",
                                 lambda r: _make_running(r, given=True), _drive_running, _describe_running),
    "running_stats_default": Check("running statistics with the default momentum",
                                   _make_running_default, _drive_running, _describe_running),
    "eval_output": Check("eval-mode output", _make_eval, _drive_eval, _describe_eval),
    "backward_dx": Check("dx", _make_backward, _only(_drive_backward, ("dx",)),
                         _describe_backward("dx"), roles=FB),
    "backward_dparams": Check("dgamma and dbeta", _make_backward, _only(_drive_backward, ("dgamma", "dbeta")),
                              _describe_backward("dgamma and dbeta (shape (D,))"), roles=FB),
    "backward_dx_float32": Check("dx for float32 input", lambda r: _make_backward(r, np.float32, mild=True),
                                 _only(_drive_backward, ("dx",)), _describe_backward("dx"), roles=FB, tol=1e-3),
    "spatial_train_output": Check("spatial training-mode output", _make_nchw_train, _drive_forward,
                                  _spatial(_describe_train)),
    "spatial_running_stats": Check("spatial running statistics", lambda r: _make_running(r, nchw=True),
                                   _drive_running, _spatial(_describe_running)),
    "spatial_eval_output": Check("spatial eval-mode output", lambda r: _make_eval(r, nchw=True), _drive_eval,
                                 _spatial(_describe_eval)),
    "spatial_backward": Check("spatial backward", lambda r: _make_backward(r, nchw=True), _drive_backward,
                              _spatial(_describe_backward("backward: dx, dgamma and dbeta (C,)")), roles=FB),
    "layernorm_output": Check("layer norm output", _make_layernorm, _drive_layernorm,
                              _describe_layernorm("layer norm output"), axis=0),
    "layernorm_backward": Check("layer norm backward", _make_layernorm,
                                lambda f, i: _drive_layernorm(f, i, backward=True),
                                _describe_layernorm("layer norm backward: dx, dgamma and dbeta"), roles=FB, axis=0),
    # at scale (gates: see above)
    "backward_dx_large": Check("dx at scale", _make_backward_large, _only(_drive_backward, ("dx",)),
                               _describe_large("dx"), roles=FB, gate=True),
    "backward_dparams_large": Check("dgamma and dbeta at scale", _make_backward_large,
                                    _only(_drive_backward, ("dgamma", "dbeta")),
                                    _describe_large("dgamma and dbeta (your whole backward runs)"), roles=FB,
                                    gate=True),
    "spatial_backward_large": Check("spatial backward at scale", _make_spatial_large, _drive_backward,
                                    _spatial(_describe_large("backward: dx, dgamma and dbeta")), roles=FB, gate=True),
    "layernorm_backward_large": Check("layer norm backward at scale", _make_layernorm_large,
                                      _only(lambda f, i: _drive_layernorm(f, i, backward=True), ("dx",)),
                                      _describe_large("layer norm backward: dx (dgamma and dbeta have cases above)"),
                                      roles=FB, axis=0, gate=True),
}


def inputs(check, seed):
    """The inputs of case (check, seed), rebuilt from the seed."""
    return CHECKS[check].make(np.random.RandomState(seed))


def describe(check, seed):
    """The case in words (mode and parameters, not the seed)."""
    return CHECKS[check].describe(inputs(check, seed))
