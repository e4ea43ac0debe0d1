"""What the numpy implementations (staged, fast, norms) share: argument
handling on top of `bnkit.conventions`, numerically sound statistics, and
the running-statistics update applied to a bn_param dict.

The conventions themselves (defaults, momentum=None, the recurrence, the
error messages) live in `bnkit.conventions`; nothing here restates them.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from . import conventions


def compute_dtype(x: np.ndarray) -> np.dtype:
    """float16 inputs are computed (and accumulated) in float32."""
    return np.dtype(np.float32) if x.dtype == np.float16 else x.dtype


def check_float_array(name: str, a) -> np.ndarray:
    """`a` as an ndarray; TypeError unless it holds floats."""
    a = np.asarray(a)
    conventions.check_floating(name, np.issubdtype(a.dtype, np.floating), str(a.dtype), a.shape)
    return a


def check_param(name: str, p, expected_shape: Tuple[int, ...], x_shape: Tuple[int, ...]) -> np.ndarray:
    """gamma, beta or a running statistic as a float ndarray of exactly `expected_shape`."""
    p = check_float_array(name, p)
    conventions.check_shape(name, p.shape, expected_shape, x_shape)
    return p


def check_dout(dout, out_shape: Tuple[int, ...]) -> np.ndarray:
    """The upstream gradient as a float ndarray of the forward output's shape."""
    dout = check_float_array("dout", dout)
    conventions.check_dout_shape(dout.shape, out_shape)
    return dout


def first_sample(x: np.ndarray, axes: Tuple[int, ...]) -> np.ndarray:
    """One sample per channel (index 0 along every reduced axis), keepdims.

    Subtracting it before summing is the "shifted data" trick: the summands
    become small, so float32 keeps the digits that matter when |mean| >> spread,
    and x - mean never has to round a large mean. Mathematically it cancels:
    (x - s) - mean(x - s) = x - mean(x), so no gradient flows through it.
    """
    return x[tuple(slice(0, 1) if a in axes else slice(None) for a in range(x.ndim))]


@dataclass
class Spec:
    """Everything about one call that is not the data itself."""

    reduce_axes: Tuple[int, ...]  # every axis but the channel axis
    bshape: Tuple[int, ...]  # (1, C, 1, ...) : how (C,) arrays broadcast against x
    n: int  # values per channel
    mode: str  # 'train' or 'eval'
    eps: float
    momentum: Optional[float]  # None: the cumulative average
    use_batch_stats: bool  # train mode, or running stats not tracked
    dtype: np.dtype  # x's dtype, which the outputs take


def prepare(x, gamma, beta, bn_param: dict, axis: int):
    """Validate a batch-norm call; return (x, gamma, beta, spec).

    The returned x is in the compute dtype (float16 becomes float32);
    gamma and beta too, reshaped to spec.bshape so they broadcast against x.
    `gamma` or `beta` may be None (affine=False): they become 1 and 0.
    Nothing in bn_param changes unless every check passes.
    """
    x = check_float_array("x", x)
    axis = conventions.channel_axis(x.shape, axis)
    C = x.shape[axis]
    dtype = compute_dtype(x)
    gamma = np.ones(C, dtype) if gamma is None else check_param("gamma", gamma, (C,), x.shape)
    beta = np.zeros(C, dtype) if beta is None else check_param("beta", beta, (C,), x.shape)
    if not isinstance(bn_param, dict):
        raise TypeError(f"bn_param must be a dict, got {type(bn_param).__name__}")
    mode = conventions.check_mode(bn_param.get("mode", "train"))
    eps = conventions.check_eps(bn_param.get("eps", conventions.EPS))
    momentum = conventions.check_momentum(bn_param.get("momentum", conventions.MOMENTUM))
    tracking = bn_param.get("track_running_stats", True)
    n = x.size // C if C else 0
    use_batch_stats = mode == "train" or not tracking
    if use_batch_stats:
        conventions.check_enough_values(n, x.shape)
    if tracking:
        for key in ("running_mean", "running_var"):
            if bn_param.get(key) is not None:
                check_param(key, bn_param[key], (C,), x.shape)
        # created lazily, as in CS231n, once every check has passed
        for key, fill in (("running_mean", np.zeros), ("running_var", np.ones)):
            if bn_param.get(key) is None:
                bn_param[key] = fill(C, dtype=dtype)
    reduce_axes = tuple(a for a in range(x.ndim) if a != axis)
    bshape = tuple(C if a == axis else 1 for a in range(x.ndim))
    spec = Spec(reduce_axes, bshape, n, mode, eps, momentum, use_batch_stats, x.dtype)
    gamma = gamma.astype(dtype, copy=False).reshape(bshape)
    beta = beta.astype(dtype, copy=False).reshape(bshape)
    return x.astype(dtype, copy=False), gamma, beta, spec


def update_running_stats(bn_param: dict, spec: Spec, mean: np.ndarray, var: np.ndarray) -> None:
    """Apply `conventions.update_running` to bn_param's running stats (train mode).

    mean, var: (C,) batch mean and *biased* batch variance.
    """
    if not bn_param.get("track_running_stats", True):
        return
    count = (bn_param.get("num_batches_tracked") or 0) + 1
    factor = conventions.momentum_factor(spec.momentum, count)
    rm, rv = bn_param["running_mean"], bn_param["running_var"]
    new_mean, new_var = conventions.update_running(rm, rv, mean, var, spec.n, factor)
    bn_param["running_mean"] = np.asarray(new_mean).astype(rm.dtype)
    bn_param["running_var"] = np.asarray(new_var).astype(rv.dtype)
    bn_param["num_batches_tracked"] = count


def running_stats(bn_param: dict, spec: Spec, dtype) -> Tuple[np.ndarray, np.ndarray]:
    """(mean, var) of eval mode, shaped to broadcast against x."""
    mean = np.asarray(bn_param["running_mean"], dtype).reshape(spec.bshape)
    var = np.asarray(bn_param["running_var"], dtype).reshape(spec.bshape)
    return mean, var
