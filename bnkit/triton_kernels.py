"""Fused batch-norm kernels in Triton, with PyTorch's semantics.

Imports torch and triton (import it explicitly; `import bnkit` does not).

Every layout is seen as a 3-D array (A, C, B), row-major, channel axis C:

    (N, D)              A = N,       C = D, B = 1
    (N, *, C) / NHWC    A = N*H*W,   C = C, B = 1   (channels-last)
    (N, C, *) / NCHW    A = N,       C = C, B = H*W

Statistics are per channel, over A and B. One tile is a (BA, BC, BB) block;
for B = 1 it is wide along C (coalesced rows), for B > 1 it is one channel
wide and long along B (coalesced spatial runs). The same index helper serves
every kernel, so one set of kernels covers every layout.

Forward (training), three launches:
  1. `_stats_partial_kernel`: grid (splits, channel blocks). Each program
     walks its share of the A x B tiles of its channels and merges each
     tile's exact (count, mean, M2) into its own with Chan's formula.
     Splitting A x B keeps the GPU busy when C is small.
  2. `_stats_final_kernel`: merges the splits' partials per channel in a
     fixed order (deterministic: no atomics), writes mean, 1/std, the
     per-channel scale and shift, and updates the running statistics.
  3. `_affine_kernel`: out = x * scale + shift (`_affine_rows_kernel` for
     NCHW, which sees it as N*C contiguous rows of H*W values).
Bytes: read x twice, write out once (3 E s; the second read may hit L2).

Backward, three launches of the same shape:
  1. `_grad_partial_kernel`: per split, sum(dy) and sum(dy * (x - mean)).
  2. `_grad_final_kernel`: dbeta, dgamma, and dx's per-channel coefficients
         dx = k_dy * dy + k_x * x + k_c
     from dx = gamma/std * (dy - (dbeta + xhat * dgamma) / m).
  3. `_affine_kernel` with dy: dx.
Bytes: read x and dy twice, write dx once (5 E s).

float16 and bfloat16 are loaded and stored as such; everything is
accumulated in float32. The tuning knobs below were chosen on an H100 with
`python -m bnkit bench --sweep` (the performance chapter has the figures).
Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1,
set before triton is imported) on CPU tensors: slow, but exact.
"""

import dataclasses
import types

import torch
import triton
import triton.language as tl

from . import conventions
from .torch import check_batch_norm_args, momentum_factor_

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REDUCE_TILE = 16384  # bytes of input per tile in the reduction kernels
AFFINE_TILE = 8192  # bytes of input per program in the elementwise kernels
MAX_ROW = 64  # widest tile along a contiguous C (B = 1)
MAX_RUN = 1024  # longest tile along a contiguous B
REDUCE_WARPS = 4  # warps per program, reduction kernels
AFFINE_WARPS = 4  # warps per program, elementwise kernel
SPLIT_WAVES = 4  # statistics programs per multiprocessor to aim for
GRAD_SPLIT_WAVES = 2  # the same for the backward's reduction (it reads two tensors) ...
NARROW_GRAD_SPLIT_WAVES = 4  # ... but channels-last with C < 16 does better with more
MIN_TILES = 4  # tiles per reduction program at least, so the partials stay few


@dataclasses.dataclass(frozen=True)
class Tuning:
    """The tuning knobs above as one value, passed explicitly (the benchmark's
    sweep varies them this way); `tuning_defaults()` holds the committed ones."""

    reduce_tile: int
    affine_tile: int
    max_row: int
    max_run: int
    reduce_warps: int
    affine_warps: int
    split_waves: int
    grad_split_waves: int
    narrow_grad_split_waves: int
    min_tiles: int


def tuning_defaults() -> Tuning:
    """The module's knobs, read at call time."""
    return Tuning(REDUCE_TILE, AFFINE_TILE, MAX_ROW, MAX_RUN, REDUCE_WARPS, AFFINE_WARPS, SPLIT_WAVES,
                  GRAD_SPLIT_WAVES, NARROW_GRAD_SPLIT_WAVES, MIN_TILES)

# The running-statistics recurrence, compiled from the one statement of it in
# `bnkit.conventions` (numpy and torch run the same function): kernels call
# `_update_running(rm, rv, mean, var, n, factor)` with the factor from
# `bnkit.torch.momentum_factor_`. The function is rebound to this module's
# globals, where Triton (its interpreter too) finds `tl`; the code is the same.
_update_running = triton.jit(types.FunctionType(conventions.update_running.__code__, globals(), "update_running"))


@triton.jit
def _tile(ta, tb, tc, A, C, B, BA: tl.constexpr, BC: tl.constexpr, BB: tl.constexpr):
    """Offsets, mask and channel indices of tile (ta, tb, tc) of an (A, C, B) array."""
    a = (ta * BA + tl.arange(0, BA)).to(tl.int64)
    c = tc * BC + tl.arange(0, BC)
    b = tb * BB + tl.arange(0, BB)
    offs = a[:, None, None] * (C * B) + (c * B)[None, :, None] + b[None, None, :]
    mask = (a < A)[:, None, None] & (c < C)[None, :, None] & (b < B)[None, None, :]
    return offs, mask, c


@triton.jit
def _sum_ab(t):
    """Sum a (BA, BC, BB) tile over A and B: (BC,)."""
    return tl.sum(tl.sum(t, axis=2), axis=0)


@triton.jit
def _stats_partial_kernel(x_ptr, mean_part, m2_part, cnt_part, A, C, B, tiles_b, n_tiles,
                          tiles_per_split, BA: tl.constexpr, BC: tl.constexpr, BB: tl.constexpr):
    split = tl.program_id(0)
    tc = tl.program_id(1)
    mean = tl.zeros([BC], tl.float32)
    m2 = tl.zeros([BC], tl.float32)
    count = tl.zeros([BC], tl.float32)
    t0 = split * tiles_per_split
    t1 = tl.minimum(t0 + tiles_per_split, n_tiles)
    for t in range(t0, t1):
        ta = t // tiles_b
        tb = t % tiles_b
        offs, mask, c = _tile(ta, tb, tc, A, C, B, BA, BB=BB, BC=BC)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        n = (tl.minimum(A - ta * BA, BA) * tl.minimum(B - tb * BB, BB)).to(tl.float32)
        # the tile's exact mean and M2 (two passes over registers) ...
        t_mean = _sum_ab(x) / n
        d = tl.where(mask, x - t_mean[None, :, None], 0.0)
        t_m2 = _sum_ab(d * d)
        # ... merged into the running ones (Chan et al.): no E[x^2] - E[x]^2
        total = count + n
        delta = t_mean - mean
        mean += delta * (n / total)
        m2 += t_m2 + delta * delta * (count * (n / total))
        count = total
    c = tc * BC + tl.arange(0, BC)
    keep = c < C
    tl.store(mean_part + split * C + c, mean, mask=keep)
    tl.store(m2_part + split * C + c, m2, mask=keep)
    tl.store(cnt_part + split * C + c, count, mask=keep)


@triton.jit
def _merge_partials(mean, m2, count, p_mean, p_m2, p_n):
    """(mean, m2, count) with a (BS, BC) block of per-split partials Chan-merged in.

    The block is merged exactly first (masked lanes load n = 0 and drop out),
    then into the running total, so the order of the splits fixes the result.
    """
    n = tl.sum(p_n, axis=0)
    b_mean = tl.sum(p_n * p_mean, axis=0) / tl.maximum(n, 1.0)
    dev = p_mean - b_mean[None, :]
    b_m2 = tl.sum(p_m2, axis=0) + tl.sum(p_n * dev * dev, axis=0)
    total = tl.maximum(count + n, 1.0)
    delta = b_mean - mean
    return mean + delta * (n / total), m2 + b_m2 + delta * delta * (count * (n / total)), count + n


@triton.jit
def _stats_final_kernel(mean_part, m2_part, cnt_part, splits, C, w_ptr, b_ptr, rm_ptr, rv_ptr,
                        mean_ptr, invstd_ptr, scale_ptr, shift_ptr, eps, factor,
                        HAS_RUNNING: tl.constexpr, BS: tl.constexpr, BC: tl.constexpr):
    c = tl.program_id(0) * BC + tl.arange(0, BC)
    keep = c < C
    mean = tl.zeros([BC], tl.float32)
    m2 = tl.zeros([BC], tl.float32)
    count = tl.zeros([BC], tl.float32)
    for s0 in range(0, splits, BS):
        s = s0 + tl.arange(0, BS)
        m = (s < splits)[:, None] & keep[None, :]
        idx = s[:, None] * C + c[None, :]
        p_mean = tl.load(mean_part + idx, mask=m, other=0.0)
        p_m2 = tl.load(m2_part + idx, mask=m, other=0.0)
        p_n = tl.load(cnt_part + idx, mask=m, other=0.0)
        mean, m2, count = _merge_partials(mean, m2, count, p_mean, p_m2, p_n)
    count = tl.maximum(count, 1.0)  # only padding lanes (c >= C) have no values
    var = m2 / count
    invstd = 1.0 / tl.sqrt(var + eps)
    scale = tl.load(w_ptr + c, mask=keep, other=1.0).to(tl.float32) * invstd
    shift = tl.load(b_ptr + c, mask=keep, other=0.0).to(tl.float32) - mean * scale
    tl.store(mean_ptr + c, mean, mask=keep)
    tl.store(invstd_ptr + c, invstd, mask=keep)
    tl.store(scale_ptr + c, scale, mask=keep)
    tl.store(shift_ptr + c, shift, mask=keep)
    if HAS_RUNNING:  # bnkit.conventions' recurrence; running_var takes the unbiased variance
        rm = tl.load(rm_ptr + c, mask=keep, other=0.0).to(tl.float32)
        rv = tl.load(rv_ptr + c, mask=keep, other=0.0).to(tl.float32)
        n = tl.where(keep, count, 2.0)  # padding lanes: any n > 1, they are not stored
        rm, rv = _update_running(rm, rv, mean, var, n, factor)
        tl.store(rm_ptr + c, rm.to(rm_ptr.dtype.element_ty), mask=keep)
        tl.store(rv_ptr + c, rv.to(rv_ptr.dtype.element_ty), mask=keep)


@triton.jit
def _grad_partial_kernel(x_ptr, dy_ptr, mean_ptr, sdy_part, sdyx_part, A, C, B, tiles_b, n_tiles,
                         tiles_per_split, BA: tl.constexpr, BC: tl.constexpr, BB: tl.constexpr):
    split = tl.program_id(0)
    tc = tl.program_id(1)
    c = tc * BC + tl.arange(0, BC)
    mean = tl.load(mean_ptr + c, mask=c < C, other=0.0)[None, :, None]
    s_dy = tl.zeros([BC], tl.float32)
    s_dyx = tl.zeros([BC], tl.float32)
    t0 = split * tiles_per_split
    t1 = tl.minimum(t0 + tiles_per_split, n_tiles)
    for t in range(t0, t1):
        offs, mask, c = _tile(t // tiles_b, t % tiles_b, tc, A, C, B, BA, BB=BB, BC=BC)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s_dy += _sum_ab(dy)
        s_dyx += _sum_ab(dy * tl.where(mask, x - mean, 0.0))  # centred: no cancellation
    c = tc * BC + tl.arange(0, BC)
    keep = c < C
    tl.store(sdy_part + split * C + c, s_dy, mask=keep)
    tl.store(sdyx_part + split * C + c, s_dyx, mask=keep)


@triton.jit
def _grad_final_kernel(sdy_part, sdyx_part, splits, C, m, w_ptr, mean_ptr, invstd_ptr,
                       dw_ptr, db_ptr, k_dy_ptr, k_x_ptr, k_c_ptr,
                       TRAIN: tl.constexpr, BS: tl.constexpr, BC: tl.constexpr):
    c = tl.program_id(0) * BC + tl.arange(0, BC)
    keep = c < C
    s_dy = tl.zeros([BC], tl.float32)
    s_dyx = tl.zeros([BC], tl.float32)
    for s0 in range(0, splits, BS):  # fixed order: deterministic
        s = s0 + tl.arange(0, BS)
        idx = s[:, None] * C + c[None, :]
        m2d = (s < splits)[:, None] & keep[None, :]
        s_dy += tl.sum(tl.load(sdy_part + idx, mask=m2d, other=0.0), axis=0)
        s_dyx += tl.sum(tl.load(sdyx_part + idx, mask=m2d, other=0.0), axis=0)
    invstd = tl.load(invstd_ptr + c, mask=keep, other=1.0)
    mean = tl.load(mean_ptr + c, mask=keep, other=0.0)
    w = tl.load(w_ptr + c, mask=keep, other=1.0).to(tl.float32)
    dbeta = s_dy
    dgamma = s_dyx * invstd
    k_dy = w * invstd
    if TRAIN:  # the statistics depend on x: the closed form
        k_x = -k_dy * invstd * dgamma / m
        k_c = -k_dy * dbeta / m - k_x * mean
    else:  # constant statistics: a per-channel scale
        k_x = tl.zeros([BC], tl.float32)
        k_c = tl.zeros([BC], tl.float32)
    tl.store(dw_ptr + c, dgamma, mask=keep)
    tl.store(db_ptr + c, dbeta, mask=keep)
    tl.store(k_dy_ptr + c, k_dy, mask=keep)
    tl.store(k_x_ptr + c, k_x, mask=keep)
    tl.store(k_c_ptr + c, k_c, mask=keep)


@triton.jit
def _affine_kernel(x_ptr, dy_ptr, out_ptr, k_x_ptr, k_c_ptr, k_dy_ptr, A, C, B, tiles_b, tiles_c,
                   HAS_DY: tl.constexpr, BA: tl.constexpr, BC: tl.constexpr, BB: tl.constexpr):
    """out = k_x[c] * x + k_c[c] (+ k_dy[c] * dy), elementwise."""
    pid = tl.program_id(0)
    tc = pid % tiles_c
    rest = pid // tiles_c
    offs, mask, c = _tile(rest // tiles_b, rest % tiles_b, tc, A, C, B, BA, BB=BB, BC=BC)
    keep = c < C
    k_x = tl.load(k_x_ptr + c, mask=keep, other=0.0)[None, :, None]
    k_c = tl.load(k_c_ptr + c, mask=keep, other=0.0)[None, :, None]
    out = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) * k_x + k_c
    if HAS_DY:
        k_dy = tl.load(k_dy_ptr + c, mask=keep, other=0.0)[None, :, None]
        out += tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32) * k_dy
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _affine_rows_kernel(x_ptr, dy_ptr, out_ptr, k_x_ptr, k_c_ptr, k_dy_ptr, R, C, B, tiles_b,
                        HAS_DY: tl.constexpr, BR: tl.constexpr, BB: tl.constexpr):
    """`_affine_kernel` for NCHW seen as R = N*C rows of B values, row r in
    channel r % C: a tile of whole short rows is one contiguous block."""
    pid = tl.program_id(0)
    r = ((pid // tiles_b) * BR + tl.arange(0, BR)).to(tl.int64)
    b = (pid % tiles_b) * BB + tl.arange(0, BB)
    offs = r[:, None] * B + b[None, :]
    mask = (r < R)[:, None] & (b < B)[None, :]
    c = r % C
    k_x = tl.load(k_x_ptr + c, mask=r < R, other=0.0)[:, None]
    k_c = tl.load(k_c_ptr + c, mask=r < R, other=0.0)[:, None]
    out = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) * k_x + k_c
    if HAS_DY:
        k_dy = tl.load(k_dy_ptr + c, mask=r < R, other=0.0)[:, None]
        out += tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32) * k_dy
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- host side

def _pow2(n):
    return 1 << max(0, (int(n) - 1).bit_length())


def _run_length(B, tuning=None):
    """Tile length along a contiguous B: all of it when B <= max_run (each
    row of the tile is then one contiguous run, padding lanes notwithstanding),
    else the longest power of two whose padding wastes at most 1/16 of the
    lanes, else the least padded."""
    max_run = (tuning or tuning_defaults()).max_run
    if B <= max_run:
        return _pow2(B)
    sizes = [s for s in (1024, 512, 256, 128, 64, 32, 16) if s <= max(max_run, 16)]
    sizes = [s for s in sizes if s < 2 * _pow2(B)] or [16]
    padded = {s: -(-B // s) * s for s in sizes}
    good = [s for s in sizes if padded[s] - B <= B / 16]
    return good[0] if good else min(sizes, key=lambda s: (padded[s], -s))


def _tiles(A, C, B, tile, tuning=None):
    """(BA, BC, BB) for an (A, C, B) array and a tile of about `tile` elements."""
    t = tuning or tuning_defaults()
    if B == 1:
        BC, BB = min(_pow2(C), t.max_row), 1
    else:
        BC, BB = 1, _run_length(B, t)
    BA = max(1, min(_pow2(A), tile // (BC * BB)))
    return BA, BC, BB


def _num_sms(x):
    if x.is_cuda:
        return torch.cuda.get_device_properties(x.device).multi_processor_count
    return 4  # interpreter: a few splits, so the merge code is exercised


def _view3d(x, axis):
    """(x3, (A, C, B)): x as a contiguous (A, C, B) array, without a copy when
    x is contiguous or channels-last with axis=1."""
    axis %= x.dim()
    C = x.shape[axis]
    if axis == x.dim() - 1 and x.is_contiguous():
        return x, (x.numel() // C, C, 1)
    if axis == 1 and x.is_contiguous():
        return x, (x.shape[0], C, x.numel() // (x.shape[0] * C))
    if axis == 1 and x.dim() in (4, 5):
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        if x.is_contiguous(memory_format=fmt):
            return x, (x.numel() // C, C, 1)  # memory is (N, *, C)
    return x.contiguous(), _view3d(x.contiguous(), axis)[1]


def _splits(n_tiles, tiles_c, sms, waves, tuning=None):
    """(splits, tiles per split): about `waves` programs per multiprocessor."""
    min_tiles = (tuning or tuning_defaults()).min_tiles
    want = max(1, min(-(-n_tiles // min_tiles), -(-waves * sms // tiles_c)))
    per = -(-n_tiles // want)
    return -(-n_tiles // per), per


def _plan(x3, shape, waves, tuning=None):
    A, C, B = shape
    t = tuning or tuning_defaults()
    BA, BC, BB = _tiles(A, C, B, t.reduce_tile // x3.element_size(), t)
    tiles_b, tiles_c = -(-B // BB), -(-C // BC)
    n_tiles = -(-A // BA) * tiles_b
    splits, per = _splits(n_tiles, tiles_c, _num_sms(x3), waves, t)
    return dict(A=A, C=C, B=B, BA=BA, BC=BC, BB=BB, tiles_b=tiles_b, tiles_c=tiles_c,
                n_tiles=n_tiles, splits=splits, per=per)


def _affine(x3, dy3, shape, k_x, k_c, k_dy, out, tuning=None):
    A, C, B = shape
    t = tuning or tuning_defaults()
    tile = t.affine_tile // x3.element_size()
    if B > 1:  # NCHW: rows (n, c) of B values; consecutive rows are contiguous
        R, BB = A * C, _run_length(B, t)
        BR = max(1, min(_pow2(R), tile // BB))
        tiles_b = -(-B // BB)
        _affine_rows_kernel[(-(-R // BR) * tiles_b,)](
            x3, dy3 if dy3 is not None else x3, out, k_x, k_c, k_dy if k_dy is not None else k_x,
            R, C, B, tiles_b, HAS_DY=dy3 is not None, BR=BR, BB=BB, num_warps=t.affine_warps)
        return out
    BA, BC, BB = _tiles(A, C, B, tile, t)
    tiles_b, tiles_c = -(-B // BB), -(-C // BC)
    grid = (-(-A // BA) * tiles_b * tiles_c,)
    _affine_kernel[grid](x3, dy3 if dy3 is not None else x3, out, k_x, k_c,
                         k_dy if k_dy is not None else k_x, A, C, B, tiles_b, tiles_c,
                         HAS_DY=dy3 is not None, BA=BA, BC=BC, BB=BB, num_warps=t.affine_warps)
    return out


def _final_blocks(C):
    """Channels per program of the merge kernels: few, so that several
    programs share the work even when C is small."""
    BC = min(_pow2(C), 32)
    return BC, (-(-C // BC),)


def stats(x3, shape, weight, bias, running_mean, running_var, factor, eps, tuning=None):
    """Batch statistics of an (A, C, B) array, in float32 (C,) tensors:
    (mean, invstd, scale, shift), scale = weight * invstd, shift = bias -
    mean * scale. Updates running_mean/var in place when given, with the
    running-average `factor` (`bnkit.torch.momentum_factor_`)."""
    t = tuning or tuning_defaults()
    p = _plan(x3, shape, t.split_waves, t)
    C, dev = p["C"], x3.device
    part = torch.empty((3, p["splits"], C), dtype=torch.float32, device=dev)
    _stats_partial_kernel[(p["splits"], p["tiles_c"])](
        x3, part[0], part[1], part[2], p["A"], C, p["B"], p["tiles_b"], p["n_tiles"], p["per"],
        BA=p["BA"], BC=p["BC"], BB=p["BB"], num_warps=t.reduce_warps)
    out = torch.empty((4, C), dtype=torch.float32, device=dev)
    has_running = running_mean is not None
    BC, grid = _final_blocks(C)
    _stats_final_kernel[grid](
        part[0], part[1], part[2], p["splits"], C, weight, bias,
        running_mean if has_running else out, running_var if has_running else out,
        out[0], out[1], out[2], out[3], float(eps), float(factor),
        HAS_RUNNING=has_running, BS=min(_pow2(p["splits"]), 64), BC=BC, num_warps=4)
    return out[0], out[1], out[2], out[3]


def _check_supported(x):
    """What only the kernels need, after `bnkit.torch.check_batch_norm_args`."""
    if x.dtype not in DTYPES:
        raise TypeError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"x is empty: shape {tuple(x.shape)}")


class BatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm on Triton kernels, differentiable in x, weight, bias.

    apply(x, weight, bias, running_mean, running_var, factor, eps, axis, tuning)
    -> out. weight and bias are (C,) tensors (pass ones/zeros for
    affine=False); running_mean/var may be None; factor is the
    running-average factor itself (a float, `bnkit.torch.momentum_factor_`);
    tuning is a `Tuning`, or None for the defaults.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, factor, eps, axis, tuning=None):
        x3, shape = _view3d(x, axis)
        mean, invstd, scale, shift = stats(x3, shape, weight, bias, running_mean, running_var,
                                           factor, eps, tuning)
        out = _affine(x3, None, shape, scale, shift, None, torch.empty_like(x3), tuning)
        ctx.save_for_backward(x3, weight, mean, invstd)
        ctx.shape, ctx.tuning = shape, tuning
        return out

    @staticmethod
    def backward(ctx, dout):
        x3, weight, mean, invstd = ctx.saved_tensors
        dx, dw, db = backward(x3, dout, weight, mean, invstd, ctx.shape, train=True, tuning=ctx.tuning)
        return dx, dw, db, None, None, None, None, None, None


def backward(x3, dout, weight, mean, invstd, shape, train=True, tuning=None):
    """(dx, dweight, dbias) given the forward's input in (A, C, B) memory
    order and its float32 (C,) mean and invstd."""
    A, C, B = shape
    dy3 = dout if dout.shape == x3.shape and _same_layout(dout, x3) else dout.contiguous(
        memory_format=_format_of(x3))
    t = tuning or tuning_defaults()
    p = _plan(x3, shape, t.narrow_grad_split_waves if B == 1 and C < 16 else t.grad_split_waves, t)
    dev = x3.device
    part = torch.empty((2, p["splits"], C), dtype=torch.float32, device=dev)
    _grad_partial_kernel[(p["splits"], p["tiles_c"])](
        x3, dy3, mean, part[0], part[1], A, C, B, p["tiles_b"], p["n_tiles"], p["per"],
        BA=p["BA"], BC=p["BC"], BB=p["BB"], num_warps=t.reduce_warps)
    res = torch.empty((5, C), dtype=torch.float32, device=dev)
    BC, grid = _final_blocks(C)
    _grad_final_kernel[grid](part[0], part[1], p["splits"], C, float(A * B), weight, mean, invstd,
                             res[0], res[1], res[2], res[3], res[4],
                             TRAIN=train, BS=min(_pow2(p["splits"]), 64), BC=BC, num_warps=4)
    dx = _affine(x3, dy3, shape, res[3], res[4], res[2], torch.empty_like(x3), t)
    return dx, res[0].to(weight.dtype), res[1].to(weight.dtype)


def _format_of(t):
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def _same_layout(a, b):
    return a.stride() == b.stride()


class _EvalFunction(torch.autograd.Function):
    """Eval mode: out = x * scale + shift with the running statistics."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, invstd, axis, tuning=None):
        x3, shape = _view3d(x, axis)
        scale = weight.float() * invstd
        shift = bias.float() - mean * scale
        out = _affine(x3, None, shape, scale, shift, None, torch.empty_like(x3), tuning)
        ctx.save_for_backward(x3, weight, mean, invstd)
        ctx.shape, ctx.tuning = shape, tuning
        return out

    @staticmethod
    def backward(ctx, dout):
        x3, weight, mean, invstd = ctx.saved_tensors
        dx, dw, db = backward(x3, dout, weight, mean, invstd, ctx.shape, train=False, tuning=ctx.tuning)
        return dx, dw, db, None, None, None, None


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=conventions.MOMENTUM, eps=conventions.EPS, axis=1, num_batches_tracked=None,
               tuning=None):
    """Drop-in for torch.nn.functional.batch_norm on Triton kernels.

    The conventions, defaults and validation are `bnkit.conventions`' (the
    same errors and messages as every bnkit backend): training uses the
    batch statistics (biased variance) and updates running_mean/running_var
    in place (unbiased variance, running = (1 - factor) * running + factor *
    batch); num_batches_tracked (a 0-d integer tensor, if given) is
    incremented in place, and momentum=None uses the cumulative average over
    it. Eval uses the running statistics. axis=1 takes (N, D), NCHW and
    channels-last NHWC tensors (torch.channels_last); axis=-1 takes
    (N, *, C) laid out contiguously. Differentiable in x, weight and bias.
    tuning: a `Tuning` (the benchmark's sweep), or None for the defaults.
    """
    axis, eps, momentum = check_batch_norm_args(x, running_mean, running_var, weight, bias, training, momentum, eps,
                                                axis, num_batches_tracked)
    _check_supported(x)
    C = x.shape[axis]
    weight = torch.ones(C, dtype=x.dtype, device=x.device) if weight is None else weight
    bias = torch.zeros(C, dtype=x.dtype, device=x.device) if bias is None else bias
    if training:
        factor = momentum_factor_(num_batches_tracked, momentum) if running_mean is not None else 0.0
        return BatchNormFunction.apply(x, weight, bias, running_mean, running_var, factor, eps, axis, tuning)
    invstd = torch.rsqrt(running_var.float() + eps)
    return _EvalFunction.apply(x, weight, bias, running_mean.float(), invstd, axis, tuning)
