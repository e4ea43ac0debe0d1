"""The catalogue of sample submissions the course is tested (and demonstrated) on.

Each entry is one student's notebook, made from the source solution:

- `edits`: {solution cell grade id: [(old, new), ...]}: string replacements in
  that cell (the `### BEGIN/END SOLUTION` lines are removed first). Every
  `old` must occur, so the catalogue cannot drift silently from the source.
- `cells`: {solution cell grade id: new source}: the whole cell rewritten.
- `mutation`: a change to the notebook itself (see `course.mutate`).
- `lose`: the tests that must score below full marks; every other
  autograded test must score full marks. `None` means the notebook cannot be
  graded at all (a per-student failure that must not stop the run).

- `append`: a new, unlocked code cell at the very end (after the tests), as
  a student may add one anywhere.
- `expect`: {test: exact score} where the grade is known exactly (partial
  credit counts cases: e.g. 1 of 4 cases right in a 2-point test is 0.5).
- `partial`: tests that must get partial credit (more than 0, less than full).
- `feedback`: {test: [text, ...]}: lines the student must see in that test's
  output (a hint, a message naming the problem).
- `report`: texts the instructor's integrity report must contain; `()`
  means the report must say "nothing to report"; None: not checked.

kinds: "buggy" (a plausible mistake: must lose points, on the right test),
"correct" (an equivalent correct answer: full marks), "integrity" (a cheat
or a damaged notebook: behaves as the comment says), "honest" (an honest
student the old grader punished: full marks, or what the work earns),
"feedback" (a porting mistake: its hint must be shown), "residual" (a cheat
the grader does not catch: stated so the residual risk is measured, not
hidden).

Every catalogue entry is autograded through plain `nbgrader autograde` in
`tests/test_assignments.py`, with control students (`CONTROLS`) in the same
run whose grades must not move.
"""
# ruff: noqa: E501 (a data file: the edits quote the solutions' lines whole, whatever their length)
from dataclasses import dataclass, field


@dataclass
class Variant:
    name: str
    assignment: str
    kind: str
    why: str
    lose: object = frozenset()
    edits: dict = field(default_factory=dict)
    cells: dict = field(default_factory=dict)
    mutation: str = ""
    append: str = ""
    expect: dict = field(default_factory=dict)
    partial: frozenset = frozenset()
    feedback: dict = field(default_factory=dict)
    report: object = None


FWD = "batchnorm_forward"
ALL_FORWARD = {"test_train_output", "test_running_stats", "test_eval"}

BN_FORWARD = [
    # ---- buggy
    Variant("eps_outside_sqrt", "bn_forward", "buggy", "eps added outside the square root",
            {"test_train_output"}, {FWD: [("xc / np.sqrt(var + eps)", "xc / (np.sqrt(var) + eps)")]}),
    Variant("var_squared", "bn_forward", "buggy", "var**2 where var was meant",
            {"test_train_output"}, {FWD: [("xc / np.sqrt(var + eps)", "xc / np.sqrt(var ** 2 + eps)")]}),
    Variant("n_minus_1_normalisation", "bn_forward", "buggy", "normalises with the unbiased variance (N - 1)",
            {"test_train_output", "test_running_stats"},
            {FWD: [("var = (xc ** 2).mean(axis=0)", "var = (xc ** 2).sum(axis=0) / (N - 1)")]}),
    Variant("biased_running_var", "bn_forward", "buggy", "running_var updated with the biased variance",
            {"test_running_stats"}, {FWD: [("momentum * var * N / (N - 1)", "momentum * var")]},
            feedback={"test_running_stats": ["unbiased batch variance"]}),
    Variant("momentum_convention_swapped", "bn_forward", "buggy",
            "CS231n's convention: running = momentum * running + (1 - momentum) * batch",
            {"test_running_stats"},
            {FWD: [("(1 - momentum) * running_mean + momentum * mu", "momentum * running_mean + (1 - momentum) * mu"),
                   ("(1 - momentum) * running_var + momentum * var", "momentum * running_var + (1 - momentum) * var")]},
            feedback={"test_running_stats": ["CS231n's convention"]}),
    Variant("cs231n_default_momentum", "bn_forward", "buggy", "default momentum 0.9 (CS231n's) with its convention",
            {"test_running_stats"},
            {FWD: [('bn_param.get("momentum", 0.1)', 'bn_param.get("momentum", 0.9)'),
                   ("(1 - momentum) * running_mean + momentum * mu", "momentum * running_mean + (1 - momentum) * mu"),
                   ("(1 - momentum) * running_var + momentum * var", "momentum * running_var + (1 - momentum) * var")]}),
    Variant("running_stats_not_stored", "bn_forward", "buggy", "never writes the running stats back into bn_param",
            {"test_running_stats"},
            {FWD: [('    bn_param["running_mean"] = running_mean\n    bn_param["running_var"] = running_var\n', "")]}),
    Variant("keepdims_shapes", "bn_forward", "buggy", "statistics kept as (1, D): running stats end up (1, D)",
            {"test_running_stats"},
            {FWD: [("mu = x.mean(axis=0)", "mu = x.mean(axis=0, keepdims=True)"),
                   ("var = (xc ** 2).mean(axis=0)", "var = (xc ** 2).mean(axis=0, keepdims=True)")]},
            feedback={"test_running_stats": ["not (1, "]}),
    Variant("wrong_axis", "bn_forward", "buggy", "statistics per sample (axis=1) instead of per feature",
            {"test_train_output", "test_running_stats"},
            {FWD: [("mu = x.mean(axis=0)", "mu = x.mean(axis=1, keepdims=True)"),
                   ("var = (xc ** 2).mean(axis=0)", "var = (xc ** 2).mean(axis=1, keepdims=True)")]}),
    Variant("forgets_beta", "bn_forward", "buggy", "training output without the shift",
            {"test_train_output"}, {FWD: [("        out = gamma * xhat + beta\n        running_mean",
                                           "        out = gamma * xhat\n        running_mean")]}),
    Variant("eval_uses_batch_stats", "bn_forward", "buggy", "eval mode normalises with the batch's statistics",
            {"test_eval"}, {FWD: [("xhat = (x - running_mean) / np.sqrt(running_var + eps)",
                                   "xhat = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + eps)")]}),
    Variant("eval_without_eps", "bn_forward", "buggy", "eval mode forgets eps",
            {"test_eval"}, {FWD: [("np.sqrt(running_var + eps)", "np.sqrt(running_var)")]}),
    Variant("eval_updates_running_stats", "bn_forward", "buggy", "eval mode keeps updating the running mean",
            {"test_eval"}, {FWD: [("        cache = None\n",
                                   "        cache = None\n        running_mean = (1 - momentum) * running_mean + momentum * x.mean(axis=0)\n")]}),
    Variant("only_test_mode", "bn_forward", "buggy", "accepts 'test' but not 'eval'",
            {"test_eval"}, {FWD: [('elif mode in ("test", "eval"):', 'elif mode == "test":')]},
            partial={"test_eval"}, feedback={"test_eval": ["mode 'eval' must work exactly like 'test'"]}),
    Variant("running_var_of_std", "bn_forward", "buggy", "running_var tracks the standard deviation",
            {"test_running_stats"}, {FWD: [("momentum * var * N / (N - 1)", "momentum * np.sqrt(var * N / (N - 1))")]}),
    Variant("gamma_beta_swapped", "bn_forward", "buggy", "beta * xhat + gamma",
            {"test_train_output"}, {FWD: [("        out = gamma * xhat + beta\n        running_mean",
                                           "        out = beta * xhat + gamma\n        running_mean")]}),
    Variant("running_var_with_eps", "bn_forward", "buggy", "running_var tracks var + eps",
            {"test_running_stats"}, {FWD: [("momentum * var * N / (N - 1)", "momentum * (var + eps) * N / (N - 1)")]}),
    Variant("eval_forgets_sqrt", "bn_forward", "buggy", "eval divides by the running variance, not its root",
            {"test_eval"}, {FWD: [("np.sqrt(running_var + eps)", "(running_var + eps)")]}),
    # ---- correct variants
    Variant("one_pass_variance", "bn_forward", "correct", "var = E[x^2] - E[x]^2 (fine in float64 here)",
            edits={FWD: [("var = (xc ** 2).mean(axis=0)", "var = (x ** 2).mean(axis=0) - mu ** 2")]}),
    Variant("numpy_var_and_ddof", "bn_forward", "correct", "np.var, and np.var(ddof=1) for the running variance",
            edits={FWD: [("var = (xc ** 2).mean(axis=0)", "var = np.var(x, axis=0)"),
                         ("momentum * var * N / (N - 1)", "momentum * np.var(x, axis=0, ddof=1)")]}),
    Variant("upcast_to_float64", "bn_forward", "correct", "computes in float64 (float32 input returns float64)",
            edits={FWD: [('    mode = bn_param.get("mode", "train")', '    x = x.astype(np.float64)\n    mode = bn_param.get("mode", "train")')]}),
    Variant("in_place_running_update", "bn_forward", "correct", "updates the running arrays in place, as torch does",
            edits={FWD: [("running_mean = (1 - momentum) * running_mean + momentum * mu",
                          "running_mean *= 1 - momentum\n        running_mean += momentum * mu"),
                         ("running_var = (1 - momentum) * running_var + momentum * var * N / (N - 1)",
                          "running_var *= 1 - momentum\n        running_var += momentum * var * N / (N - 1)")]}),
    Variant("loop_over_features", "bn_forward", "correct", "one feature at a time, multiply by 1/std",
            cells={FWD: '''
def batchnorm_forward(x, gamma, beta, bn_param):
    mode = bn_param.get("mode", "train")
    eps = bn_param.get("eps", 1e-5)
    m = bn_param.get("momentum", 0.1)
    N, D = x.shape
    rm = bn_param.get("running_mean", np.zeros(D))
    rv = bn_param.get("running_var", np.ones(D))
    out = np.empty_like(x)
    if mode == "train":
        rm, rv = rm.copy(), rv.copy()
        for j in range(D):
            col = x[:, j]
            mean = sum(col) / N
            v = sum((col - mean) ** 2) / N
            out[:, j] = gamma[j] * (col - mean) * (1.0 / np.sqrt(v + eps)) + beta[j]
            rm[j] = (1 - m) * rm[j] + m * mean
            rv[j] = (1 - m) * rv[j] + m * v * N / (N - 1)
        bn_param["running_mean"], bn_param["running_var"] = rm, rv
    else:
        out = gamma * (x - rm) / np.sqrt(rv + eps) + beta
    return out, None
'''}),
]

BWD = "batchnorm_backward"
BN_BACKWARD_GRAPH = [
    Variant("dgamma_not_summed", "bn_backward_graph", "buggy", "dgamma not summed over the batch",
            {"test_backward_dparams"}, {BWD: [("dgamma = (xhat * dscaled).sum(axis=0)", "dgamma = xhat * dscaled")]}),
    Variant("dbeta_shape_1xD", "bn_backward_graph", "buggy", "dbeta returned as (1, D)",
            {"test_backward_dparams"}, {BWD: [("dbeta = dout.sum(axis=0)", "dbeta = dout.sum(axis=0, keepdims=True)")]}),
    Variant("dgamma_uses_xc", "bn_backward_graph", "buggy", "dgamma from the centred x, not xhat",
            {"test_backward_dparams"}, {BWD: [("(xhat * dscaled).sum(axis=0)", "(xc * dscaled).sum(axis=0)")]}),
    Variant("dx_missing_mean_term", "bn_backward_graph", "buggy", "dx misses the path through the mean",
            {"test_backward_dx"}, {BWD: [("dx = dxc + np.ones_like(xc) * dmu / N", "dx = dxc")]}),
    Variant("dx_missing_variance_term", "bn_backward_graph", "buggy", "dx misses the path through the variance",
            {"test_backward_dx"}, {BWD: [("dxc = dxc + 2 * xc * dsq", "dxc = dxc")]}),
    Variant("invert_gate_sign", "bn_backward_graph", "buggy", "d(1/s)/ds taken as +1/s^2",
            {"test_backward_dx"}, {BWD: [("dstd = -dinv_std / std ** 2", "dstd = dinv_std / std ** 2")]}),
    Variant("sqrt_gate_wrong", "bn_backward_graph", "buggy", "d sqrt(v)/dv taken as sqrt(v)/2",
            {"test_backward_dx"}, {BWD: [("dvar = 0.5 * dstd / std", "dvar = 0.5 * dstd * std")]}),
    Variant("variance_gate_no_1_over_N", "bn_backward_graph", "buggy", "the mean gate's 1/N forgotten for var",
            {"test_backward_dx"}, {BWD: [("dsq = np.ones_like(xc) * dvar / N", "dsq = np.ones_like(xc) * dvar")]}),
    Variant("mean_gate_N_minus_1", "bn_backward_graph", "buggy", "the mean gate's local gradient taken as 1/(N-1)",
            {"test_backward_dx"}, {BWD: [("dx = dxc + np.ones_like(xc) * dmu / N", "dx = dxc + np.ones_like(xc) * dmu / (N - 1)")]}),
    Variant("dxhat_without_gamma", "bn_backward_graph", "buggy", "the scale gate's gamma forgotten in dx",
            {"test_backward_dx"}, {BWD: [("dxhat = gamma * dscaled", "dxhat = dscaled")]}),
    Variant("staged_eps_outside_sqrt", "bn_backward_graph", "buggy", "forward with eps outside the sqrt",
            {"test_forward", "test_backward_dx", "test_backward_dparams"},
            {FWD: [("std = np.sqrt(var + eps)", "std = np.sqrt(var) + eps")]}),
    Variant("dbeta_wrong_axis", "bn_backward_graph", "buggy", "dbeta summed over features",
            {"test_backward_dparams"}, {BWD: [("dbeta = dout.sum(axis=0)", "dbeta = dout.sum(axis=1)")]}),
    Variant("dinv_std_not_summed", "bn_backward_graph", "buggy", "the per-feature inv_std's gradient not summed",
            {"test_backward_dx"}, {BWD: [("dinv_std = (xc * dxhat).sum(axis=0)", "dinv_std = xc * dxhat")]}),
    Variant("dmu_not_summed", "bn_backward_graph", "buggy", "the mean's gradient not summed over the batch",
            {"test_backward_dx"}, {BWD: [("dmu = -dxc.sum(axis=0)", "dmu = -dxc")]}),
    # ---- correct variants
    Variant("tuple_cache", "bn_backward_graph", "correct", "a tuple cache in another order",
            edits={FWD: [('cache = {"xc": xc, "std": std, "inv_std": inv_std, "xhat": xhat, "gamma": gamma, "N": N}',
                          "cache = (N, gamma, xhat, inv_std, std, xc)")],
                   BWD: [('(cache[k] for k in ("xc", "std", "inv_std", "xhat", "gamma", "N"))', "reversed(cache)")]}),
    Variant("cs231n_style_backward", "bn_backward_graph", "correct", "dvar and dmu the CS231n way, from var + eps",
            cells={BWD: '''
def batchnorm_backward(dout, cache):
    xc, std, inv_std, xhat, gamma, N = (cache[k] for k in ("xc", "std", "inv_std", "xhat", "gamma", "N"))
    var_eps = std ** 2
    dxhat = dout * gamma
    dvar = np.sum(dxhat * xc, axis=0) * -0.5 * var_eps ** -1.5
    dmu = np.sum(-dxhat / std, axis=0) + dvar * np.mean(-2.0 * xc, axis=0)
    dx = dxhat / std + dvar * 2.0 * xc / N + dmu / N
    dgamma = np.sum(dout * xhat, axis=0)
    dbeta = np.sum(dout, axis=0)
    return dx, dgamma, dbeta
'''}),
    Variant("plain_python_loops", "bn_backward_graph", "correct",
            "forward and backward in plain Python loops, element by element (O(N*D), slow but honest): it "
            "finishes the cases at scale (x (200000, 2)) well within the cell timeout, also at load; full marks",
            cells={FWD: '''
def batchnorm_forward(x, gamma, beta, bn_param):
    mode = bn_param.get("mode", "train")
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.1)
    N, D = x.shape
    running_mean = bn_param.get("running_mean", np.zeros(D, dtype=x.dtype))
    running_var = bn_param.get("running_var", np.ones(D, dtype=x.dtype))
    if mode not in ("train", "test", "eval"):
        raise ValueError(f"invalid batch-norm mode {mode!r}")
    out, cache = np.empty_like(x), None
    if mode == "train":
        xhat, inv = np.empty(x.shape), np.empty(D)
        mu, var = np.empty(D), np.empty(D)
        for j in range(D):
            column = x[:, j].tolist()
            m = sum(column) / N
            v = sum((c - m) ** 2 for c in column) / N
            s = 1.0 / (v + eps) ** 0.5
            mu[j], var[j], inv[j] = m, v, s
            g, b = float(gamma[j]), float(beta[j])
            xh = [(c - m) * s for c in column]
            xhat[:, j] = xh
            out[:, j] = [g * h + b for h in xh]
        running_mean = (1 - momentum) * running_mean + momentum * mu
        running_var = (1 - momentum) * running_var + momentum * var * N / (N - 1)
        cache = {"xhat": xhat, "inv_std": inv, "gamma": gamma, "N": N}
    else:
        out = gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta
    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    return out, cache
''', BWD: '''
def batchnorm_backward(dout, cache):
    xhat, inv, gamma, N = cache["xhat"], cache["inv_std"], cache["gamma"], cache["N"]
    D = xhat.shape[1]
    dx, dgamma, dbeta = np.empty(dout.shape), np.empty(D), np.empty(D)
    for j in range(D):
        d, h = dout[:, j].tolist(), xhat[:, j].tolist()
        db = 0.0
        dg = 0.0
        for i in range(N):  # gate by gate, one element at a time
            db += d[i]
            dg += d[i] * h[i]
        k = float(gamma[j]) * float(inv[j]) / N
        dx[:, j] = [k * (N * d[i] - db - h[i] * dg) for i in range(N)]
        dgamma[j], dbeta[j] = dg, db
    return dx.astype(dout.dtype), dgamma, dbeta
'''}),
    Variant("closed_form_in_graph", "bn_backward_graph", "correct", "the closed form is also a correct gradient",
            cells={BWD: '''
def batchnorm_backward(dout, cache):
    xhat, gamma, inv_std, N = cache["xhat"], cache["gamma"], cache["inv_std"], cache["N"]
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    return gamma * inv_std * (dout - (dbeta + xhat * dgamma) / N), dgamma, dbeta
'''}),
]

ALT = "batchnorm_backward_alt"
BN_BACKWARD_FAST = [
    Variant("alt_dgamma_not_summed", "bn_backward_fast", "buggy", "returns dgamma per sample",
            {"test_alt_dparams"}, {ALT: [("dgamma = (dout * xhat).sum(axis=0)", "dgamma = dout * xhat"),
                                         ("- xhat * dgamma)", "- xhat * dgamma.sum(axis=0))")]}),
    Variant("alt_missing_xhat_term", "bn_backward_fast", "buggy", "dx misses the xhat * dgamma term",
            {"test_alt_dx"}, {ALT: [(" - xhat * dgamma)", ")")]}),
    Variant("alt_missing_gamma", "bn_backward_fast", "buggy", "dx without gamma",
            {"test_alt_dx"}, {ALT: [("(gamma * inv_std / N)", "(inv_std / N)")]}),
    Variant("alt_N_minus_1", "bn_backward_fast", "buggy", "1/(N-1) instead of 1/N",
            {"test_alt_dx"}, {ALT: [("(gamma * inv_std / N)", "(gamma * inv_std / (N - 1))")]}),
    Variant("alt_sign_error", "bn_backward_fast", "buggy", "+ dbeta instead of - dbeta",
            {"test_alt_dx"}, {ALT: [("N * dout - dbeta", "N * dout + dbeta")]}),
    Variant("alt_dbeta_1xD", "bn_backward_fast", "buggy", "dbeta kept as (1, D)",
            {"test_alt_dparams"}, {ALT: [("dbeta = dout.sum(axis=0)", "dbeta = dout.sum(axis=0, keepdims=True)")]}),
    Variant("alt_missing_inv_std", "bn_backward_fast", "buggy", "dx without 1/sqrt(var + eps)",
            {"test_alt_dx"}, {ALT: [("(gamma * inv_std / N)", "(gamma / N)")]}),
    # ---- correct variants
    Variant("alt_cs231n_form", "bn_backward_fast", "correct", "through dxhat = gamma * dout",
            cells={ALT: '''
def batchnorm_backward_alt(dout, cache):
    xhat, gamma, inv_std, N = cache["xhat"], cache["gamma"], cache["inv_std"], cache["N"]
    dxhat = dout * gamma
    dx = inv_std / N * (N * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0))
    return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)
'''}),
    Variant("alt_bnkit_form", "bn_backward_fast", "correct", "gamma * inv_std * (dout - (dbeta + xhat * dgamma) / N)",
            edits={ALT: [("dx = (gamma * inv_std / N) * (N * dout - dbeta - xhat * dgamma)",
                          "dx = gamma * inv_std * (dout - (dbeta + xhat * dgamma) / N)")]}),
    Variant("alt_float32_path", "bn_backward_fast", "correct",
            "a float32 path (computes in float32 when the input is float32, float64 otherwise): full marks, "
            "the case at scale included",
            cells={ALT: '''
def batchnorm_backward_alt(dout, cache):
    xhat, gamma, inv_std, N = cache["xhat"], cache["gamma"], cache["inv_std"], cache["N"]
    if dout.dtype == np.float32:  # half the memory traffic
        xhat, gamma, inv_std = (np.asarray(a, dtype=np.float32) for a in (xhat, gamma, inv_std))
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dx = (gamma * inv_std / N) * (N * dout - dbeta - xhat * dgamma)
    return dx.astype(dout.dtype), dgamma.astype(dout.dtype), dbeta
'''}),
    Variant("alt_einsum", "bn_backward_fast", "correct", "written with np.einsum: full marks, the case at scale included",
            cells={ALT: '''
def batchnorm_backward_alt(dout, cache):
    xhat, gamma, inv_std, N = cache["xhat"], cache["gamma"], cache["inv_std"], cache["N"]
    dbeta = np.einsum("nd->d", dout)
    dgamma = np.einsum("nd,nd->d", dout, xhat)
    dx = np.einsum("d,nd->nd", gamma * inv_std / N, N * dout - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta
'''}),
    Variant("alt_from_xc_and_std", "bn_backward_fast", "correct", "from the centred x and std, not xhat",
            cells={ALT: '''
def batchnorm_backward_alt(dout, cache):
    xc, std, gamma, N = cache["xc"], cache["std"], cache["gamma"], cache["N"]
    dbeta = np.sum(dout, axis=0)
    dgamma = np.sum(dout * xc, axis=0) / std
    dx = gamma / (N * std) * (N * dout - dbeta - xc / std * dgamma)
    return dx, dgamma, dbeta
'''}),
]

SP, LN, ND = "spatial", "layernorm", "batchnorm_nd"
BN_SPATIAL_LAYERNORM = [
    Variant("spatial_reshape_without_transpose", "bn_spatial_layernorm", "buggy", "reshape(-1, C) of NCHW mixes channels",
            {"test_spatial_forward", "test_spatial_backward"},
            {SP: [("x.transpose(0, 2, 3, 1).reshape(-1, C)", "x.reshape(-1, C)"),
                  ("out2.reshape(N, H, W, C).transpose(0, 3, 1, 2)", "out2.reshape(N, C, H, W)"),
                  ("dout.transpose(0, 2, 3, 1).reshape(-1, C)", "dout.reshape(-1, C)"),
                  ("dx2.reshape(N, H, W, C).transpose(0, 3, 1, 2)", "dx2.reshape(N, C, H, W)")]}),
    Variant("spatial_backward_wrong_inverse", "bn_spatial_layernorm", "buggy", "dx reshaped back without the transpose",
            {"test_spatial_backward"},
            {SP: [("dx2.reshape(N, H, W, C).transpose(0, 3, 1, 2)", "dx2.reshape(N, C, H, W)")]}),
    Variant("spatial_stats_per_position", "bn_spatial_layernorm", "buggy", "statistics per (c, h, w), over N only",
            {"test_spatial_forward", "test_spatial_backward"},
            {SP: [("x.transpose(0, 2, 3, 1).reshape(-1, C)", "x.reshape(N, -1)"),
                  ("batchnorm_forward(x2, gamma, beta, bn_param)", "batchnorm_forward(x2, np.repeat(gamma, H * W), np.repeat(beta, H * W), bn_param)"),
                  ("out2.reshape(N, H, W, C).transpose(0, 3, 1, 2)", "out2.reshape(N, C, H, W)"),
                  ("dout.transpose(0, 2, 3, 1).reshape(-1, C)", "dout.reshape(N, -1)"),
                  ("dx2.reshape(N, H, W, C).transpose(0, 3, 1, 2)", "dx2.reshape(N, C, H, W)")]}),
    Variant("layernorm_over_batch", "bn_spatial_layernorm", "buggy", "layer norm statistics over axis 0",
            {"test_layernorm_forward", "test_layernorm_backward"},
            {LN: [("mu = x.mean(axis=1, keepdims=True)", "mu = x.mean(axis=0, keepdims=True)"),
                  ("(xc ** 2).mean(axis=1, keepdims=True)", "(xc ** 2).mean(axis=0, keepdims=True)")]}),
    Variant("layernorm_eps_outside_sqrt", "bn_spatial_layernorm", "buggy", "eps outside the square root",
            {"test_layernorm_forward", "test_layernorm_backward"},
            {LN: [("1.0 / np.sqrt((xc ** 2).mean(axis=1, keepdims=True) + eps)",
                   "1.0 / (np.sqrt((xc ** 2).mean(axis=1, keepdims=True)) + eps)")]}),
    Variant("layernorm_dgamma_wrong_axis", "bn_spatial_layernorm", "buggy", "dgamma summed over features",
            {"test_layernorm_backward"}, {LN: [("dgamma = (dout * xhat).sum(axis=0)", "dgamma = (dout * xhat).sum(axis=1)")]}),
    Variant("layernorm_dx_missing_term", "bn_spatial_layernorm", "buggy", "dx misses the mean path",
            {"test_layernorm_backward"}, {LN: [("D * dxhat - dxhat.sum(axis=1, keepdims=True)", "D * dxhat")]}),
    Variant("layernorm_dx_wrong_axis", "bn_spatial_layernorm", "buggy", "dx's sums over the batch axis",
            {"test_layernorm_backward"}, {LN: [("dxhat.sum(axis=1, keepdims=True)", "dxhat.sum(axis=0, keepdims=True)")]}),
    Variant("nd_dgamma_not_summed", "bn_spatial_layernorm", "buggy", "the (N, D) helper's dgamma not summed",
            {"test_spatial_backward"}, {ND: [("dgamma = (dout * xhat).sum(axis=0)", "dgamma = dout * xhat"),
                                             ("- xhat * dgamma)", "- xhat * dgamma.sum(axis=0))")]}),
    Variant("layernorm_dbeta_wrong_axis", "bn_spatial_layernorm", "buggy", "dbeta summed over features",
            {"test_layernorm_backward"}, {LN: [("dbeta = dout.sum(axis=0)", "dbeta = dout.sum(axis=1)")]}),
    # ---- correct variants
    Variant("spatial_moveaxis", "bn_spatial_layernorm", "correct", "np.moveaxis instead of transpose",
            edits={SP: [("x.transpose(0, 2, 3, 1).reshape(-1, C)", "np.moveaxis(x, 1, -1).reshape(-1, C)"),
                        ("out2.reshape(N, H, W, C).transpose(0, 3, 1, 2)", "np.moveaxis(out2.reshape(N, H, W, C), -1, 1)")]}),
    Variant("spatial_direct_axes", "bn_spatial_layernorm", "correct", "statistics with axis=(0, 2, 3), no reshape",
            cells={SP: '''
def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    eps, m = bn_param.get("eps", 1e-5), bn_param.get("momentum", 0.1)
    N, C, H, W = x.shape
    g, b = gamma.reshape(1, C, 1, 1), beta.reshape(1, C, 1, 1)
    if bn_param.get("mode", "train") == "train":
        mu = x.mean(axis=(0, 2, 3), keepdims=True)
        var = x.var(axis=(0, 2, 3), keepdims=True)
        n = N * H * W
        bn_param["running_mean"] = (1 - m) * bn_param.get("running_mean", np.zeros(C)) + m * mu.ravel()
        bn_param["running_var"] = (1 - m) * bn_param.get("running_var", np.ones(C)) + m * var.ravel() * n / (n - 1)
    else:
        mu = bn_param["running_mean"].reshape(1, C, 1, 1)
        var = bn_param["running_var"].reshape(1, C, 1, 1)
    inv_std = 1 / np.sqrt(var + eps)
    xhat = (x - mu) * inv_std
    return g * xhat + b, (xhat, g, inv_std)


def spatial_batchnorm_backward(dout, cache):
    xhat, g, inv_std = cache
    n = dout.size // dout.shape[1]
    dbeta = dout.sum(axis=(0, 2, 3))
    dgamma = (dout * xhat).sum(axis=(0, 2, 3))
    dx = g * inv_std * (dout - (dbeta.reshape(g.shape) + xhat * dgamma.reshape(g.shape)) / n)
    return dx, dgamma, dbeta
'''}),
    Variant("layernorm_via_batchnorm", "bn_spatial_layernorm", "correct", "CS231n's trick: batch norm of x.T",
            cells={LN: '''
def layernorm_forward(x, gamma, beta, ln_param):
    eps = ln_param.get("eps", 1e-5)
    D = x.shape[1]
    xhat_t, bn_cache = batchnorm_forward(x.T, np.ones(x.shape[0]), np.zeros(x.shape[0]),
                                         {"mode": "train", "eps": eps})
    xhat = xhat_t.T
    return gamma * xhat + beta, (bn_cache, xhat, gamma)


def layernorm_backward(dout, cache):
    bn_cache, xhat, gamma = cache
    dx_t, _, _ = batchnorm_backward((dout * gamma).T, bn_cache)
    return dx_t.T, (dout * xhat).sum(axis=0), dout.sum(axis=0)
'''}),
    Variant("layernorm_backward_loops", "bn_spatial_layernorm", "correct",
            "layer norm's backward in plain Python loops (O(N*D)): finishes the case at scale, (2, 200000), in "
            "seconds; full marks",
            edits={LN: [("""    xhat, gamma, inv_std = cache
    D = xhat.shape[1]
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dxhat = dout * gamma
    dx = inv_std / D * (D * dxhat - dxhat.sum(axis=1, keepdims=True)
                        - xhat * (dxhat * xhat).sum(axis=1, keepdims=True))""", """    xhat, gamma, inv_std = cache
    N, D = xhat.shape
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dx = np.empty(dout.shape)
    g = gamma.tolist()
    for i in range(N):  # one sample at a time, one element at a time
        d, h, s = dout[i].tolist(), xhat[i].tolist(), float(inv_std[i, 0])
        dxh = [d[j] * g[j] for j in range(D)]
        a = 0.0
        b = 0.0
        for j in range(D):
            a += dxh[j]
            b += dxh[j] * h[j]
        dx[i] = [s / D * (D * dxh[j] - a - h[j] * b) for j in range(D)]""")]}),
    Variant("layernorm_np_var", "bn_spatial_layernorm", "correct", "np.var for the per-sample variance",
            edits={LN: [("1.0 / np.sqrt((xc ** 2).mean(axis=1, keepdims=True) + eps)",
                         "1.0 / np.sqrt(x.var(axis=1, keepdims=True) + eps)")]}),
]

# ---- integrity: cheats and damaged notebooks, through the same autograde runs
INTEGRITY = [
    Variant("cheat_import_bnkit", "bn_forward", "integrity", "imports bnkit.fast: the import is blocked",
            ALL_FORWARD, cells={FWD: '''
def batchnorm_forward(x, gamma, beta, bn_param):
    from bnkit.fast import batchnorm_forward as reference
    return reference(x, gamma, beta, bn_param)
'''}),
    Variant("cheat_torch", "bn_forward", "integrity", "uses torch's batch_norm: the import is blocked",
            ALL_FORWARD, cells={FWD: '''
def batchnorm_forward(x, gamma, beta, bn_param):
    import torch
    t = torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, torch.from_numpy(gamma),
                                       torch.from_numpy(beta), training=True)
    return t.numpy(), None
'''}),
    Variant("cheat_gc_finds_reference", "bn_forward", "integrity",
            "digs bnkit's function out of memory (gc): lockdown dropped it, and if found it is refused as not theirs",
            ALL_FORWARD, cells={FWD: '''
import gc as g
_ref = [f for f in g.get_objects() if callable(f) and getattr(f, "__name__", "") == "batchnorm_forward"
        and "bnkit" in (getattr(f, "__module__", "") or "")][0]
batchnorm_forward = _ref
'''}),
    Variant("cheat_unblock_and_assign", "bn_forward", "integrity",
            "removes the import blocker by an indirect route and hands in bnkit's function: refused by its origin",
            ALL_FORWARD, cells={FWD: '''
import sys as _s
getattr(_s, "meta" + "_path").pop(0)
from bnkit import fast as _f
batchnorm_forward = _f.batchnorm_forward
'''}),
    Variant("cheat_unblock_and_wrap", "bn_forward", "integrity",
            "removes the import blocker by an indirect route and wraps bnkit's function: the call is traced",
            ALL_FORWARD, cells={FWD: '''
import sys as _s
_mp = getattr(_s, "meta" + "_path")
del _mp[0]
from bnkit import fast as _f


def batchnorm_forward(x, gamma, beta, bn_param):
    return _f.batchnorm_forward(x, gamma, beta, bn_param)
'''}),
    Variant("cheat_reference_in_child_process", "bn_forward", "integrity",
            "runs bnkit in a child process, reached without naming it: the process start is traced",
            ALL_FORWARD, cells={FWD: '''
import json as _json
import os as _os
import sys as _sys

_CHILD = "import sys, json, numpy as np; from bnkit import fast; a = json.load(sys.stdin); " \\
         "print(json.dumps(fast.batchnorm_forward(np.array(a[0]), np.array(a[1]), np.array(a[2]), {})[0].tolist()))"


def batchnorm_forward(x, gamma, beta, bn_param):
    with open("/tmp/_bn_in.json", "w") as f:
        _json.dump([x.tolist(), gamma.tolist(), beta.tolist()], f)
    run = getattr(_os, "po" + "pen")
    out = run(f"{_sys.executable} -c '{_CHILD}' < /tmp/_bn_in.json").read()
    return np.array(_json.loads(out)), None
'''}),
    Variant("cheat_patch_allclose", "bn_forward", "integrity",
            "a buggy forward plus np.allclose/assert_allclose/rel_error patched to always agree",
            {"test_train_output"},
            edits={FWD: [("xc / np.sqrt(var + eps)", "xc / (np.sqrt(var) + eps)"),
                         ("def batchnorm_forward(", "np.allclose = lambda *a, **k: True\n"
                          "np.testing.assert_allclose = lambda *a, **k: None\n"
                          "np.array_equal = lambda *a, **k: True\n"
                          "from bnkit import gradcheck as _gc\n_gc.rel_error = lambda a, b: 0.0\n"
                          "rel_error = _gc.rel_error\n\n\ndef batchnorm_forward(")]}),
    Variant("cheat_eq_always_true", "bn_forward", "integrity",
            "returns an ndarray subclass whose == / allclose always say yes: exact type required",
            ALL_FORWARD, cells={FWD: '''
class Agreeable(np.ndarray):
    def __eq__(self, other):
        return True
    __array_priority__ = 1000


def batchnorm_forward(x, gamma, beta, bn_param):
    return np.zeros_like(x).view(Agreeable), None
'''}),
    Variant("cheat_own_grade", "bn_forward", "integrity",
            "a wrong forward plus its own grade() that passes everything: the test cells import the real one",
            ALL_FORWARD, cells={FWD: '''
def grade(*args, **kwargs):
    print("all tests passed")


def batchnorm_forward(x, gamma, beta, bn_param):
    return x.copy(), None
'''}),
    Variant("cheat_swallow_errors", "bn_forward", "integrity",
            "silences exceptions in IPython (set_custom_exc) around a correct forward: the old grader zeroed it; "
            "now what the kernel raises or hides decides nothing, so full marks, and it is reported",
            frozenset(), report=("set_custom_exc",), edits={FWD: [("def batchnorm_forward(",
                                                                 "get_ipython().set_custom_exc((Exception,), lambda *a, **k: None)\n\n\n"
                                                                 "def batchnorm_forward(")]}),
    Variant("edited_test_cell", "bn_forward", "integrity",
            "a buggy forward and its test cell replaced by `pass`: the test is restored and fails",
            {"test_train_output"}, edits={FWD: [("xc / np.sqrt(var + eps)", "xc / (np.sqrt(var) + eps)")]},
            mutation="edit:test_train_output"),
    Variant("deleted_test_cell", "bn_forward", "integrity",
            "a buggy eval and its test cell deleted: RestoreMissingCells restores it and it fails",
            {"test_eval"}, edits={FWD: [("np.sqrt(running_var + eps)", "np.sqrt(running_var)")]},
            mutation="delete:test_eval"),
    Variant("retyped_test_cell", "bn_forward", "integrity",
            "the running-stats test deleted and retyped as a new, unlocked cell that passes: the original returns",
            {"test_running_stats"}, edits={FWD: [("momentum * var * N / (N - 1)", "momentum * var")]},
            mutation="retype:test_running_stats"),
    Variant("infinite_loop", "bn_forward", "integrity",
            "eval mode never returns: that cell times out, the run goes on",
            {"test_eval"}, edits={FWD: [("        cache = None\n", "        cache = None\n        while True:\n            pass\n")]}),
    Variant("invalid_json", "bn_forward", "integrity", "the file is not JSON: a clear failure for this student only",
            None, mutation="invalid_json"),
    Variant("metadata_stripped", "bn_forward", "integrity",
            "every cell's nbgrader metadata removed (an editor that drops it): the source's cells are put "
            "back by RestoreMissingCells, the solution typed in place of its cell is kept, and a correct "
            "solution gets its marks (issue 14: an accident the grader can repair)", frozenset(),
            mutation="strip_metadata"),
    Variant("alt_calls_staged", "bn_backward_fast", "residual",
            "the closed form just calls the staged backward: right numbers, full marks (issue 14: the shape of "
            "the code is a code review); the report and the formgrader show it, ranked strong",
            frozenset(), report=("code review: [strong]", "calls batchnorm_backward"), cells={ALT: '''
def batchnorm_backward_alt(dout, cache):
    return batchnorm_backward(dout, cache)
'''}),
    Variant("alt_is_staged_alias", "bn_backward_fast", "residual",
            "batchnorm_backward_alt = batchnorm_backward: full marks, shown to the instructor as strong evidence",
            frozenset(), report=("code review: [strong]", "under another name"),
            cells={ALT: "batchnorm_backward_alt = batchnorm_backward\n"}),
    Variant("alt_calls_staged_copy", "bn_backward_fast", "residual",
            "the closed form calls a renamed copy of the staged backward (same code): full marks, reported",
            frozenset(), report=("code review: [strong]", "renamed copy"), mutation="alt_via_copy"),
]

# ---- issue 8: cases by class (see the issue's "What was measured"); each states its grades.
FWD_BUG = [("xc / np.sqrt(var + eps)", "xc / (np.sqrt(var) + eps)")]  # a wrong training output
ZERO_FORWARD = {"test_train_output": 0, "test_running_stats": 0, "test_eval": 0}


def _before_forward(code, bug=True):
    """Edits that put `code` above the student's forward (buggy training output unless bug=False)."""
    return {FWD: (FWD_BUG if bug else []) + [("def batchnorm_forward(", code.strip("\n") + "\n\n\ndef batchnorm_forward(")]}


def _inside_forward(code):
    """Edits that put `code` at the start of the forward's body (after the docstring)."""
    return {FWD: [('    mode = bn_param.get("mode", "train")\n',
                   "".join("    " + line + "\n" for line in code.strip("\n").split("\n")) +
                   '    mode = bn_param.get("mode", "train")\n')]}


ISSUE8 = [
    # -- marks not earned: each attack leaves the wrong forward as wrong as it is, and is reported
    Variant("attack_patch_harness_module", "bn_forward", "integrity",
            "replaces bngrade.harness.run_cases with a function that prints 'ok': no results, zero, reported",
            set(ALL_FORWARD), expect=ZERO_FORWARD, report=("imports bngrade.harness", "assigns to _h.run_cases"),
            edits=_before_forward("import bngrade.harness as _h\n_h.run_cases = lambda *a, **k: print('all passed')"),
            feedback={"test_train_output": ["no result"]}),
    Variant("attack_patch_harness_globals", "bn_forward", "integrity",
            "the issue's attack: run_cases.__globals__['run_cases'] = a fake: no results, zero, reported",
            set(ALL_FORWARD), expect=ZERO_FORWARD, report=("__globals__",),
            edits=_before_forward("from bngrade.harness import run_cases as _rc\n"
                                  "_rc.__globals__['run_cases'] = lambda *a, **k: print('ok')")),
    Variant("attack_patch_json", "bn_forward", "integrity",
            "patches json.dump (what the harness writes with) to write a forged 'all passed' record: "
            "malformed results, zero",
            set(ALL_FORWARD), expect=ZERO_FORWARD, report=("assigns to json.dump",),
            edits=_before_forward("import json\n_FORGED = '{\"format\": \"bngrade-results/1\", \"verdict\": \"all passed\"}'\n"
                                  "json.dump = lambda obj, f, **k: f.write(_FORGED)")),
    Variant("attack_patch_json_dumps", "bn_forward", "integrity",
            "patches json.dumps, which the kernel's own Jupyter messages use: the grader sees a broken kernel, "
            "that student alone scores zero (graded, not left out)",
            set(ALL_FORWARD), expect=ZERO_FORWARD, report=("assigns to json.dumps",),
            edits=_before_forward("import json\njson.dumps = lambda *a, **k: '{}'")),
    Variant("attack_input_transformer", "bn_forward", "integrity",
            "an IPython input transformer turns every run_cases(...) into print(...): no results, zero",
            set(ALL_FORWARD), expect=ZERO_FORWARD, report=("input_transformers_post",),
            edits=_before_forward("get_ipython().input_transformers_post.append(\n"
                                  "    lambda lines: [line.replace('run_cases(', 'print(') for line in lines])")),
    Variant("attack_shadow_bngrade", "bn_forward", "integrity",
            "writes a shadow bngrade/ package beside the notebook whose run_cases forges results: the sandbox's "
            "bngrade comes first or the forgery is judged outside; zero",
            set(ALL_FORWARD), report=("opens a file for writing", "os.makedirs"),
            edits=_before_forward(
                "import os\nos.makedirs('bngrade', exist_ok=True)\n"
                "open('bngrade/__init__.py', 'w').close()\n"
                "with open('bngrade/harness.py', 'w') as _f:\n"
                "    _f.write('def run_cases(grade_id, cases, **funcs):\\n    print(\"all tests passed\")\\n')\n"
                "import sys\nsys.path.insert(0, os.getcwd())\nsys.modules.pop('bngrade', None)")),
    Variant("attack_shadow_bnkit", "bn_forward", "integrity",
            "writes a shadow bnkit/ beside the notebook (gradcheck.rel_error always 0, a fake fast): the "
            "reference is computed in the grader's own process; the bug loses its marks",
            {"test_train_output"}, report=("opens a file for writing",),
            edits=_before_forward(
                "import os\nos.makedirs('bnkit', exist_ok=True)\n"
                "with open('bnkit/__init__.py', 'w') as _f:\n    _f.write('')\n"
                "with open('bnkit/gradcheck.py', 'w') as _f:\n"
                "    _f.write('def rel_error(a, b):\\n    return 0.0\\n\\ndef numerical_gradient(*a, **k):\\n    return 0\\n')\n"
                "with open('bnkit/fast.py', 'w') as _f:\n"
                "    _f.write('def batchnorm_forward(x, g, b, p):\\n    return x, None\\n')")),
    Variant("attack_thread_forges_results", "bn_forward", "integrity",
            "a daemon thread keeps overwriting $BNGRADE_RESULTS/*.json with forged records while the tests run: "
            "whatever the grader reads is judged against bnkit outside; the bug loses its marks",
            {"test_train_output"}, report=("threads", "os.environ"),
            edits=_before_forward(
                "import os, threading, time, json as _j\n"
                "def _forge():\n"
                "    d = os.environ.get('BNGRADE_RESULTS')\n"
                "    for _ in range(2000):\n"
                "        if d and os.path.isdir(d):\n"
                "            for g in ('test_train_output',):\n"
                "                try:\n"
                "                    with open(os.path.join(d, g + '.json'), 'w') as f:\n"
                "                        f.write('{\"format\": \"bngrade-results/1\", \"grade_id\": \"' + g + '\", \"cases\": []}')\n"
                "                except OSError:\n"
                "                    pass\n"
                "        time.sleep(0.005)\n"
                "threading.Thread(target=_forge, daemon=True).start()")),
    Variant("attack_ctypes_reference", "bn_forward", "integrity",
            "runs `import bnkit.fast` through ctypes (PyRun_SimpleString) to reach the reference: it is not in "
            "the sandbox; the bug loses its marks",
            {"test_train_output"}, report=("ctypes",),
            edits=_before_forward(
                "import ctypes\n"
                "ctypes.pythonapi.PyRun_SimpleString(b'import builtins\\ntry:\\n    import bnkit.fast as f\\n'\n"
                "                                    b'    builtins._ref = f.batchnorm_forward\\nexcept Exception:\\n'\n"
                "                                    b'    builtins._ref = None\\n')")),
    Variant("attack_read_reference_source", "bn_forward", "integrity",
            "looks for bnkit/fast.py on disk (sys.path, /work, /root, /tmp) to exec it: not there in "
            "the sandbox, so its own (wrong) forward is graded",
            {"test_train_output"}, report=("calls exec",),
            edits=_before_forward(
                "import glob, sys\n_found = [p for d in sys.path + ['/work/*', '/work/*/*', '/root/*', '/tmp/*']\n"
                "          for p in glob.glob(d + '/bnkit/fast.py')][:1]\n"
                "_ns = {}\nif _found:\n    exec(open(_found[0]).read(), _ns)\n"
                "_stolen = _ns.get('batchnorm_forward')")),
    Variant("attack_forge_results_after_tests", "bn_forward", "integrity",
            "a cell added after the tests rewrites every result file with a record claiming the reference's "
            "answer (its own numbers): judged outside, the bug still fails",
            {"test_train_output"}, report=("opens a file for writing",), edits={FWD: FWD_BUG},
            append="import os, json\n"
                   "_d = os.environ.get('BNGRADE_RESULTS')\n"
                   "for _name in (os.listdir(_d) if _d else []):\n"
                   "    _p = os.path.join(_d, _name)\n"
                   "    _rec = json.load(open(_p))\n"
                   "    _rec['cases'] = _rec['cases'] * 3\n"
                   "    with open(_p, 'w') as _f:\n"
                   "        json.dump(_rec, _f)\n"),
    Variant("attack_monkeypatch_numpy", "bn_forward", "integrity",
            "patches np.allclose, np.testing.assert_allclose and np.array_equal: the comparison runs in the "
            "grader; the bug loses its marks, nothing else changes",
            {"test_train_output"}, report=("assigns to np.allclose", "assigns to np.testing.assert_allclose"),
            edits=_before_forward("np.allclose = lambda *a, **k: True\nnp.array_equal = lambda *a, **k: True\n"
                                  "np.testing.assert_allclose = lambda *a, **k: None")),
    Variant("attack_patch_random_inputs", "bn_forward", "integrity",
            "a correct forward, and np.random.RandomState patched so the kernel builds easy inputs: the grader "
            "rebuilds the true inputs, so the answers to the wrong questions fail everywhere",
            set(ALL_FORWARD), expect=ZERO_FORWARD, report=("assigns to np.random.RandomState",),
            edits=_before_forward("_RS = np.random.RandomState\nnp.random.RandomState = lambda seed=None: _RS(99991)",
                                  bug=False)),
    Variant("attack_reads_course_files", "bn_forward", "integrity",
            "a correct forward that tries to print the source notebook, the gradebook and the config into its "
            "feedback and to plant an IPython startup file: none is visible or writable; full marks for the "
            "correct work, the attempt is reported, the control students after it are unchanged",
            frozenset(), report=("os.makedirs", "opens a file for writing"),
            edits=_before_forward(
                "import os\n_seen = {}\n"
                "for _p in ('../../source/bn_forward/bn_forward.ipynb', '../../gradebook.db', "
                "'../../nbgrader_config.py', '/work/main/assignments/nbgrader_config.py'):\n"
                "    try:\n        _seen[_p] = open(_p, 'rb').read()[:200]\n    except OSError as e:\n"
                "        _seen[_p] = repr(e)\n"
                "print(_seen)\n"
                "try:\n"
                "    _d = os.path.expanduser('~/.ipython/profile_default/startup')\n"
                "    os.makedirs(_d, exist_ok=True)\n"
                "    with open(os.path.join(_d, '00-pass.py'), 'w') as _f:\n"
                "        _f.write('import bngrade.harness as h\\nh.run_cases = lambda *a, **k: None\\n')\n"
                "except OSError as e:\n    print(e)", bug=False)),
    Variant("attack_leak_hidden_cases", "bn_forward", "integrity",
            "a correct forward and a cell after the tests that prints the hidden case list the kernel ran "
            "(checks and seeds): full marks, and the feedback keeps only the grader's outputs, so no seed leaks",
            frozenset(), report=(), append="print('hidden cases:', cases)\nprint(repr(cases))\n"),
    # -- honest students: words never count, stderr and warnings are not failures, damaged notebooks are graded
    Variant("honest_words_in_docstring", "bn_forward", "honest",
            "the words inspect, subprocess, sys.modules, eval, importlib in a docstring, a comment and a print: "
            "full marks, nothing to report",
            frozenset(), expect={"test_train_output": 3, "test_running_stats": 2, "test_eval": 2}, report=(),
            edits={FWD: [('    mode = bn_param.get("mode", "train")\n',
                          '    """Not like inspect.getsource or subprocess.run: no sys.modules, eval or importlib."""\n'
                          '    # inspect, subprocess, __globals__, ctypes: words, not code\n'
                          '    print("inspect subprocess sys.modules", end="")\n'
                          '    mode = bn_param.get("mode", "train")\n')]}),
    Variant("honest_logging_warning", "bn_forward", "honest",
            "logging.warning inside a correct forward (old grader: 2/7): full marks",
            frozenset(), expect={"test_train_output": 3, "test_running_stats": 2, "test_eval": 2}, report=(),
            edits=_inside_forward('import logging\nlogging.warning("batchnorm_forward called with %s", x.shape)')),
    Variant("honest_print_to_stderr", "bn_forward", "honest",
            "a print to stderr inside a correct forward (old grader: 0/7): full marks",
            frozenset(), expect={"test_train_output": 3, "test_running_stats": 2, "test_eval": 2}, report=(),
            edits=_inside_forward('import sys\nprint("debug: x", x.shape, file=sys.stderr)')),
    Variant("honest_warnings_warn", "bn_forward", "honest",
            "warnings.warn inside a correct forward: full marks",
            frozenset(), expect={"test_train_output": 3, "test_running_stats": 2, "test_eval": 2}, report=(),
            edits=_inside_forward('import warnings\nwarnings.warn("slow path")')),
    Variant("honest_timeit_magic", "bn_forward", "honest",
            "an IPython %timeit line in the solution cell: it parses as IPython runs it; full marks, "
            "nothing to report",
            frozenset(), expect={"test_train_output": 3, "test_running_stats": 2, "test_eval": 2}, report=(),
            edits=_before_forward("%timeit np.ones(10).sum()", bug=False)),
    Variant("duplicated_cell_last_correct", "bn_forward", "honest",
            "the solution cell copy-pasted (duplicate grade_id), first copy buggy, last copy right: graded "
            "(old grader: not graded, 0), the last copy counts, the instructor is told",
            frozenset(), expect={"test_train_output": 3, "test_running_stats": 2, "test_eval": 2},
            report=("grade id 'batchnorm_forward' appears in 2 cells",), edits={FWD: FWD_BUG},
            mutation="duplicate_edited_first:batchnorm_forward"),
    Variant("duplicated_cell_last_buggy", "bn_forward", "honest",
            "the solution cell copy-pasted, the last copy buggy (eps outside the sqrt): the last copy is graded",
            {"test_train_output"}, report=("graded the last copy",), edits={FWD: FWD_BUG},
            mutation="duplicate_edited_last:batchnorm_forward"),
    Variant("duplicated_test_cell", "bn_backward_graph", "honest",
            "a test cell copy-pasted below itself: the last copy is graded, the other runs as a plain cell",
            frozenset(), report=("appears in 2 cells",), mutation="duplicate_edited_last:test_backward_dx"),
    Variant("eval_treated_as_training", "bn_forward", "feedback",
            "'eval' taken for training (if mode != 'test': train): the 'eval' hint",
            {"test_eval"}, partial={"test_eval"}, feedback={"test_eval": ["treated mode 'eval' as training"]},
            edits={FWD: [('    if mode == "train":', '    if mode != "test":'),
                         ('elif mode in ("test", "eval"):', 'elif mode == "test":')]}),
    Variant("error_without_grader_internals", "bn_forward", "feedback",
            "the training branch raises: the student sees the exception's type, never the grader's files (its "
            "message and line are withheld: the test cell's hidden cases were in the kernel when it raised)",
            {"test_train_output", "test_running_stats"},
            expect={"test_train_output": 0, "test_running_stats": 0, "test_eval": 2},
            feedback={"test_train_output": ["RuntimeError"]},
            edits={FWD: [("        mu = x.mean(axis=0)\n",
                          "        raise RuntimeError('my forward is not finished')\n        mu = x.mean(axis=0)\n")]}),
    # -- the closed form must not call the staged backward: a code review since issue 14 (no score changes;
    #    the report and the formgrader show the evidence, ranked)
    Variant("alt_default_argument", "bn_backward_fast", "residual",
            "the staged backward smuggled in as a default argument: full marks, reported (strong)", frozenset(),
            report=("code review: [strong]", "batchnorm_backward"), cells={ALT: '''
def batchnorm_backward_alt(dout, cache, _impl=batchnorm_backward):
    return _impl(dout, cache)
'''}),
    Variant("alt_lambda", "bn_backward_fast", "residual", "a lambda around the staged backward: full marks, reported",
            frozenset(), report=("code review: [strong]",),
            cells={ALT: "batchnorm_backward_alt = lambda dout, cache: batchnorm_backward(dout, cache)\n"}),
    Variant("alt_shared_helper_does_the_work", "bn_backward_fast", "residual",
            "staged and closed form both call one helper holding the gate-by-gate backward: full marks, reported",
            frozenset(), report=("code review: [strong]", "share _gates"),
            edits={BWD: [("def batchnorm_backward(dout, cache):", "def _gates(dout, cache):"),
                         ("    return dx, dgamma, dbeta", "    return dx, dgamma, dbeta\n\n\n"
                          "def batchnorm_backward(dout, cache):\n    return _gates(dout, cache)")]},
            cells={ALT: "def batchnorm_backward_alt(dout, cache):\n    return _gates(dout, cache)\n"}),
    Variant("alt_honest_shared_unpack", "bn_backward_fast", "honest",
            "an honest helper that only unpacks the cache, shared by both backwards: full marks",
            frozenset(), expect={"test_alt_dx": 3, "test_alt_dparams": 2},
            edits={BWD: [('    xc, std, inv_std, xhat, gamma, N = (cache[k] for k in ("xc", "std", "inv_std", "xhat", "gamma", "N"))',
                          '    xc, std, inv_std, xhat, gamma, N = unpack(cache)')]},
            cells={ALT: '''
def unpack(cache):
    """The cache's entries in one fixed order (used by batchnorm_backward too)."""
    return tuple(cache[k] for k in ("xc", "std", "inv_std", "xhat", "gamma", "N"))


def batchnorm_backward_alt(dout, cache):
    """Closed form: unlike batchnorm_backward, no gate-by-gate intermediates."""
    _, _, inv_std, xhat, gamma, N = unpack(cache)
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    return (gamma * inv_std / N) * (N * dout - dbeta - xhat * dgamma), dgamma, dbeta
'''}),
    Variant("alt_eval_built_name", "bn_backward_fast", "residual",
            "reaches the staged backward through eval of a built string: beyond static analysis, so NOT caught "
            "(full marks); the report flags the eval for the instructor",
            frozenset(), report=("calls eval",), cells={ALT: '''
def batchnorm_backward_alt(dout, cache):
    return eval("batchnorm" + "_backward")(dout, cache)
'''}),
]

from catalogue_hostile import HOSTILE  # noqa: E402 (escape attempts and run-breakers, written with the sandbox)

VARIANTS = BN_FORWARD + BN_BACKWARD_GRAPH + BN_BACKWARD_FAST + BN_SPATIAL_LAYERNORM + INTEGRITY + ISSUE8 + HOSTILE

# Control students, placed in every autograde run (first and last in nbgrader's order): the source
# solution, and one plain bug whose grades are those of its catalogue entry. Their grades must not
# move whatever the other students in the run did.
CONTROL_BUG = {"bn_forward": "eps_outside_sqrt", "bn_backward_graph": "dx_missing_mean_term",
               "bn_backward_fast": "alt_missing_gamma", "bn_spatial_layernorm": "layernorm_dx_missing_term"}
CONTROLS = {"aaa_control_wrong": "bug", "zzz_control_correct": "solution", "zzz_control_wrong": "bug"}
