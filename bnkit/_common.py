"""What the staged and fast implementations share: argument handling,
numerically sound statistics, and the running-statistics recurrence.

Conventions (PyTorch's, see `bnkit.staged.batchnorm_forward` for the full
statement):

* statistics per channel over every axis but the channel axis;
* normalisation uses the biased batch variance;
* running_var is updated with the unbiased one, n / (n - 1) * var;
* running = (1 - momentum) * running + momentum * batch, and momentum=None
  means the cumulative average, momentum_t = 1 / num_batches_tracked.
"""
from dataclasses import dataclass

import numpy as np

from . import _checks


def compute_dtype(x):
    """float16 inputs are computed (and accumulated) in float32."""
    return np.float32 if x.dtype == np.float16 else x.dtype


def first_sample(x, axes):
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

    reduce_axes: tuple  # every axis but the channel axis
    bshape: tuple  # (1, C, 1, ...) : how (C,) arrays broadcast against x
    n: int  # values per channel
    mode: str  # 'train' or 'eval'
    eps: float
    use_batch_stats: bool  # train mode, or running stats not tracked
    dtype: np.dtype  # x's dtype, which the outputs take


def prepare(x, gamma, beta, bn_param, axis):
    """Validate a batch-norm call; return (x, gamma, beta, spec).

    The returned x is in the compute dtype (float16 becomes float32);
    gamma and beta too, reshaped to spec.bshape so they broadcast against x.
    `gamma` or `beta` may be None (affine=False): they become 1 and 0.
    """
    x = _checks.check_float_array("x", x)
    axis = _checks.channel_axis(x, axis)
    C = x.shape[axis]
    dtype = compute_dtype(x)
    gamma = np.ones(C, dtype) if gamma is None else _checks.check_param("gamma", gamma, (C,), x.shape)
    beta = np.zeros(C, dtype) if beta is None else _checks.check_param("beta", beta, (C,), x.shape)
    if not isinstance(bn_param, dict):
        raise TypeError(f"bn_param must be a dict, got {type(bn_param).__name__}")
    mode = _checks.check_mode(bn_param.get("mode", "train"))
    eps = _checks.check_eps(bn_param.get("eps", 1e-5))
    _checks.check_momentum(bn_param.get("momentum", 0.1))
    tracking = bn_param.get("track_running_stats", True)
    n = x.size // C if C else 0
    use_batch_stats = mode == "train" or not tracking
    if use_batch_stats:
        _checks.check_enough_values(n, x.shape)
    if tracking:
        for key in ("running_mean", "running_var"):
            if bn_param.get(key) is not None:
                _checks.check_param(key, bn_param[key], (C,), x.shape)
        # created lazily, as in CS231n, once every check has passed
        for key, fill in (("running_mean", np.zeros), ("running_var", np.ones)):
            if bn_param.get(key) is None:
                bn_param[key] = fill(C, dtype=dtype)
    reduce_axes = tuple(a for a in range(x.ndim) if a != axis)
    bshape = tuple(C if a == axis else 1 for a in range(x.ndim))
    spec = Spec(reduce_axes, bshape, n, mode, eps, use_batch_stats, x.dtype)
    gamma = gamma.astype(dtype, copy=False).reshape(bshape)
    beta = beta.astype(dtype, copy=False).reshape(bshape)
    return x.astype(dtype, copy=False), gamma, beta, spec


def update_running_stats(bn_param, mean, var, n):
    """Apply PyTorch's recurrence to bn_param's running stats (train mode only).

    mean, var: (C,) batch mean and *biased* batch variance.
    """
    if not bn_param.get("track_running_stats", True):
        return
    count = bn_param.get("num_batches_tracked", 0) + 1
    bn_param["num_batches_tracked"] = count
    momentum = bn_param.get("momentum", 0.1)
    factor = 1.0 / count if momentum is None else momentum
    rm, rv = bn_param["running_mean"], bn_param["running_var"]
    unbiased = var * (n / (n - 1))
    bn_param["running_mean"] = ((1 - factor) * rm + factor * mean).astype(rm.dtype)
    bn_param["running_var"] = ((1 - factor) * rv + factor * unbiased).astype(rv.dtype)


def running_stats(bn_param, spec, dtype):
    """(mean, var) of eval mode, shaped to broadcast against x."""
    mean = np.asarray(bn_param["running_mean"], dtype).reshape(spec.bshape)
    var = np.asarray(bn_param["running_var"], dtype).reshape(spec.bshape)
    return mean, var
