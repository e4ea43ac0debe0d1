"""Batch norm as a computational graph, one gate per line.

The gates, in the order the forward visits them (the book draws this graph):

    x ──mean──► mu
    x, mu ──centre──► xc = x - mu
    xc ──square──► sq = xc**2
    sq ──variance──► var = mean(sq)
    var ──sqrt──► std = sqrt(var + eps)
    std ──invert──► inv_std = 1 / std
    xc, inv_std ──normalise──► xhat = xc * inv_std
    xhat, gamma ──scale──► scaled = gamma * xhat
    scaled, beta ──shift──► out = scaled + beta

The backward visits them in reverse. At each gate:
downstream gradient = local gradient x upstream gradient. Where a node was
broadcast in the forward (mu, var, inv_std, gamma, beta are per channel and
are used by every sample), its gradient is summed over the batch.

This module is written to be read, not to be fast: see `bnkit.fast`.
"""
import numpy as np

from . import _checks
from ._common import first_sample, prepare, running_stats, update_running_stats


def batchnorm_forward(x, gamma, beta, bn_param, axis=1):
    """Batch-norm forward pass, gate by gate.

    Inputs:
    - x: (N, D), or (N, C, *) with statistics per channel over N and all
      other axes. Channels-last input (N, *, C) is handled with axis=-1.
    - gamma, beta: (C,) scale and shift; None means affine=False.
    - bn_param: dict, PyTorch's semantics:
      - 'mode': 'train' or 'eval' ('test' is an alias). Default 'train'.
      - 'eps': added to the variance inside the square root. Default 1e-5.
      - 'momentum': running = (1 - momentum) * running + momentum * batch.
        Default 0.1. None means the cumulative average (momentum_t = 1/t).
      - 'running_mean', 'running_var': (C,). Created as zeros/ones when
        absent. Updated in bn_param in train mode. running_var is updated
        with the unbiased batch variance n/(n-1) * var; normalisation uses
        the biased one.
      - 'num_batches_tracked': int, incremented in train mode.
      - 'track_running_stats': default True. When False the running stats
        are neither used nor updated, and eval mode uses batch statistics.
    - axis: the channel axis. 1 for (N, D) and NCHW; -1 for channels-last.

    float16 inputs are computed in float32 and returned as float16.
    NaN or Inf in x propagate into the outputs of that channel (as in
    PyTorch); they are not checked, since that costs a full pass.

    Returns (out, cache):
    - out: same shape and dtype as x.
    - cache: dict of every gate's inputs and outputs (x, mu, xc, sq, var, std,
      inv_std, xhat, gamma, beta, scaled; sq is None in eval) plus the shapes needed to sum
      broadcast gradients ('axes', 'n', 'train', 'dtype').
    """
    xs, g, b, spec = prepare(x, gamma, beta, bn_param, axis)
    axes, n = spec.reduce_axes, spec.n

    if spec.use_batch_stats:
        shift = first_sample(xs, axes)  # numerics only: a constant that cancels in xc
        mu = np.mean(xs - shift, axis=axes, keepdims=True)  # mean (of the shifted x)
        xc = (xs - shift) - mu  # centre
        sq = xc**2  # square
        var = np.mean(sq, axis=axes, keepdims=True)  # variance
        batch_mean = shift + mu
    else:  # eval: mu and var are constants taken from the running stats
        mu, var = running_stats(bn_param, spec, xs.dtype)
        xc = xs - mu  # centre
        sq = None
        batch_mean = mu
    std = np.sqrt(var + spec.eps)  # sqrt
    inv_std = 1.0 / std  # invert
    xhat = xc * inv_std  # normalise
    scaled = g * xhat  # scale
    out = scaled + b  # shift

    if spec.mode == "train":
        update_running_stats(bn_param, batch_mean.reshape(-1), var.reshape(-1), n)
    cache = dict(
        x=xs, mu=batch_mean, xc=xc, sq=sq, var=var, std=std, inv_std=inv_std, xhat=xhat,
        gamma=g, beta=b, scaled=scaled, axes=axes, n=n, train=spec.use_batch_stats,
        dtype=spec.dtype,
    )
    return out.astype(spec.dtype, copy=False), cache


def batchnorm_backward(dout, cache):
    """Batch-norm backward pass, visiting the gates of the forward in reverse.

    Inputs:
    - dout: upstream gradient, the shape of the forward's output.
    - cache: from `batchnorm_forward`.

    Returns (dx, dgamma, dbeta): dx like x; dgamma, dbeta of shape (C,).
    """
    dout = _checks.check_dout(dout, cache["x"].shape).astype(cache["x"].dtype, copy=False)
    axes, n = cache["axes"], cache["n"]
    xc, std, inv_std, xhat = cache["xc"], cache["std"], cache["inv_std"], cache["xhat"]

    def sum_b(a):  # gradient into a node that was broadcast over the batch
        return np.sum(a, axis=axes, keepdims=True)

    # shift: out = scaled + beta                 local grads: 1, 1
    dbeta = sum_b(dout)
    dscaled = dout
    # scale: scaled = gamma * xhat               local grads: xhat, gamma
    dgamma = sum_b(xhat * dscaled)
    dxhat = cache["gamma"] * dscaled
    # normalise: xhat = xc * inv_std             local grads: inv_std, xc
    dinv_std = sum_b(xc * dxhat)
    dxc = inv_std * dxhat
    # invert: inv_std = 1 / std                  local grad: -1 / std**2
    dstd = -1.0 / std**2 * dinv_std
    # sqrt: std = sqrt(var + eps)                local grad: 1 / (2 std)
    dvar = 0.5 / std * dstd
    if cache["train"]:
        # variance: var = mean(sq)               local grad: 1/n for every element
        dsq = np.ones_like(xc) / n * dvar
        # square: sq = xc**2                     local grad: 2 xc (xc also feeds normalise)
        dxc = dxc + 2 * xc * dsq
        # centre: xc = x - mu                    local grads: 1, -1 (mu broadcast)
        dmu = -sum_b(dxc)
        dx = dxc
        # mean: mu = mean(x)                     local grad: 1/n for every element
        dx = dx + np.ones_like(xc) / n * dmu
    else:  # eval: mu and var were constants, only the centre's identity path remains
        dx = dxc

    return dx.astype(cache["dtype"], copy=False), dgamma.reshape(-1), dbeta.reshape(-1)
