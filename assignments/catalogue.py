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

kinds: "buggy" (a plausible mistake: must lose points, on the right test),
"correct" (an equivalent correct answer: full marks), "integrity" (a cheat
or a damaged notebook: behaves as the comment says).
"""
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
            {"test_running_stats"}, {FWD: [("momentum * var * N / (N - 1)", "momentum * var")]}),
    Variant("momentum_convention_swapped", "bn_forward", "buggy",
            "CS231n's convention: running = momentum * running + (1 - momentum) * batch",
            {"test_running_stats"},
            {FWD: [("(1 - momentum) * running_mean + momentum * mu", "momentum * running_mean + (1 - momentum) * mu"),
                   ("(1 - momentum) * running_var + momentum * var", "momentum * running_var + (1 - momentum) * var")]}),
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
                   ("var = (xc ** 2).mean(axis=0)", "var = (xc ** 2).mean(axis=0, keepdims=True)")]}),
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
            {"test_eval"}, {FWD: [('elif mode in ("test", "eval"):', 'elif mode == "test":')]}),
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
            "silences exceptions in IPython (set_custom_exc): flagged, every test scores zero",
            ALL_FORWARD, edits={FWD: [("def batchnorm_forward(",
                                       "get_ipython().set_custom_exc((Exception,), lambda *a, **k: None)\n\n\n"
                                       "def batchnorm_forward(")]}),
    Variant("edited_test_cell", "bn_forward", "integrity",
            "a buggy forward and its test cell replaced by `pass`: the test is restored and fails",
            {"test_train_output"}, edits={FWD: [("xc / np.sqrt(var + eps)", "xc / (np.sqrt(var) + eps)")]},
            mutation="edit:test_train_output"),
    Variant("deleted_test_cell", "bn_forward", "integrity",
            "a buggy eval and its test cell deleted: add_missing_cells restores it and it fails",
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
            "every cell's nbgrader metadata removed: nbgrader cannot grade it; a clear failure for this "
            "student only (course.check_submissions says why)", None, mutation="strip_metadata"),
    Variant("alt_calls_staged", "bn_backward_fast", "integrity", "the closed form just calls the staged backward",
            {"test_alt_dx", "test_alt_dparams"}, cells={ALT: '''
def batchnorm_backward_alt(dout, cache):
    return batchnorm_backward(dout, cache)
'''}),
    Variant("alt_is_staged_alias", "bn_backward_fast", "integrity", "batchnorm_backward_alt = batchnorm_backward",
            {"test_alt_dx", "test_alt_dparams"}, cells={ALT: "batchnorm_backward_alt = batchnorm_backward\n"}),
    Variant("alt_calls_staged_copy", "bn_backward_fast", "integrity",
            "the closed form calls a renamed copy of the staged backward (same code)",
            {"test_alt_dx", "test_alt_dparams"}, mutation="alt_via_copy"),
]

VARIANTS = BN_FORWARD + BN_BACKWARD_GRAPH + BN_BACKWARD_FAST + BN_SPATIAL_LAYERNORM + INTEGRITY
