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

`GATES` below is the same graph as data, and `batchnorm_backward` marks
each gate's code with a comment `# <gate name>:` in the reverse of that order.
The book (chapter 4) shows that code beside each gate's chain rule through
`backward_code_by_gate()`, and `tests/test_core_staged_gates.py` pins the
contract, so a renamed or reordered gate fails a fast test, not only the
book build.

This module is written to be read, not to be fast: see `bnkit.fast`.
"""
import inspect
from typing import List, NamedTuple, Optional, Tuple

import numpy as np

from ._common import check_dout, first_sample, prepare, running_stats, update_running_stats


class Gate(NamedTuple):
    """One node of the forward graph."""

    name: str
    inputs: Tuple[str, ...]
    output: str
    formula: str  # the forward, in the code's names


GATES: Tuple[Gate, ...] = (  # in the order the forward visits them
    Gate("mean", ("x",), "mu", "mu = mean(x)"),
    Gate("centre", ("x", "mu"), "xc", "xc = x - mu"),
    Gate("square", ("xc",), "sq", "sq = xc**2"),
    Gate("variance", ("sq",), "var", "var = mean(sq)"),
    Gate("sqrt", ("var",), "std", "std = sqrt(var + eps)"),
    Gate("invert", ("std",), "inv_std", "inv_std = 1 / std"),
    Gate("normalise", ("xc", "inv_std"), "xhat", "xhat = xc * inv_std"),
    Gate("scale", ("xhat", "gamma"), "scaled", "scaled = gamma * xhat"),
    Gate("shift", ("scaled", "beta"), "out", "out = scaled + beta"),
)


class StagedCache(NamedTuple):
    """What `batchnorm_forward` keeps for the backward: every gate's inputs and
    outputs, all keepdims-shaped to broadcast against x (per-channel ones are
    (1, C, 1, ...)).

    - x: the input in the compute dtype (float16 becomes float32).
    - mu: batch mean (train) or running mean (eval).
    - xc = x - mu; sq = xc**2 (None in eval, where var is a constant).
    - var: biased batch variance (train) or running variance (eval).
    - std = sqrt(var + eps); inv_std = 1 / std; xhat = xc * inv_std.
    - gamma, beta: broadcast-shaped; scaled = gamma * xhat.
    - axes: the reduced axes; n: values per channel.
    - train: whether the statistics came from x (so gradients flow through them).
    - dtype: x's dtype, which dx takes.

    A NamedTuple: `cache.xhat`, and `cache["xhat"]` as the dict caches read.
    """

    x: np.ndarray
    mu: np.ndarray
    xc: np.ndarray
    sq: Optional[np.ndarray]
    var: np.ndarray
    std: np.ndarray
    inv_std: np.ndarray
    xhat: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    scaled: np.ndarray
    axes: Tuple[int, ...]
    n: int
    train: bool
    dtype: np.dtype

    def __getitem__(self, key):
        return getattr(self, key) if isinstance(key, str) else tuple.__getitem__(self, key)


def batchnorm_forward(x, gamma: Optional[np.ndarray], beta: Optional[np.ndarray], bn_param: dict,
                      axis: int = 1) -> Tuple[np.ndarray, StagedCache]:
    """Batch-norm forward pass, gate by gate.

    Inputs:
    - x: (N, D), or (N, C, *) with statistics per channel over N and all
      other axes. Channels-last input (N, *, C) is handled with axis=-1.
    - gamma, beta: (C,) scale and shift; None means affine=False.
    - bn_param: dict, PyTorch's semantics:
      - 'mode': 'train' or 'eval' ('test' is an alias). Default 'train'.
      - 'eps': added to the variance inside the square root. Default
        `conventions.EPS`.
      - 'momentum': running = (1 - momentum) * running + momentum * batch.
        Default `conventions.MOMENTUM`. None means the cumulative average
        (momentum_t = 1 / num_batches_tracked).
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
    - cache: a `StagedCache`, every gate's inputs and outputs (x, mu, xc, sq,
      var, std, inv_std, xhat, gamma, beta, scaled; sq is None in eval) plus
      what summing broadcast gradients needs (axes, n, train, dtype).
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
        update_running_stats(bn_param, spec, batch_mean.reshape(-1), var.reshape(-1))
    cache = StagedCache(
        x=xs, mu=batch_mean, xc=xc, sq=sq, var=var, std=std, inv_std=inv_std, xhat=xhat,
        gamma=g, beta=b, scaled=scaled, axes=axes, n=n, train=spec.use_batch_stats,
        dtype=spec.dtype,
    )
    return out.astype(spec.dtype, copy=False), cache


def batchnorm_backward(dout, cache: StagedCache) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch-norm backward pass, visiting the gates of the forward in reverse.

    Inputs:
    - dout: upstream gradient, the shape of the forward's output.
    - cache: from `batchnorm_forward`.

    Returns (dx, dgamma, dbeta): dx like x; dgamma, dbeta of shape (C,).
    """
    dout = check_dout(dout, cache.x.shape).astype(cache.x.dtype, copy=False)
    axes, n = cache.axes, cache.n
    xc, std, inv_std, xhat = cache.xc, cache.std, cache.inv_std, cache.xhat

    def sum_b(a):  # gradient into a node that was broadcast over the batch
        return np.sum(a, axis=axes, keepdims=True)

    # shift: out = scaled + beta                 local grads: 1, 1
    dbeta = sum_b(dout)
    dscaled = dout
    # scale: scaled = gamma * xhat               local grads: xhat, gamma
    dgamma = sum_b(xhat * dscaled)
    dxhat = cache.gamma * dscaled
    # normalise: xhat = xc * inv_std             local grads: inv_std, xc
    dinv_std = sum_b(xc * dxhat)
    dxc = inv_std * dxhat
    # invert: inv_std = 1 / std                  local grad: -1 / std**2
    dstd = -1.0 / std**2 * dinv_std
    # sqrt: std = sqrt(var + eps)                local grad: 1 / (2 std)
    dvar = 0.5 / std * dstd
    if cache.train:
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

    return dx.astype(cache.dtype, copy=False), dgamma.reshape(-1), dbeta.reshape(-1)


def backward_code_by_gate(source: Optional[str] = None) -> List[Tuple[str, List[str]]]:
    """[(gate name, its code lines)] of `batchnorm_backward`'s training path,
    in the order the backward visits the gates (the reverse of `GATES`).

    A gate's code is what follows its `# <name>:` comment up to the next
    gate; control flow, comments and the eval branch are left out.
    `source` defaults to `batchnorm_backward`'s own.
    """
    names = {g.name for g in GATES}
    source = inspect.getsource(batchnorm_backward) if source is None else source
    body = source.split('"""')[2]  # after the docstring
    rows, current = [], None
    for line in body.splitlines():
        text = line.strip()
        head = text[2:].split(":", 1)[0] if text.startswith("# ") and ":" in text else None
        if head in names:
            current = (head, [])
            rows.append(current)
        elif text.startswith("else"):  # the eval branch: not part of the graph
            current = None
        elif current is not None and text and not text.startswith(("if ", "return", "def ", "#")):
            current[1].append(text)
    return rows
