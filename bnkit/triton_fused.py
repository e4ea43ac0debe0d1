"""Fewer-launch batch-norm kernels in Triton: the paths for small and L2-sized tensors.

Imports torch and triton (import it explicitly; `import bnkit` does not).
Builds on `bnkit.triton_kernels` (its (A, C, B) view of every layout, its
tile helper and its split kernels, used here for the tensors too large for
the fused paths) and has the same semantics as PyTorch.

Paths (`plan` picks one per pass, from the committed `CONFIGS`):

* ``fused``: ONE launch per pass. Each program owns a block of channels
  (one channel for NCHW) and walks all of its tiles twice: first the
  statistics (forward: Chan-merged (count, mean, M2) per tile; backward:
  sum(dy) and sum(dy * (x - mean))), then the output. No other program
  touches those channels, so there is no cross-program merge at all: the
  merge order is the tile order, fixed, and no atomics are used. The
  second walk re-reads x (and dy) while the tensor is still in L2, so the
  bytes from DRAM are the ideal 2·E·s (forward) and 3·E·s (backward). Chosen
  when the pass's tensors fit in L2 and the channel blocks keep the
  multiprocessors busy, or when the tensor is so small that launches, not
  bytes, dominate. Running statistics are updated in the same launch.
* ``split``: `bnkit.triton_kernels`' statistics kernels (partials over
  (split, channel block), merged in a fixed order) for large tensors or
  few channels, followed by `_normalize_flat_kernel`, which sees the tensor
  as a flat array (aligned, contiguous tiles: full-width vector loads even
  when a row's length, e.g. 14 x 14 = 196, is not a multiple of the vector
  width). The backward is `triton_kernels.backward`.
* eval: one launch of `_eval_flat_kernel`, which computes the per-channel
  scale and shift from the running statistics itself (no separate small
  torch ops).

Numerics: float32 accumulation for every dtype; Chan merges of exact tile
statistics (no E[x^2] - E[x]^2) of the shifted data x - shift, shift a
value of the channel, so that a large |mean| does not round the sums away;
the output is ((x - shift) - (mean - shift)) * scale + bias and dx uses the
same centring, so the mean is subtracted before any rounding by the scale.

float16/bfloat16 get their own tile sizes in `CONFIGS` (the same bytes per
tile, so twice the elements, and rows of at least 32 bytes). `CONFIGS` is
data, committed: no autotuning runs at import or test time, so CI is
deterministic. Its values are first-principles choices that have not yet
been measured on a GPU (see CONTRIBUTING.md, "Benchmark").
"""

import torch
import triton
import triton.language as tl

from . import conventions
from . import triton_kernels as tk
from .torch import check_batch_norm_args, momentum_factor_
from .triton_kernels import _sum_ab, _tile, _update_running

# Per shape class: 'runs' is NCHW (B > 1, one channel per program, tiles
# long along the contiguous H*W runs); 'rows' is (N, D) and channels-last
# (B = 1, a block of channels per program, tiles of rows of C). Keyed by
# (kind, bytes per element).
CONFIGS = {
    ("runs", 4): dict(tile_bytes=16384, num_warps=4, flat_bytes=16384, flat_warps=4),
    ("runs", 2): dict(tile_bytes=16384, num_warps=4, flat_bytes=16384, flat_warps=4),
    ("rows", 4): dict(tile_bytes=16384, num_warps=4, row_bytes=32, max_bc=64, flat_bytes=16384, flat_warps=4),
    ("rows", 2): dict(tile_bytes=16384, num_warps=4, row_bytes=32, max_bc=128, flat_bytes=16384, flat_warps=4),
}
L2_FRACTION = 0.75  # fused when the pass's tensors take at most this much of L2 ...
MIN_PROGRAMS_PER_SM = 1.0  # ... and there are at least this many programs per multiprocessor,
SMALL_BYTES = 8 * 2**20  # or when the tensors are this small whatever the parallelism
INTERPRETER_L2_BYTES = 50 * 2**20  # without a GPU: plan as for an H100 (the tests force paths anyway)
PATHS = ("fused", "split")


@triton.jit
def _fused_forward_kernel(x_ptr, out_ptr, w_ptr, b_ptr, rm_ptr, rv_ptr, stats_ptr,
                          A, C, B, tiles_b, n_tiles, eps, factor,
                          HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_RUNNING: tl.constexpr,
                          BA: tl.constexpr, BC: tl.constexpr, BB: tl.constexpr):
    """One program per channel block: statistics over all its tiles, then out.

    stats_ptr: a (4, C) float32 array for mean, invstd, shift, mean - shift;
    shift is each channel's first value (the shifted-data trick: the sums see
    x - shift, small when |mean| >> std)."""
    tc = tl.program_id(0)
    c = tc * BC + tl.arange(0, BC)
    keep = c < C
    shift = tl.load(x_ptr + c * B, mask=keep, other=0.0).to(tl.float32)  # x[a=0, c, b=0]
    shift3 = shift[None, :, None]
    mean = tl.zeros([BC], tl.float32)
    m2 = tl.zeros([BC], tl.float32)
    count = tl.zeros([BC], tl.float32)
    for t in range(0, n_tiles):  # tile order fixed: the merge is deterministic
        ta = t // tiles_b
        tb = t % tiles_b
        offs, mask, c = _tile(ta, tb, tc, A, C, B, BA, BB=BB, BC=BC)
        x = tl.where(mask, tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - shift3, 0.0)
        n = (tl.minimum(A - ta * BA, BA) * tl.minimum(B - tb * BB, BB)).to(tl.float32)
        t_mean = _sum_ab(x) / n
        d = tl.where(mask, x - t_mean[None, :, None], 0.0)
        t_m2 = _sum_ab(d * d)
        total = count + n  # Chan et al.'s merge of (count, mean, M2), of x - shift
        delta = t_mean - mean
        mean += delta * (n / total)
        m2 += t_m2 + delta * delta * (count * (n / total))
        count = total
    c = tc * BC + tl.arange(0, BC)
    var = m2 / count
    invstd = 1.0 / tl.sqrt(var + eps)
    scale = invstd
    if HAS_W:
        scale *= tl.load(w_ptr + c, mask=keep, other=1.0).to(tl.float32)
    bias = tl.zeros([BC], tl.float32)
    if HAS_B:
        bias += tl.load(b_ptr + c, mask=keep, other=0.0).to(tl.float32)
    tl.store(stats_ptr + c, shift + mean, mask=keep)
    tl.store(stats_ptr + C + c, invstd, mask=keep)
    tl.store(stats_ptr + 2 * C + c, shift, mask=keep)
    tl.store(stats_ptr + 3 * C + c, mean, mask=keep)
    if HAS_RUNNING:  # bnkit.conventions' recurrence (count > 1 on every lane, padding too)
        rm = tl.load(rm_ptr + c, mask=keep, other=0.0).to(tl.float32)
        rv = tl.load(rv_ptr + c, mask=keep, other=0.0).to(tl.float32)
        rm, rv = _update_running(rm, rv, shift + mean, var, count, factor)
        tl.store(rm_ptr + c, rm.to(rm_ptr.dtype.element_ty), mask=keep)
        tl.store(rv_ptr + c, rv.to(rv_ptr.dtype.element_ty), mask=keep)
    mean3 = mean[None, :, None]
    scale3 = scale[None, :, None]
    bias3 = bias[None, :, None]
    for t in range(0, n_tiles):  # the second read of x: from L2
        offs, mask, c = _tile(t // tiles_b, t % tiles_b, tc, A, C, B, BA, BB=BB, BC=BC)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        out = ((x - shift3) - mean3) * scale3 + bias3
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fused_backward_kernel(x_ptr, dy_ptr, dx_ptr, w_ptr, centre_ptr, invstd_ptr, dw_ptr, db_ptr,
                           A, C, B, tiles_b, n_tiles, m,
                           TRAIN: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                           BA: tl.constexpr, BC: tl.constexpr, BB: tl.constexpr):
    """One program per channel block: the two sums over all its tiles, then dx.

    dx = gamma * invstd * (dy - (dbeta + xhat * dgamma) / m) in training,
    dx = gamma * invstd * dy with constant (running) statistics.
    centre_ptr: a (2, C) float32 array (shift, mean - shift): x - mean is
    computed as (x - shift) - (mean - shift).
    """
    tc = tl.program_id(0)
    c = tc * BC + tl.arange(0, BC)
    keep = c < C
    shift3 = tl.load(centre_ptr + c, mask=keep, other=0.0)[None, :, None]
    mean3 = tl.load(centre_ptr + C + c, mask=keep, other=0.0)[None, :, None]
    invstd = tl.load(invstd_ptr + c, mask=keep, other=1.0)
    s_dy = tl.zeros([BC], tl.float32)
    s_dyx = tl.zeros([BC], tl.float32)
    for t in range(0, n_tiles):  # fixed order: deterministic
        offs, mask, c = _tile(t // tiles_b, t % tiles_b, tc, A, C, B, BA, BB=BB, BC=BC)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s_dy += _sum_ab(dy)
        s_dyx += _sum_ab(dy * tl.where(mask, (x - shift3) - mean3, 0.0))  # centred: no cancellation
    c = tc * BC + tl.arange(0, BC)
    dbeta = s_dy
    dgamma = s_dyx * invstd
    k_dy = invstd
    if HAS_W:
        k_dy *= tl.load(w_ptr + c, mask=keep, other=1.0).to(tl.float32)
        tl.store(dw_ptr + c, dgamma, mask=keep)
    if HAS_B:
        tl.store(db_ptr + c, dbeta, mask=keep)
    if TRAIN:
        k_xc = -k_dy * invstd * dgamma / m  # times (x - mean)
        k_c = -k_dy * dbeta / m
    else:
        k_xc = tl.zeros([BC], tl.float32)
        k_c = tl.zeros([BC], tl.float32)
    k_dy3 = k_dy[None, :, None]
    k_xc3 = k_xc[None, :, None]
    k_c3 = k_c[None, :, None]
    for t in range(0, n_tiles):  # the second read of x and dy: from L2
        offs, mask, c = _tile(t // tiles_b, t % tiles_b, tc, A, C, B, BA, BB=BB, BC=BC)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dx = k_dy3 * dy + k_xc3 * ((x - shift3) - mean3) + k_c3
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _channel_of(offs, C, B, ROWS: tl.constexpr):
    """Channel of each flat offset: the last index for (A, C) rows, (offs // B) % C for (A, C, B)."""
    if ROWS:
        return offs % C
    else:
        return (offs // B) % C


@triton.jit
def _normalize_flat_kernel(x_ptr, out_ptr, mean_ptr, scale_ptr, b_ptr, E, C, B,
                           HAS_B: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """out = (x - mean[c]) * scale[c] + bias[c] over the flat tensor."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < E
    c = _channel_of(offs, C, B, ROWS)
    mean = tl.load(mean_ptr + c, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + c, mask=mask, other=0.0)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    out = (x - mean) * scale
    if HAS_B:
        out += tl.load(b_ptr + c, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


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


def config(shape, itemsize):
    """The committed configuration of an (A, C, B) array's shape class."""
    kind = "rows" if shape[2] == 1 else "runs"
    return kind, CONFIGS[(kind, 2 if itemsize == 2 else 4)]


def _l2_bytes(x):
    if x.is_cuda:
        return torch.cuda.get_device_properties(x.device).L2_cache_size
    return INTERPRETER_L2_BYTES


def fused_tiles(shape, itemsize, sms):
    """(BA, BC, BB, programs) of the fused kernels for an (A, C, B) array."""
    A, C, B = shape
    kind, cfg = config(shape, itemsize)
    if kind == "runs":
        BC, BB = 1, tk._run_length(B)
    else:  # the widest channel block that still gives every multiprocessor a program
        min_bc = max(1, cfg["row_bytes"] // itemsize)
        BC = min(max(min_bc, _pow2_floor(max(1, C // sms))), cfg["max_bc"], tk._pow2(C))
        BB = 1
    BA = max(1, min(tk._pow2(A), cfg["tile_bytes"] // itemsize // (BC * BB)))
    return BA, BC, BB, -(-C // BC)


def plan(x3, shape, tensors=1):
    """'fused' or 'split' for a pass that reads `tensors` arrays like x3 twice."""
    sms = tk._num_sms(x3)
    *_, programs = fused_tiles(shape, x3.element_size(), sms)
    nbytes = tensors * x3.numel() * x3.element_size()
    if nbytes <= SMALL_BYTES:
        return "fused"
    if nbytes <= L2_FRACTION * _l2_bytes(x3) and programs >= MIN_PROGRAMS_PER_SM * sms:
        return "fused"
    return "split"


def _check_path(path):
    if path is not None and path not in PATHS:
        raise ValueError(f"path must be one of {PATHS} or None (automatic), got {path!r}")


def forward_train(x3, shape, weight, bias, running_mean, running_var, factor, eps, path=None):
    """(out, mean, invstd, centre) of training mode for an (A, C, B) array:
    out in x3's layout; mean, invstd float32 (C,); centre the (2, C) float32
    (shift, mean - shift) that `backward_train` takes. Updates the running
    statistics in place when given, with the running-average `factor`
    (`bnkit.torch.momentum_factor_`). weight or bias may be None."""
    _check_path(path)
    path = path or plan(x3, shape)
    A, C, B = shape
    out = torch.empty_like(x3)
    if path == "fused":
        BA, BC, BB, programs = fused_tiles(shape, x3.element_size(), tk._num_sms(x3))
        stats = torch.empty((4, C), dtype=torch.float32, device=x3.device)
        has_running = running_mean is not None
        _fused_forward_kernel[(programs,)](
            x3, out, _or(weight, stats), _or(bias, stats), _or(running_mean, stats), _or(running_var, stats),
            stats, A, C, B, -(-B // BB), -(-A // BA) * -(-B // BB), float(eps), float(factor),
            HAS_W=weight is not None, HAS_B=bias is not None, HAS_RUNNING=has_running, BA=BA, BC=BC, BB=BB,
            num_warps=config(shape, x3.element_size())[1]["num_warps"])
        return out, stats[0], stats[1], stats[2:]
    ones = torch.ones(C, dtype=torch.float32, device=x3.device)
    mean, invstd, scale, _ = tk.stats(x3, shape, _or(weight, ones), _or(bias, ones), running_mean, running_var,
                                      factor, eps)
    grid, block, warps = _flat_grid(x3, shape)
    _normalize_flat_kernel[grid](x3, out, mean, scale, _or(bias, scale), x3.numel(), C, B,
                                 HAS_B=bias is not None, ROWS=B == 1, BLOCK=block, num_warps=warps)
    return out, mean, invstd, _centre(mean)


def _centre(mean):
    """(shift, mean - shift) with shift 0."""
    return torch.stack((torch.zeros_like(mean), mean))


def backward_train(x3, dy3, shape, weight, has_bias, mean, invstd, centre, train=True, path=None):
    """(dx, dweight, dbias) for an (A, C, B) array; dy3 in x3's layout;
    mean, invstd, centre from `forward_train`. dweight is None when weight
    is, dbias None unless has_bias. train=False: the statistics are
    constants (eval mode)."""
    _check_path(path)
    path = path or plan(x3, shape, tensors=2)
    A, C, B = shape
    if path == "fused":
        BA, BC, BB, programs = fused_tiles(shape, x3.element_size(), tk._num_sms(x3))
        dx = torch.empty_like(x3)
        dwb = torch.empty((2, C), dtype=torch.float32, device=x3.device)
        _fused_backward_kernel[(programs,)](
            x3, dy3, dx, _or(weight, dwb), centre, invstd, dwb[0], dwb[1],
            A, C, B, -(-B // BB), -(-A // BA) * -(-B // BB), float(A * B),
            TRAIN=train, HAS_W=weight is not None, HAS_B=has_bias, BA=BA, BC=BC, BB=BB,
            num_warps=config(shape, x3.element_size())[1]["num_warps"])
        dw, db = dwb[0], dwb[1]
    else:
        w = _or(weight, torch.ones(C, dtype=torch.float32, device=x3.device))
        dx, dw, db = tk.backward(x3, dy3, w, mean, invstd, shape, train=train)
    pdt = weight.dtype if weight is not None else torch.float32
    return dx, dw.to(pdt) if weight is not None else None, db.to(pdt) if has_bias else None


def forward_eval(x3, shape, weight, bias, running_mean, running_var, eps):
    """out with the running statistics, in one launch."""
    out = torch.empty_like(x3)
    grid, block, warps = _flat_grid(x3, shape)
    _eval_flat_kernel[grid](x3, out, running_mean, running_var, _or(weight, running_mean), _or(bias, running_mean),
                            x3.numel(), shape[1], shape[2], float(eps), HAS_W=weight is not None,
                            HAS_B=bias is not None, ROWS=shape[2] == 1, BLOCK=block, num_warps=warps)
    return out


def _or(t, dummy):
    """t, or a dummy pointer for a kernel argument its constexpr flag says is absent."""
    return dummy if t is None else t


def _flat_grid(x3, shape):
    """(grid, BLOCK, num_warps) of the flat elementwise kernels."""
    _, cfg = config(shape, x3.element_size())
    block = tk._pow2(min(x3.numel(), cfg["flat_bytes"] // x3.element_size()))
    return (-(-x3.numel() // block),), block, cfg["flat_warps"]


def _dy_like(dout, x3):
    if dout.stride() == x3.stride():
        return dout
    return dout.contiguous(memory_format=tk._format_of(x3))


class TrainFunction(torch.autograd.Function):
    """Training-mode batch norm, differentiable in x, weight, bias.

    apply(x, weight, bias, running_mean, running_var, factor, eps, axis, path)
    -> out. weight or bias may be None (no such parameter: affine=False);
    running_mean/var may be None; factor is the running-average factor
    itself (a float, `bnkit.torch.momentum_factor_`). path None: `plan`.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, factor, eps, axis, path):
        x3, shape = tk._view3d(x, axis)
        out, mean, invstd, centre = forward_train(x3, shape, weight, bias, running_mean, running_var, factor, eps,
                                                  path)
        ctx.save_for_backward(x3, weight, mean, invstd, centre)
        ctx.shape, ctx.path, ctx.has_bias = shape, path, bias is not None
        return out

    @staticmethod
    def backward(ctx, dout):
        x3, weight, mean, invstd, centre = ctx.saved_tensors
        dx, dw, db = backward_train(x3, _dy_like(dout, x3), ctx.shape, weight, ctx.has_bias, mean, invstd, centre,
                                    True, ctx.path)
        return dx, dw, db, None, None, None, None, None, None


class EvalFunction(torch.autograd.Function):
    """Eval mode with the running statistics; the backward treats them as constants."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, axis, path):
        x3, shape = tk._view3d(x, axis)
        out = forward_eval(x3, shape, weight, bias, running_mean, running_var, eps)
        ctx.save_for_backward(x3, weight, running_mean, running_var)
        ctx.shape, ctx.eps, ctx.path, ctx.has_bias = shape, eps, path, bias is not None
        return out

    @staticmethod
    def backward(ctx, dout):
        x3, weight, rm, rv = ctx.saved_tensors
        mean, invstd = rm.float(), torch.rsqrt(rv.float() + ctx.eps)
        dx, dw, db = backward_train(x3, _dy_like(dout, x3), ctx.shape, weight, ctx.has_bias, mean, invstd,
                                    _centre(mean), False, ctx.path)
        return dx, dw, db, None, None, None, None, None


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=conventions.MOMENTUM, eps=conventions.EPS, axis=1, num_batches_tracked=None, path=None):
    """torch.nn.functional.batch_norm on the fewer-launch kernels.

    The same arguments, conventions and validation as
    `bnkit.triton_kernels.batch_norm` (`bnkit.conventions`), plus `path`:
    'fused' or 'split' forces a path, None lets `plan` choose per pass.
    weight or bias None means no such parameter; no ones/zeros tensors are
    made on the fused paths.
    """
    axis, eps, momentum = check_batch_norm_args(x, running_mean, running_var, weight, bias, training, momentum, eps,
                                                axis, num_batches_tracked)
    tk._check_supported(x)
    _check_path(path)
    if training:
        factor = momentum_factor_(num_batches_tracked, momentum) if running_mean is not None else 0.0
        return TrainFunction.apply(x, weight, bias, running_mean, running_var, factor, eps, axis, path)
    return EvalFunction.apply(x, weight, bias, running_mean, running_var, eps, axis, path)
