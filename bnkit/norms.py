"""Spatial batch norm, layer, instance and group norm.

All of them are `bnkit.fast.normalize_forward` with a different choice of
reduction axes: the book's N-C-H-W cube figure shows which.

    norm        statistics over            gamma, beta vary along
    batch       N, H, W   (per channel)    C
    layer       C, H, W   (per sample)     C, H, W   (PyTorch's LayerNorm)
    instance    H, W      (per sample, C)  C
    group       C/G, H, W (per sample, G)  C
"""
from typing import NamedTuple, Optional, Tuple

import numpy as np

from . import conventions, fast
from ._common import check_dout, check_float_array, check_param, compute_dtype


class NormsCache(NamedTuple):
    """What the layer, instance and group norm forwards keep.

    - core: the `fast.NormCache` of the normalisation (group norm's is on the
      (N, G, C // G, *) view of x).
    - x_shape: x's shape, which dout and dx have.
    - param_shape: gamma's and beta's shape, which dgamma and dbeta have.
    - dtype: x's dtype, which dx takes.
    """

    core: fast.NormCache
    x_shape: Tuple[int, ...]
    param_shape: Tuple[int, ...]
    dtype: np.dtype


Grads = Tuple[np.ndarray, np.ndarray, np.ndarray]


def spatial_batchnorm_forward(x, gamma: Optional[np.ndarray], beta: Optional[np.ndarray],
                              bn_param: dict) -> Tuple[np.ndarray, fast.BatchNormCache]:
    """Batch norm for convolutions: x (N, C, H, W), gamma/beta (C,).

    Statistics per channel over N, H and W; bn_param as in
    `bnkit.fast.batchnorm_forward`. Returns (out, cache), cache a
    `fast.BatchNormCache`.
    """
    if np.ndim(x) != 4:
        raise ValueError(f"spatial batch norm expects x of shape (N, C, H, W), got shape {np.shape(x)}")
    return fast.batchnorm_forward(x, gamma, beta, bn_param, axis=1)


def spatial_batchnorm_backward(dout, cache: fast.BatchNormCache) -> Grads:
    """Returns (dx, dgamma, dbeta) for `spatial_batchnorm_forward`."""
    return fast.batchnorm_backward(dout, cache)


def _prepare(x, gamma, beta, param_shape, param, kind):
    """Validate a per-sample norm call; return x, gamma, beta, eps, dtype."""
    x = check_float_array("x", x)
    if x.ndim < 2:
        raise ValueError(f"{kind} expects x of shape (N, ...) with at least 2 axes, got shape {x.shape}")
    dtype = compute_dtype(x)
    gamma = np.ones(param_shape, dtype) if gamma is None else check_param("gamma", gamma, param_shape, x.shape)
    beta = np.zeros(param_shape, dtype) if beta is None else check_param("beta", beta, param_shape, x.shape)
    eps = conventions.check_eps((param or {}).get("eps", conventions.EPS))
    return x.astype(dtype, copy=False), gamma.astype(dtype, copy=False), beta.astype(dtype, copy=False), eps


def _backward(dout, cache: NormsCache) -> Grads:
    core, shape_out, param_shape, dtype = cache
    xhat = core.xhat
    dout = check_dout(dout, shape_out).astype(xhat.dtype, copy=False).reshape(xhat.shape)
    dx, dgamma, dbeta = fast.normalize_backward(dout, core)
    return dx.reshape(shape_out).astype(dtype, copy=False), dgamma.reshape(param_shape), dbeta.reshape(param_shape)


def layernorm_forward(x, gamma: Optional[np.ndarray], beta: Optional[np.ndarray],
                      ln_param: Optional[dict] = None) -> Tuple[np.ndarray, NormsCache]:
    """Layer norm: each sample normalised over all its features.

    Inputs:
    - x: (N, D) or (N, *F); statistics per sample over every axis but 0.
    - gamma, beta: shape x.shape[1:] (PyTorch's LayerNorm(x.shape[1:])).
    - ln_param: dict with optional 'eps' (default `conventions.EPS`). Layer
      norm has no running statistics and behaves the same in train and eval.

    Returns (out, cache); cache a `NormsCache`.
    """
    dtype_in = np.asarray(x).dtype
    x, gamma, beta, eps = _prepare(x, gamma, beta, np.shape(x)[1:], ln_param, "layer norm")
    axes = tuple(range(1, x.ndim))
    out, core, _ = fast.normalize_forward(x, gamma[None], beta[None], axes, eps)
    return out.astype(dtype_in, copy=False), NormsCache(core, x.shape, gamma.shape, dtype_in)


def layernorm_backward(dout, cache: NormsCache) -> Grads:
    """Returns (dx, dgamma, dbeta) for `layernorm_forward`."""
    return _backward(dout, cache)


def instancenorm_forward(x, gamma: Optional[np.ndarray], beta: Optional[np.ndarray],
                         in_param: Optional[dict] = None) -> Tuple[np.ndarray, NormsCache]:
    """Instance norm: x (N, C, *), statistics per sample and channel over the
    spatial axes; gamma, beta (C,). Returns (out, cache), cache a `NormsCache`."""
    x_arr = np.asarray(x)
    if x_arr.ndim < 3:
        raise ValueError(f"instance norm expects x of shape (N, C, *spatial), got shape {x_arr.shape}")
    x, gamma, beta, eps = _prepare(x, gamma, beta, (x_arr.shape[1],), in_param, "instance norm")
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    axes = tuple(range(2, x.ndim))
    out, core, _ = fast.normalize_forward(x, gamma.reshape(bshape), beta.reshape(bshape), axes, eps)
    return out.astype(x_arr.dtype, copy=False), NormsCache(core, x.shape, gamma.shape, x_arr.dtype)


def instancenorm_backward(dout, cache: NormsCache) -> Grads:
    """Returns (dx, dgamma, dbeta) for `instancenorm_forward`."""
    return _backward(dout, cache)


def groupnorm_forward(x, gamma: Optional[np.ndarray], beta: Optional[np.ndarray], G: int,
                      gn_param: Optional[dict] = None) -> Tuple[np.ndarray, NormsCache]:
    """Group norm: x (N, C, *), channels split into G groups of C // G;
    statistics per sample and group over its channels and the spatial axes;
    gamma, beta (C,). G=1 is layer norm with per-channel gamma, G=C instance
    norm. Returns (out, cache), cache a `NormsCache`."""
    x_arr = np.asarray(x)
    if x_arr.ndim < 2:
        raise ValueError(f"group norm expects x of shape (N, C, *), got shape {x_arr.shape}")
    N, C = x_arr.shape[:2]
    if not isinstance(G, (int, np.integer)) or G < 1 or C % G:
        raise ValueError(f"G must be a positive divisor of C={C} (input shape {x_arr.shape}), got G={G!r}")
    x, gamma, beta, eps = _prepare(x, gamma, beta, (C,), gn_param, "group norm")
    spatial = x.shape[2:]
    xg = x.reshape((N, G, C // G) + spatial)
    pshape = (1, G, C // G) + (1,) * len(spatial)
    axes = tuple(range(2, xg.ndim))
    out, core, _ = fast.normalize_forward(xg, gamma.reshape(pshape), beta.reshape(pshape), axes, eps)
    out = out.reshape(x.shape).astype(x_arr.dtype, copy=False)
    return out, NormsCache(core, x.shape, gamma.shape, x_arr.dtype)


def groupnorm_backward(dout, cache: NormsCache) -> Grads:
    """Returns (dx, dgamma, dbeta) for `groupnorm_forward`."""
    return _backward(dout, cache)
