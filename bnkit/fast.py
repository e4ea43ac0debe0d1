"""Batch norm with the closed-form backward and a minimal cache.

The core, `normalize_forward` / `normalize_backward`, normalises over any
set of reduction axes; batch, layer, instance and group norm differ only in
which axes they choose (see `bnkit.norms`).

The closed form. With xhat = (x - mu) * inv_std over m reduced values and
dxhat = gamma * dout:

    dx = inv_std * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))

and, when gamma is constant over the reduced axes (batch and instance norm),
mean(dxhat) = gamma * dbeta / m and mean(dxhat * xhat) = gamma * dgamma / m,
so the backward needs only the two reductions dbeta and dgamma:

    dx = gamma * inv_std * (dout - (dbeta + xhat * dgamma) / m)
"""
from typing import NamedTuple, Optional, Tuple

import numpy as np

from ._common import check_dout, first_sample, prepare, running_stats, update_running_stats


class NormCache(NamedTuple):
    """What `normalize_forward` keeps for `normalize_backward`.

    - xhat: the normalised input, x's shape.
    - gamma: the scale as it broadcast against x.
    - inv_std: 1 / sqrt(var + eps), keepdims over `axes`.
    - axes: the reduced axes.
    - m: values each statistic is taken over.
    - batch: True when the statistics came from x (gradients flow through
      them), False for given statistics (eval mode).
    """

    xhat: np.ndarray
    gamma: np.ndarray
    inv_std: np.ndarray
    axes: Tuple[int, ...]
    m: int
    batch: bool


class BatchNormCache(NamedTuple):
    """What `batchnorm_forward` keeps: the core's `NormCache` and x's dtype
    (which dx takes). `cache["core"]` reads a field too, as the dict cache did."""

    core: NormCache
    dtype: np.dtype

    def __getitem__(self, key):
        return getattr(self, key) if isinstance(key, str) else tuple.__getitem__(self, key)


def _as_channels(a, shape):
    """a seen as (before, C, after) when `shape` keeps exactly one axis of a
    contiguous `a` (a per-channel reduction), else None."""
    kept = [i for i, s in enumerate(shape) if s != 1]
    if len(kept) != 1 or not a.flags.c_contiguous or a.size == 0:
        return None
    k = kept[0]
    return a.reshape(int(np.prod(a.shape[:k])), a.shape[k], -1)


def _sum_to(a, shape):
    """Sum `a` over the axes where `shape` has size 1 (undo a broadcast).

    Per-channel sums of contiguous arrays go through einsum on the
    (before, C, after) view: one pass, several times faster than np.sum over
    scattered axes, and as accurate.
    """
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and a.shape[i] != 1)
    if not axes:
        return a
    a3 = _as_channels(a, shape)
    if a3 is not None:
        return np.einsum("ijk->j", a3).reshape(shape)
    return np.sum(a, axis=axes, keepdims=True)


def _dot_to(a, b, shape):
    """_sum_to(a * b, shape), without the x-sized temporary a * b when
    the per-channel fast path applies."""
    a3, b3 = _as_channels(a, shape), _as_channels(b, shape)
    if a3 is not None and b3 is not None and a.shape == b.shape and a.size != np.prod(shape):
        return np.einsum("ijk,ijk->j", a3, b3).reshape(shape)
    return _sum_to(a * b, shape)


def _mean(a, axes):
    """np.mean(a, axis=axes, keepdims=True), through the fast `_sum_to`."""
    shape = tuple(1 if i in axes else n for i, n in enumerate(a.shape))
    return _sum_to(a, shape) / (a.size // max(1, int(np.prod(shape))))


def _mean_of_product(a, b, axes):
    """mean(a * b) over `axes`, keepdims, through `_dot_to`."""
    shape = tuple(1 if i in axes else n for i, n in enumerate(a.shape))
    return _dot_to(a, b, shape) / (a.size // max(1, int(np.prod(shape))))


# Where the per-channel vectors sit in memory. An elementwise pass over an
# x-sized array with a (1, C) vector broadcast along its rows (the (N, D) and
# channels-last layouts) runs 10-20x slower when the vector's address is a
# few bytes from the output's modulo 4 KiB: the vector is re-read from L1 on
# every row, and its loads keep colliding with the output's pending stores,
# which the CPU tells apart by their low 12 address bits only ("4K aliasing").
# Whether that happens is an accident of the heap: numpy's small and large
# arrays come from the same malloc heap once glibc has raised its mmap
# threshold, and anything that allocated before (importing torch does) moves
# where they land. Measured on (1024, 1024) float64: `xhat * a` at 8-9 ms with
# `a` 16 or 64 bytes from dx, against 0.7 ms half a page away. So the vectors
# are copied half a page away from the array they are combined with.
_PAGE = 4096


def _placed(size: int, dtype, big: np.ndarray) -> np.ndarray:
    """An empty 1-D array of `size` whose address is half a page (2 KiB) from
    big's, modulo 4 KiB."""
    pad = _PAGE // np.dtype(dtype).itemsize
    buf = np.empty(size + pad, dtype=dtype)
    start = ((big.ctypes.data + _PAGE // 2 - buf.ctypes.data) % _PAGE) // buf.itemsize
    return buf[start:start + size]


def _apart(v: np.ndarray, big: np.ndarray) -> np.ndarray:
    """v, copied so that its address is half a page (2 KiB) from big's,
    modulo 4 KiB; the same values and shape. Cheap: v holds C values."""
    v = np.asarray(v)
    if v.size * 4 > big.size:  # not a small broadcast operand
        return v
    out = _placed(v.size, v.dtype, big).reshape(v.shape)
    out[...] = v
    return out


# How the elementwise passes meet a per-channel vector. numpy's inner loop
# runs along the last axis; with a (1, C, 1, 1) vector broadcast against NCHW
# that loop is only H*W long and takes the slow broadcasting path, about twice
# the time of a plain contiguous pass (measured on (32, 64, 28, 28) float64:
# 1.5 ms against 0.8 ms for the same multiply). So batch norm's passes see x
# as 2-D rows of at least `_ROW` elements, and each per-channel vector is
# tiled into one such row: every pass is then a contiguous row-by-row loop.
_ROW = 4096


class _Rows(NamedTuple):
    """x-sized arrays as (rows, L), each row holding `reps` blocks of
    (C, after) values; a per-channel vector tiled the same way fills a row."""

    rows: int
    reps: int
    after: int

    def view(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(self.rows, -1)

    def spread(self, v: np.ndarray, near: np.ndarray) -> np.ndarray:
        """v (C values) as one (1, L) row, half a page from `near` (`_apart`)."""
        row = _placed(near.size // self.rows, v.dtype, near)
        row.reshape(self.reps, v.size, self.after)[...] = v.reshape(1, -1, 1)
        return row[None, :]


def _rows_for(a: np.ndarray, vshape: Tuple[int, ...]) -> Optional[_Rows]:
    """The row layout for a contiguous `a` combined with per-channel vectors
    of keepdims shape `vshape` (one kept axis); None when they are not per
    channel (layer, instance, group norm) or x is too short to give at least
    four rows (then the plain broadcast is used)."""
    kept = [i for i, s in enumerate(vshape) if s != 1]
    if len(kept) != 1 or len(vshape) != a.ndim or not a.flags.c_contiguous:
        return None
    k = kept[0]
    before, after = int(np.prod(a.shape[:k])), int(np.prod(a.shape[k + 1:]))
    reps = 1
    while reps * a.shape[k] * after < _ROW and before % (2 * reps) == 0 and before // (2 * reps) >= 4:
        reps *= 2
    return _Rows(before // reps, reps, after) if before // reps >= 4 else None


def _channel_sums(dout: np.ndarray, xhat: np.ndarray, shape: Tuple[int, ...]) -> Tuple[np.ndarray, np.ndarray]:
    """(dbeta, dgamma): dout and dout * xhat summed to `shape` (gamma's).

    With the channel axis last ((N, D) and channels-last), einsum over the
    (before, C, 1) view runs inner loops of length 1; adding whole rows of
    the row layout first, then folding the row into C values, is faster
    (measured on (32, 28, 28, 64) float32: 0.14 + 0.26 ms against
    0.29 + 0.40 ms)."""
    rows = _rows_for(xhat, shape) if dout.shape == xhat.shape and dout.flags.c_contiguous else None
    if rows is None or rows.after != 1:
        return _sum_to(dout, shape), _dot_to(dout, xhat, shape)
    d2, x2 = rows.view(dout), rows.view(xhat)
    fold = (rows.reps, -1)
    return (np.add.reduce(d2, axis=0).reshape(fold).sum(axis=0).reshape(shape),
            np.einsum("ij,ij->j", d2, x2).reshape(fold).sum(axis=0).reshape(shape))


def _laid_out(arrays, vectors):
    """(arrays, vectors) ready for elementwise passes: x-sized `arrays` (the last is the output)
    seen as rows and per-channel `vectors` tiled into a row when batch norm's layout allows
    (`_rows_for`), else the arrays as they are and the vectors half a page from the output
    (`_apart`). The same values either way."""
    out = arrays[-1]
    same = all(v.shape == vectors[0].shape for v in vectors) and all(a.flags.c_contiguous for a in arrays)
    rows = _rows_for(out, vectors[0].shape) if same else None
    if rows is None:
        return arrays, tuple(_apart(v, out) for v in vectors)
    viewed = tuple(rows.view(a) for a in arrays)
    return viewed, tuple(rows.spread(v, viewed[-1]) for v in vectors)


def centre(x: np.ndarray, axes: Tuple[int, ...]) -> Tuple[np.ndarray, np.ndarray]:
    """(mean, x - mean) over `axes`, keepdims, accurate in float32 too:
    the data are shifted by one sample first (see `_common.first_sample`)."""
    shift = first_sample(x, axes)
    xc = x - shift
    m = _mean(xc, axes)
    xc -= m
    return shift + m, xc


def batch_stats(x: np.ndarray, axes: Tuple[int, ...]) -> Tuple[np.ndarray, np.ndarray]:
    """(mean, biased var) over `axes`, keepdims, without cancellation:
    shifted data, then the mean of squared deviations (no E[x^2] - E[x]^2)."""
    mu, xc = centre(x, axes)
    return mu, _mean_of_product(xc, xc, axes)


def normalize_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, axes: Tuple[int, ...], eps: float,
                      stats: Optional[Tuple[np.ndarray, np.ndarray]] = None
                      ) -> Tuple[np.ndarray, NormCache, Tuple[np.ndarray, np.ndarray]]:
    """Normalise x over `axes`, then scale and shift.

    Inputs:
    - x: any shape, float32 or float64 (callers upcast float16).
    - gamma, beta: arrays that broadcast against x (same ndim).
    - axes: tuple of the axes the statistics are taken over.
    - eps: added to the variance inside the square root.
    - stats: optional (mean, var) broadcastable against x, used instead of
      the batch's (eval mode); then no gradient flows through them.

    Returns (out, cache, (mean, var)):
    - out: x's shape.
    - cache: a `NormCache` (xhat, gamma, inv_std, axes, m, batch).
    - mean, var: the statistics used (biased variance), keepdims.
    """
    batch = stats is None
    # two fresh x-sized arrays in all: xc (becomes xhat in place) and out
    if batch:
        mu, xc = centre(x, axes)
        var = _mean_of_product(xc, xc, axes)
    else:
        mu, var = stats
        xc = x - mu
    inv_std = 1.0 / np.sqrt(var + eps)
    out = np.empty_like(xc, dtype=np.result_type(xc, gamma, beta))
    (xc_,), (inv_std_,) = _laid_out((xc,), (inv_std,))  # seen as rows where batch norm's layout allows
    np.multiply(xc_, inv_std_, out=xc_)  # xc becomes xhat, in place
    (xhat_, out_), (gamma_, beta_) = _laid_out((xc, out), (gamma, beta))
    np.multiply(xhat_, gamma_, out=out_)
    out_ += beta_
    xhat = xc
    m = int(np.prod([x.shape[a] for a in axes]))
    return out, NormCache(xhat, gamma, inv_std, axes, m, batch), (mu, var)


def normalize_backward(dout: np.ndarray, cache: NormCache) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form backward of `normalize_forward`.

    - dout: upstream gradient, x's shape.
    - cache: the `NormCache` from `normalize_forward`.

    Returns (dx, dgamma, dbeta); dgamma and dbeta have gamma's (broadcast)
    shape.
    """
    xhat, gamma, inv_std, axes, m, batch = cache
    dbeta, dgamma = _channel_sums(dout, xhat, gamma.shape)
    if not batch:  # constant statistics: a per-channel affine map
        dx = np.empty_like(dout, dtype=np.result_type(dout, gamma, inv_std))
        return np.multiply(dout, _apart(gamma * inv_std, dx), out=dx), dgamma, dbeta
    if all(gamma.shape[a] == 1 for a in axes):  # gamma constant over the reduction
        sum_dout = dbeta if dbeta.shape == inv_std.shape else _sum_to(dout, inv_std.shape)
        sum_dout_xhat = dgamma if dgamma.shape == inv_std.shape else _dot_to(dout, xhat, inv_std.shape)
        # dx = gamma * inv_std * (dout - (sum_dout + xhat * sum_dout_xhat) / m), built
        # in place in one fresh array (large temporaries cost page faults),
        # the per-channel vectors half a page from it (see `_apart`)
        dx = np.empty_like(xhat, dtype=np.result_type(xhat, sum_dout_xhat))
        vectors = (sum_dout_xhat / m, sum_dout / m, gamma * inv_std)
        (d, xh, out), (a, b, c) = _laid_out((dout, xhat, dx), vectors)  # out is dx, maybe seen as rows
        np.multiply(xh, a, out=out)
        out += b
        np.subtract(d, out, out=out)
        out *= c
    else:  # gamma varies inside a group (group norm): the general form
        dxhat = dout * gamma
        dx = inv_std * (
            dxhat
            - np.mean(dxhat, axis=axes, keepdims=True)
            - xhat * np.mean(dxhat * xhat, axis=axes, keepdims=True)
        )
    return dx, dgamma, dbeta


def batchnorm_forward(x, gamma: Optional[np.ndarray], beta: Optional[np.ndarray], bn_param: dict,
                      axis: int = 1) -> Tuple[np.ndarray, BatchNormCache]:
    """Batch-norm forward pass, fast.

    Same inputs, semantics and outputs as `bnkit.staged.batchnorm_forward`
    (PyTorch's: biased variance to normalise, unbiased for running_var,
    running = (1 - momentum) * running + momentum * batch, see
    `bnkit.conventions`), but the cache is minimal: a `BatchNormCache` holding
    the core's `NormCache` and x's dtype (which dx takes).
    """
    xs, g, b, spec = prepare(x, gamma, beta, bn_param, axis)
    stats = None if spec.use_batch_stats else running_stats(bn_param, spec, xs.dtype)
    out, core, (mu, var) = normalize_forward(xs, g, b, spec.reduce_axes, spec.eps, stats)
    if spec.mode == "train":
        update_running_stats(bn_param, spec, mu.reshape(-1), var.reshape(-1))
    cache = BatchNormCache(core, spec.dtype)
    return out.astype(spec.dtype, copy=False), cache


def batchnorm_backward(dout, cache: BatchNormCache) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch-norm backward pass in closed form.

    Inputs: dout, the shape of the forward's output; cache from
    `batchnorm_forward`. Returns (dx, dgamma, dbeta) with dgamma, dbeta (C,).
    """
    xhat = cache.core.xhat
    dout = check_dout(dout, xhat.shape).astype(xhat.dtype, copy=False)
    dx, dgamma, dbeta = normalize_backward(dout, cache.core)
    return dx.astype(cache.dtype, copy=False), dgamma.reshape(-1), dbeta.reshape(-1)
