"""Fewer-launch batch-norm kernels in Triton: fused paths for small and L2-sized tensors.

Imports torch and triton (import it explicitly; `import bnkit` does not).
Uses `bnkit.triton_kernels`' (A, C, B) view of every layout, its tile helper
and its split plan, and has the same semantics as PyTorch; the conventions
(validation, momentum factor, the running-statistics recurrence, compiled
from `bnkit.conventions`) are the other backends'.

Paths (`plan` picks one per pass, from the committed `CONFIGS`):

* ``fused``: ONE launch per pass. Each program owns a block of channels
  (one channel for NCHW) and walks all of its tiles twice: first the
  statistics (forward: Chan-merged (count, mean, M2) per tile; backward:
  sum(dy) and sum(dy * (x - mean))), then the output. No other program
  touches those channels, so there is no cross-program merge at all: the
  merge order is the tile order, fixed, and no atomics are used. The second
  walk re-reads x (and dy) while the tensor is still in L2, so the bytes from
  DRAM are the ideal 2·E·s (forward) and 3·E·s (backward). Chosen when the
  pass's tensors fit in L2 and the channel blocks keep the multiprocessors
  busy, or when the tensor is so small that launches, not bytes, dominate.
* ``split``: TWO launches per pass, for large tensors or few channel blocks.
  A grid of (split, channel block) programs computes partials over its share
  of the tiles; the last program of a channel block to finish (a ticket
  counter: an atomic increment that orders programs, never an atomic on the
  values) merges all of that block's partials in split order, so the result
  does not depend on which program finished last; then one flat elementwise
  kernel writes out (dx), seeing the tensor as a flat array (aligned,
  contiguous tiles: full-width vector loads even when a row's length, e.g.
  14 x 14 = 196, is not a multiple of the vector width).
* eval: one launch of `_eval_flat_kernel`, which computes the per-channel
  scale and shift from the running statistics itself.

Numerics: float32 accumulation for every dtype; Chan merges of exact tile
statistics (no E[x^2] - E[x]^2) of the shifted data x - shift, shift a value
of the channel (its first), so a large |mean| does not round the sums away;
out = ((x - shift) - (mean - shift)) * scale + bias and dx use the same
centring, so the mean is subtracted before any rounding by the scale.

Per-channel results live in a (5, C) float32 `stats` array: mean, invstd,
shift, mean - shift, scale (= weight * invstd); the backward's coefficients
in a (3, C) one: dx = k_dy * dy + k_xc * (x - mean) + k_c.

float16/bfloat16 have their own entries in `CONFIGS` (twice the elements
per tile, so more warps; wider channel blocks). `CONFIGS` is data, committed: nothing is
autotuned at import or test time, so CI is deterministic. Its values are
first-principles choices not yet measured on a GPU: `python -m
bnkit.experiments.gpu_run --only tune` times variants per shape class and
prints the table to commit here; `--only bench` measures it against torch.
"""

import torch
import triton
import triton.language as tl

from . import conventions
from . import triton_kernels as tk
from .torch import check_batch_norm_args, momentum_factor_
from .triton_kernels import _merge_partials, _sum_ab, _tile, _update_running

# Per shape class: 'runs' is NCHW (B > 1: one channel per fused program,
# tiles long along the contiguous H*W runs); 'rows' is (N, D) and
# channels-last (B = 1: a block of channels per fused program, tiles of rows
# of C). Keyed by (kind, bytes per element). tile_bytes: input per tile of the
# fused kernels; flat_bytes: input per program of the flat kernels.
CONFIGS = {
    ("runs", 4): dict(tile_bytes=16384, num_warps=4, flat_bytes=16384, flat_warps=4),
    ("runs", 2): dict(tile_bytes=16384, num_warps=8, flat_bytes=16384, flat_warps=4),
    ("rows", 4): dict(tile_bytes=16384, num_warps=4, row_bytes=32, max_bc=64, flat_bytes=16384, flat_warps=4),
    ("rows", 2): dict(tile_bytes=16384, num_warps=8, row_bytes=16, max_bc=128, flat_bytes=16384, flat_warps=4),
}
L2_FRACTION = 0.75  # fused when the pass's tensors take at most this much of L2 ...
MIN_PROGRAMS_PER_SM = 1.0  # ... and there are at least this many programs per multiprocessor,
SMALL_PROGRAM_BYTES = 128 * 2**10  # or when each program has this little to read: launches dominate
INTERPRETER_L2_BYTES = 50 * 2**20  # without a GPU: plan as for an H100 (the tests force paths anyway)
MERGE_BLOCK = 64  # partials merged at once by the split path's last program
PATHS = ("fused", "split")


# ------------------------------------------------------------ shared pieces

@triton.jit
def _tiles_stats(x_ptr, shift3, tc, t0, t1, A, C, B, tiles_b, BA: tl.constexpr, BC: tl.constexpr,
                 BB: tl.constexpr):
    """(mean, M2, count) of x - shift over tiles t0..t1 of channel block tc,
    each tile's exact statistics Chan-merged in tile order."""
    mean = tl.zeros([BC], tl.float32)
    m2 = tl.zeros([BC], tl.float32)
    count = tl.zeros([BC], tl.float32)
    for t in range(t0, t1):
        ta = t // tiles_b
        tb = t % tiles_b
        offs, mask, c = _tile(ta, tb, tc, A, C, B, BA, BB=BB, BC=BC)
        x = tl.where(mask, tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - shift3, 0.0)
        n = (tl.minimum(A - ta * BA, BA) * tl.minimum(B - tb * BB, BB)).to(tl.float32)
        t_mean = _sum_ab(x) / n
        d = tl.where(mask, x - t_mean[None, :, None], 0.0)
        t_m2 = _sum_ab(d * d)
        total = count + n  # Chan et al.'s merge: no E[x^2] - E[x]^2
        delta = t_mean - mean
        mean += delta * (n / total)
        m2 += t_m2 + delta * delta * (count * (n / total))
        count = total
    return mean, m2, count


@triton.jit
def _grad_sums(x_ptr, dy_ptr, shift3, dmean3, tc, t0, t1, A, C, B, tiles_b, BA: tl.constexpr,
               BC: tl.constexpr, BB: tl.constexpr):
    """(sum dy, sum dy * (x - mean)) over tiles t0..t1 of channel block tc."""
    s_dy = tl.zeros([BC], tl.float32)
    s_dyx = tl.zeros([BC], tl.float32)
    for t in range(t0, t1):  # fixed order: deterministic
        offs, mask, c = _tile(t // tiles_b, t % tiles_b, tc, A, C, B, BA, BB=BB, BC=BC)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s_dy += _sum_ab(dy)
        s_dyx += _sum_ab(dy * tl.where(mask, (x - shift3) - dmean3, 0.0))  # centred: no cancellation
    return s_dy, s_dyx


@triton.jit
def _store_stats(dmean, m2, count, shift, c, keep, C, w_ptr, rm_ptr, rv_ptr, stats_ptr, eps, factor,
                 HAS_W: tl.constexpr, HAS_RUNNING: tl.constexpr):
    """Write the (5, C) stats of channels c from the statistics of x - shift,
    update the running statistics; return (invstd, scale)."""
    var = m2 / tl.maximum(count, 1.0)
    invstd = 1.0 / tl.sqrt(var + eps)
    scale = invstd
    if HAS_W:
        scale *= tl.load(w_ptr + c, mask=keep, other=1.0).to(tl.float32)
    tl.store(stats_ptr + c, shift + dmean, mask=keep)
    tl.store(stats_ptr + C + c, invstd, mask=keep)
    tl.store(stats_ptr + 2 * C + c, shift, mask=keep)
    tl.store(stats_ptr + 3 * C + c, dmean, mask=keep)
    tl.store(stats_ptr + 4 * C + c, scale, mask=keep)
    if HAS_RUNNING:  # bnkit.conventions' recurrence
        rm = tl.load(rm_ptr + c, mask=keep, other=0.0).to(tl.float32)
        rv = tl.load(rv_ptr + c, mask=keep, other=0.0).to(tl.float32)
        n = tl.where(keep, count, 2.0)  # padding lanes: any n > 1, they are not stored
        rm, rv = _update_running(rm, rv, shift + dmean, var, n, factor)
        tl.store(rm_ptr + c, rm.to(rm_ptr.dtype.element_ty), mask=keep)
        tl.store(rv_ptr + c, rv.to(rv_ptr.dtype.element_ty), mask=keep)
    return invstd, scale


@triton.jit
def _coefficients(s_dy, s_dyx, invstd, c, keep, C, w_ptr, dw_ptr, db_ptr, coef_ptr, m,
                  TRAIN: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """dweight, dbias and dx = k_dy * dy + k_xc * (x - mean) + k_c's
    coefficients, from dx = gamma * invstd * (dy - (dbeta + xhat * dgamma) / m)
    in training and gamma * invstd * dy with constant statistics; stored in
    the (3, C) coef array and returned."""
    dbeta = s_dy
    dgamma = s_dyx * invstd
    k_dy = invstd
    if HAS_W:
        k_dy *= tl.load(w_ptr + c, mask=keep, other=1.0).to(tl.float32)
        tl.store(dw_ptr + c, dgamma, mask=keep)
    if HAS_B:
        tl.store(db_ptr + c, dbeta, mask=keep)
    if TRAIN:
        k_xc = -k_dy * invstd * dgamma / m
        k_c = -k_dy * dbeta / m
    else:
        k_xc = tl.zeros_like(k_dy)
        k_c = tl.zeros_like(k_dy)
    tl.store(coef_ptr + c, k_dy, mask=keep)
    tl.store(coef_ptr + C + c, k_xc, mask=keep)
    tl.store(coef_ptr + 2 * C + c, k_c, mask=keep)
    return k_dy, k_xc, k_c


@triton.jit
def _channel_of(offs, C, B, ROWS: tl.constexpr):
    """Channel of each flat offset: the last index for (A, C) rows, (offs // B) % C for (A, C, B)."""
    if ROWS:
        return offs % C
    else:
        return (offs // B) % C


# ------------------------------------------------------------- fused path

@triton.jit
def _fused_forward_kernel(x_ptr, out_ptr, w_ptr, b_ptr, rm_ptr, rv_ptr, stats_ptr,
                          A, C, B, tiles_b, n_tiles, eps, factor,
                          HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_RUNNING: tl.constexpr,
                          BA: tl.constexpr, BC: tl.constexpr, BB: tl.constexpr):
    """One program per channel block: the statistics over all its tiles, then out."""
    tc = tl.program_id(0)
    c = tc * BC + tl.arange(0, BC)
    keep = c < C
    shift = tl.load(x_ptr + c * B, mask=keep, other=0.0).to(tl.float32)  # x[a=0, c, b=0]
    shift3 = shift[None, :, None]
    dmean, m2, count = _tiles_stats(x_ptr, shift3, tc, 0, n_tiles, A, C, B, tiles_b, BA, BC, BB)
    invstd, scale = _store_stats(dmean, m2, count, shift, c, keep, C, w_ptr, rm_ptr, rv_ptr, stats_ptr, eps,
                                 factor, HAS_W, HAS_RUNNING)
    bias = tl.zeros([BC], tl.float32)
    if HAS_B:
        bias += tl.load(b_ptr + c, mask=keep, other=0.0).to(tl.float32)
    dmean3 = dmean[None, :, None]
    scale3 = scale[None, :, None]
    bias3 = bias[None, :, None]
    for t in range(0, n_tiles):  # the second read of x: from L2
        offs, mask, c = _tile(t // tiles_b, t % tiles_b, tc, A, C, B, BA, BB=BB, BC=BC)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        out = ((x - shift3) - dmean3) * scale3 + bias3
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fused_backward_kernel(x_ptr, dy_ptr, dx_ptr, w_ptr, stats_ptr, coef_ptr, dw_ptr, db_ptr,
                           A, C, B, tiles_b, n_tiles, m,
                           TRAIN: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                           BA: tl.constexpr, BC: tl.constexpr, BB: tl.constexpr):
    """One program per channel block: the two sums over all its tiles, then dx."""
    tc = tl.program_id(0)
    c = tc * BC + tl.arange(0, BC)
    keep = c < C
    invstd = tl.load(stats_ptr + C + c, mask=keep, other=1.0)
    shift3 = tl.load(stats_ptr + 2 * C + c, mask=keep, other=0.0)[None, :, None]
    dmean3 = tl.load(stats_ptr + 3 * C + c, mask=keep, other=0.0)[None, :, None]
    s_dy, s_dyx = _grad_sums(x_ptr, dy_ptr, shift3, dmean3, tc, 0, n_tiles, A, C, B, tiles_b, BA, BC, BB)
    k_dy, k_xc, k_c = _coefficients(s_dy, s_dyx, invstd, c, keep, C, w_ptr, dw_ptr, db_ptr, coef_ptr, m,
                                    TRAIN, HAS_W, HAS_B)
    k_dy3 = k_dy[None, :, None]
    k_xc3 = k_xc[None, :, None]
    k_c3 = k_c[None, :, None]
    for t in range(0, n_tiles):  # the second read of x and dy: from L2
        offs, mask, c = _tile(t // tiles_b, t % tiles_b, tc, A, C, B, BA, BB=BB, BC=BC)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dx = k_dy3 * dy + k_xc3 * ((x - shift3) - dmean3) + k_c3
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------- split path

@triton.jit
def _split_stats_kernel(x_ptr, part_ptr, ticket_ptr, w_ptr, rm_ptr, rv_ptr, stats_ptr,
                        A, C, B, tiles_b, n_tiles, per, splits, eps, factor,
                        HAS_W: tl.constexpr, HAS_RUNNING: tl.constexpr,
                        BA: tl.constexpr, BC: tl.constexpr, BB: tl.constexpr, BS: tl.constexpr):
    """Grid (splits, channel blocks): partial (mean, M2, count) of x - shift
    per split into part (3, splits, C); the channel block's last program to
    finish merges all splits in split order and writes the stats."""
    split = tl.program_id(0)
    tc = tl.program_id(1)
    c = tc * BC + tl.arange(0, BC)
    keep = c < C
    shift = tl.load(x_ptr + c * B, mask=keep, other=0.0).to(tl.float32)  # the same shift in every split
    t0 = split * per
    p_mean, p_m2, p_n = _tiles_stats(x_ptr, shift[None, :, None], tc, t0, tl.minimum(t0 + per, n_tiles),
                                     A, C, B, tiles_b, BA, BC, BB)
    plane = splits * C
    tl.store(part_ptr + split * C + c, p_mean, mask=keep)
    tl.store(part_ptr + plane + split * C + c, p_m2, mask=keep)
    tl.store(part_ptr + 2 * plane + split * C + c, p_n, mask=keep)
    # acq_rel: this program's partials are visible before its ticket; the last one sees them all
    if tl.atomic_add(ticket_ptr + tc, 1) == splits - 1:
        mean = tl.zeros([BC], tl.float32)
        m2 = tl.zeros([BC], tl.float32)
        count = tl.zeros([BC], tl.float32)
        for s0 in range(0, splits, BS):  # split order: deterministic, whoever merges
            s = s0 + tl.arange(0, BS)
            m = (s < splits)[:, None] & keep[None, :]
            idx = s[:, None] * C + c[None, :]
            q_mean = tl.load(part_ptr + idx, mask=m, other=0.0, cache_modifier=".cg")
            q_m2 = tl.load(part_ptr + plane + idx, mask=m, other=0.0, cache_modifier=".cg")
            q_n = tl.load(part_ptr + 2 * plane + idx, mask=m, other=0.0, cache_modifier=".cg")
            mean, m2, count = _merge_partials(mean, m2, count, q_mean, q_m2, q_n)
        _store_stats(mean, m2, count, shift, c, keep, C, w_ptr, rm_ptr, rv_ptr, stats_ptr, eps, factor,
                     HAS_W, HAS_RUNNING)


@triton.jit
def _split_grad_kernel(x_ptr, dy_ptr, part_ptr, ticket_ptr, w_ptr, stats_ptr, coef_ptr, dw_ptr, db_ptr,
                       A, C, B, tiles_b, n_tiles, per, splits, m,
                       TRAIN: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                       BA: tl.constexpr, BC: tl.constexpr, BB: tl.constexpr, BS: tl.constexpr):
    """Grid (splits, channel blocks): partial sums per split into part
    (2, splits, C); the channel block's last program merges them in split
    order and writes dweight, dbias and dx's coefficients."""
    split = tl.program_id(0)
    tc = tl.program_id(1)
    c = tc * BC + tl.arange(0, BC)
    keep = c < C
    shift3 = tl.load(stats_ptr + 2 * C + c, mask=keep, other=0.0)[None, :, None]
    dmean3 = tl.load(stats_ptr + 3 * C + c, mask=keep, other=0.0)[None, :, None]
    t0 = split * per
    p_dy, p_dyx = _grad_sums(x_ptr, dy_ptr, shift3, dmean3, tc, t0, tl.minimum(t0 + per, n_tiles),
                             A, C, B, tiles_b, BA, BC, BB)
    plane = splits * C
    tl.store(part_ptr + split * C + c, p_dy, mask=keep)
    tl.store(part_ptr + plane + split * C + c, p_dyx, mask=keep)
    if tl.atomic_add(ticket_ptr + tc, 1) == splits - 1:
        s_dy = tl.zeros([BC], tl.float32)
        s_dyx = tl.zeros([BC], tl.float32)
        for s0 in range(0, splits, BS):  # split order: deterministic, whoever merges
            s = s0 + tl.arange(0, BS)
            idx = s[:, None] * C + c[None, :]
            mm = (s < splits)[:, None] & keep[None, :]
            s_dy += tl.sum(tl.load(part_ptr + idx, mask=mm, other=0.0, cache_modifier=".cg"), axis=0)
            s_dyx += tl.sum(tl.load(part_ptr + plane + idx, mask=mm, other=0.0, cache_modifier=".cg"), axis=0)
        invstd = tl.load(stats_ptr + C + c, mask=keep, other=1.0)
        _coefficients(s_dy, s_dyx, invstd, c, keep, C, w_ptr, dw_ptr, db_ptr, coef_ptr, m, TRAIN, HAS_W, HAS_B)


@triton.jit
def _normalize_flat_kernel(x_ptr, out_ptr, stats_ptr, b_ptr, E, C, B,
                           HAS_B: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """out = ((x - shift[c]) - (mean - shift)[c]) * scale[c] + bias[c] over the flat tensor."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < E
    c = _channel_of(offs, C, B, ROWS)
    shift = tl.load(stats_ptr + 2 * C + c, mask=mask, other=0.0)
    dmean = tl.load(stats_ptr + 3 * C + c, mask=mask, other=0.0)
    scale = tl.load(stats_ptr + 4 * C + c, mask=mask, other=0.0)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    out = ((x - shift) - dmean) * scale
    if HAS_B:
        out += tl.load(b_ptr + c, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dx_flat_kernel(x_ptr, dy_ptr, dx_ptr, stats_ptr, coef_ptr, E, C, B, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """dx = k_dy[c] * dy + k_xc[c] * (x - mean[c]) + k_c[c] over the flat tensor."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < E
    c = _channel_of(offs, C, B, ROWS)
    shift = tl.load(stats_ptr + 2 * C + c, mask=mask, other=0.0)
    dmean = tl.load(stats_ptr + 3 * C + c, mask=mask, other=0.0)
    k_dy = tl.load(coef_ptr + c, mask=mask, other=0.0)
    k_xc = tl.load(coef_ptr + C + c, mask=mask, other=0.0)
    k_c = tl.load(coef_ptr + 2 * C + c, mask=mask, other=0.0)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dx = k_dy * dy + k_xc * ((x - shift) - dmean) + k_c
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# -------------------------------------------------------------------- eval

@triton.jit
def _eval_flat_kernel(x_ptr, out_ptr, rm_ptr, rv_ptr, w_ptr, b_ptr, E, C, B, eps,
                      HAS_W: tl.constexpr, HAS_B: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Eval: out = (x - running_mean) / sqrt(running_var + eps) * weight + bias, one launch."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < E
    c = _channel_of(offs, C, B, ROWS)
    rm = tl.load(rm_ptr + c, mask=mask, other=0.0).to(tl.float32)
    scale = 1.0 / tl.sqrt(tl.load(rv_ptr + c, mask=mask, other=1.0).to(tl.float32) + eps)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_W:
        scale *= tl.load(w_ptr + c, mask=mask, other=1.0).to(tl.float32)
    out = (x - rm) * scale
    if HAS_B:
        out += tl.load(b_ptr + c, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- host side

def _pow2_floor(n):
    return 1 << max(0, int(n).bit_length() - 1)


def shape_class(shape, itemsize):
    """The `CONFIGS` key of an (A, C, B) array: (kind, bytes per element)."""
    return ("rows" if shape[2] == 1 else "runs", 2 if itemsize == 2 else 4)


def config(shape, itemsize, configs=None):
    """(kind, configuration) of an (A, C, B) array's shape class, from
    `configs` (a table like CONFIGS: the tuner's variants) or the committed CONFIGS."""
    key = shape_class(shape, itemsize)
    return key[0], (configs or CONFIGS)[key]


def _l2_bytes(x):
    if x.is_cuda:
        return torch.cuda.get_device_properties(x.device).L2_cache_size
    return INTERPRETER_L2_BYTES


def fused_tiles(shape, itemsize, sms, configs=None):
    """(BA, BC, BB, programs) of the fused kernels for an (A, C, B) array."""
    A, C, B = shape
    kind, cfg = config(shape, itemsize, configs)
    if kind == "runs":
        BC, BB = 1, tk._run_length(B)
    else:  # the widest channel block that still gives every multiprocessor a program
        min_bc = max(1, cfg["row_bytes"] // itemsize)
        BC = min(max(min_bc, _pow2_floor(max(1, C // sms))), cfg["max_bc"], tk._pow2(C))
        BB = 1
    BA = max(1, min(tk._pow2(A), cfg["tile_bytes"] // itemsize // (BC * BB)))
    return BA, BC, BB, -(-C // BC)


def plan(x3, shape, tensors=1, configs=None):
    """'fused' or 'split' for a pass that reads `tensors` arrays like x3 twice."""
    sms = tk._num_sms(x3)
    *_, programs = fused_tiles(shape, x3.element_size(), sms, configs)
    nbytes = tensors * x3.numel() * x3.element_size()
    if nbytes <= SMALL_PROGRAM_BYTES * programs:  # small for every program, even if they are few
        return "fused"
    if nbytes <= L2_FRACTION * _l2_bytes(x3) and programs >= MIN_PROGRAMS_PER_SM * sms:
        return "fused"
    return "split"


def _check_path(path):
    if path is not None and path not in PATHS:
        raise ValueError(f"path must be one of {PATHS} or None (automatic), got {path!r}")


def _split_plan(x3, shape, backward):
    """triton_kernels' split plan (its committed tuning), for the statistics or the gradient sums."""
    t = tk.tuning_defaults()
    A, C, B = shape
    waves = t.split_waves
    if backward:
        waves = t.narrow_grad_split_waves if B == 1 and C < 16 else t.grad_split_waves
    return tk._plan(x3, shape, waves, t), t.reduce_warps


def forward_train(x3, shape, weight, bias, running_mean, running_var, factor, eps, path=None, configs=None):
    """(out, stats) of training mode for an (A, C, B) array: out in x3's
    layout, stats the (5, C) float32 per-channel results (module docstring)
    that `backward_train` takes. Updates the running statistics in place
    when given, with the running-average `factor`
    (`bnkit.torch.momentum_factor_`). weight or bias may be None. configs:
    a table like CONFIGS (None: CONFIGS)."""
    _check_path(path)
    path = path or plan(x3, shape, 1, configs)
    A, C, B = shape
    out = torch.empty_like(x3)
    stats = torch.empty((5, C), dtype=torch.float32, device=x3.device)
    flags = dict(HAS_W=weight is not None, HAS_RUNNING=running_mean is not None)
    rm, rv = _or(running_mean, stats), _or(running_var, stats)
    if path == "fused":
        BA, BC, BB, programs = fused_tiles(shape, x3.element_size(), tk._num_sms(x3), configs)
        tiles_b = -(-B // BB)
        _fused_forward_kernel[(programs,)](
            x3, out, _or(weight, stats), _or(bias, stats), rm, rv, stats, A, C, B, tiles_b, -(-A // BA) * tiles_b,
            float(eps), float(factor), HAS_B=bias is not None, BA=BA, BC=BC, BB=BB,
            num_warps=config(shape, x3.element_size(), configs)[1]["num_warps"], **flags)
        return out, stats
    p, warps = _split_plan(x3, shape, backward=False)
    part = torch.empty((3, p["splits"], C), dtype=torch.float32, device=x3.device)
    tickets = torch.zeros(p["tiles_c"], dtype=torch.int32, device=x3.device)
    _split_stats_kernel[(p["splits"], p["tiles_c"])](
        x3, part, tickets, _or(weight, stats), rm, rv, stats, A, C, B, p["tiles_b"], p["n_tiles"], p["per"],
        p["splits"], float(eps), float(factor), BA=p["BA"], BC=p["BC"], BB=p["BB"],
        BS=min(tk._pow2(p["splits"]), MERGE_BLOCK), num_warps=warps, **flags)
    grid, block, warps = _flat_grid(x3, shape, configs)
    _normalize_flat_kernel[grid](x3, out, stats, _or(bias, stats), x3.numel(), C, B, HAS_B=bias is not None,
                                 ROWS=B == 1, BLOCK=block, num_warps=warps)
    return out, stats


def eval_stats(running_mean, running_var, eps):
    """The (5, C) stats of eval mode: the running statistics, shift 0."""
    mean = running_mean.float()
    invstd = torch.rsqrt(running_var.float() + eps)
    return torch.stack((mean, invstd, torch.zeros_like(mean), mean, invstd))


def backward_train(x3, dy3, shape, weight, has_bias, stats, train=True, path=None, configs=None):
    """(dx, dweight, dbias) for an (A, C, B) array; dy3 in x3's layout; stats
    from `forward_train` (or `eval_stats`, with train=False: the statistics
    are then constants). dweight is None when weight is, dbias None unless
    has_bias."""
    _check_path(path)
    path = path or plan(x3, shape, 2, configs)
    A, C, B = shape
    dx = torch.empty_like(x3)
    coef = torch.empty((3, C), dtype=torch.float32, device=x3.device)
    dwb = torch.empty((2, C), dtype=torch.float32, device=x3.device)
    flags = dict(TRAIN=train, HAS_W=weight is not None, HAS_B=has_bias)
    if path == "fused":
        BA, BC, BB, programs = fused_tiles(shape, x3.element_size(), tk._num_sms(x3), configs)
        tiles_b = -(-B // BB)
        _fused_backward_kernel[(programs,)](
            x3, dy3, dx, _or(weight, stats), stats, coef, dwb[0], dwb[1], A, C, B, tiles_b, -(-A // BA) * tiles_b,
            float(A * B), BA=BA, BC=BC, BB=BB, num_warps=config(shape, x3.element_size(), configs)[1]["num_warps"],
            **flags)
    else:
        p, warps = _split_plan(x3, shape, backward=True)
        part = torch.empty((2, p["splits"], C), dtype=torch.float32, device=x3.device)
        tickets = torch.zeros(p["tiles_c"], dtype=torch.int32, device=x3.device)
        _split_grad_kernel[(p["splits"], p["tiles_c"])](
            x3, dy3, part, tickets, _or(weight, stats), stats, coef, dwb[0], dwb[1], A, C, B, p["tiles_b"],
            p["n_tiles"], p["per"], p["splits"], float(A * B), BA=p["BA"], BC=p["BC"], BB=p["BB"],
            BS=min(tk._pow2(p["splits"]), MERGE_BLOCK), num_warps=warps, **flags)
        grid, block, warps = _flat_grid(x3, shape, configs)
        _dx_flat_kernel[grid](x3, dy3, dx, stats, coef, x3.numel(), C, B, ROWS=B == 1, BLOCK=block,
                              num_warps=warps)
    pdt = weight.dtype if weight is not None else torch.float32
    return dx, dwb[0].to(pdt) if weight is not None else None, dwb[1].to(pdt) if has_bias else None


def forward_eval(x3, shape, weight, bias, running_mean, running_var, eps, configs=None):
    """out with the running statistics, in one launch."""
    out = torch.empty_like(x3)
    grid, block, warps = _flat_grid(x3, shape, configs)
    _eval_flat_kernel[grid](x3, out, running_mean, running_var, _or(weight, running_mean), _or(bias, running_mean),
                            x3.numel(), shape[1], shape[2], float(eps), HAS_W=weight is not None,
                            HAS_B=bias is not None, ROWS=shape[2] == 1, BLOCK=block, num_warps=warps)
    return out


def _or(t, dummy):
    """t, or a dummy pointer for a kernel argument its constexpr flag says is absent."""
    return dummy if t is None else t


def _flat_grid(x3, shape, configs=None):
    """(grid, BLOCK, num_warps) of the flat elementwise kernels."""
    _, cfg = config(shape, x3.element_size(), configs)
    block = tk._pow2(min(x3.numel(), cfg["flat_bytes"] // x3.element_size()))
    return (-(-x3.numel() // block),), block, cfg["flat_warps"]


def _dy_like(dout, x3):
    if dout.stride() == x3.stride():
        return dout
    return dout.contiguous(memory_format=tk._format_of(x3))


class TrainFunction(torch.autograd.Function):
    """Training-mode batch norm, differentiable in x, weight, bias.

    apply(x, weight, bias, running_mean, running_var, factor, eps, axis, path, configs)
    -> out. weight or bias may be None (no such parameter: affine=False);
    running_mean/var may be None; factor is the running-average factor
    itself (a float, `bnkit.torch.momentum_factor_`). path None: `plan`;
    configs None: CONFIGS.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, factor, eps, axis, path, configs):
        x3, shape = tk._view3d(x, axis)
        out, stats = forward_train(x3, shape, weight, bias, running_mean, running_var, factor, eps, path, configs)
        ctx.save_for_backward(x3, weight, stats)
        ctx.shape, ctx.path, ctx.configs, ctx.has_bias = shape, path, configs, bias is not None
        return out

    @staticmethod
    def backward(ctx, dout):
        x3, weight, stats = ctx.saved_tensors
        dx, dw, db = backward_train(x3, _dy_like(dout, x3), ctx.shape, weight, ctx.has_bias, stats, True, ctx.path,
                                    ctx.configs)
        return dx, dw, db, None, None, None, None, None, None, None


class EvalFunction(torch.autograd.Function):
    """Eval mode with the running statistics; the backward treats them as constants."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, axis, path, configs):
        x3, shape = tk._view3d(x, axis)
        out = forward_eval(x3, shape, weight, bias, running_mean, running_var, eps, configs)
        ctx.save_for_backward(x3, weight, running_mean, running_var)
        ctx.shape, ctx.eps, ctx.path, ctx.configs, ctx.has_bias = shape, eps, path, configs, bias is not None
        return out

    @staticmethod
    def backward(ctx, dout):
        x3, weight, rm, rv = ctx.saved_tensors
        dx, dw, db = backward_train(x3, _dy_like(dout, x3), ctx.shape, weight, ctx.has_bias,
                                    eval_stats(rm, rv, ctx.eps), False, ctx.path, ctx.configs)
        return dx, dw, db, None, None, None, None, None, None


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=conventions.MOMENTUM, eps=conventions.EPS, axis=1, num_batches_tracked=None, path=None,
               configs=None):
    """torch.nn.functional.batch_norm on the fewer-launch kernels.

    The same arguments, conventions and validation as
    `bnkit.triton_kernels.batch_norm` (`bnkit.conventions`), plus `path`:
    'fused' or 'split' forces a path, None lets `plan` choose per pass; and
    `configs`, a table like CONFIGS (the tuner's variants; None: CONFIGS).
    weight or bias None means no such parameter; no ones/zeros tensors are
    made on the fused paths.
    """
    axis, eps, momentum = check_batch_norm_args(x, running_mean, running_var, weight, bias, training, momentum, eps,
                                                axis, num_batches_tracked)
    tk._check_supported(x)
    _check_path(path)
    if training:
        factor = momentum_factor_(num_batches_tracked, momentum) if running_mean is not None else 0.0
        return TrainFunction.apply(x, weight, bias, running_mean, running_var, factor, eps, axis, path, configs)
    return EvalFunction.apply(x, weight, bias, running_mean, running_var, eps, axis, path, configs)
