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
statistics (no E[x^2] - E[x]^2); the output is (x - mean) * scale + bias and
dx uses (x - mean), so a large |mean| is subtracted before any rounding by
the scale.

float16/bfloat16 get their own tile sizes in `CONFIGS` (the same bytes per
tile, so twice the elements, and rows of at least 32 bytes). `CONFIGS` is
data, committed: no autotuning runs at import or test time, so CI is
deterministic. Its values are first-principles choices that have not yet
been measured on a GPU (see CONTRIBUTING.md, "Benchmark").
"""

import torch
import triton
import triton.language as tl

from . import triton_kernels as tk
from .triton_kernels import _sum_ab, _tile

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
def _fused_forward_kernel(x_ptr, out_ptr, w_ptr, b_ptr, rm_ptr, rv_ptr, mean_ptr, invstd_ptr,
                          A, C, B, tiles_b, n_tiles, eps, momentum,
                          HAS_AFFINE: tl.constexpr, HAS_RUNNING: tl.constexpr,
                          BA: tl.constexpr, BC: tl.constexpr, BB: tl.constexpr):
    """One program per channel block: statistics over all its tiles, then out."""
    tc = tl.program_id(0)
    mean = tl.zeros([BC], tl.float32)
    m2 = tl.zeros([BC], tl.float32)
    count = tl.zeros([BC], tl.float32)
    for t in range(0, n_tiles):  # tile order fixed: the merge is deterministic
        ta = t // tiles_b
        tb = t % tiles_b
        offs, mask, c = _tile(ta, tb, tc, A, C, B, BA, BB=BB, BC=BC)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        n = (tl.minimum(A - ta * BA, BA) * tl.minimum(B - tb * BB, BB)).to(tl.float32)
        t_mean = _sum_ab(x) / n
        d = tl.where(mask, x - t_mean[None, :, None], 0.0)
        t_m2 = _sum_ab(d * d)
        total = count + n  # Chan et al.'s merge of (count, mean, M2)
        delta = t_mean - mean
        mean += delta * (n / total)
        m2 += t_m2 + delta * delta * (count * (n / total))
        count = total
    c = tc * BC + tl.arange(0, BC)
    keep = c < C
    invstd = 1.0 / tl.sqrt(m2 / count + eps)
    if HAS_AFFINE:
        scale = tl.load(w_ptr + c, mask=keep, other=1.0).to(tl.float32) * invstd
        bias = tl.load(b_ptr + c, mask=keep, other=0.0).to(tl.float32)
    else:
        scale = invstd
        bias = tl.zeros([BC], tl.float32)
    tl.store(mean_ptr + c, mean, mask=keep)
    tl.store(invstd_ptr + c, invstd, mask=keep)
    if HAS_RUNNING:  # PyTorch's recurrence; running_var takes the unbiased variance
        rm = tl.load(rm_ptr + c, mask=keep, other=0.0).to(tl.float32)
        rv = tl.load(rv_ptr + c, mask=keep, other=0.0).to(tl.float32)
        rm = (1.0 - momentum) * rm + momentum * mean
        rv = (1.0 - momentum) * rv + momentum * (m2 / tl.maximum(count - 1.0, 1.0))
        tl.store(rm_ptr + c, rm.to(rm_ptr.dtype.element_ty), mask=keep)
        tl.store(rv_ptr + c, rv.to(rv_ptr.dtype.element_ty), mask=keep)
    mean3 = mean[None, :, None]
    scale3 = scale[None, :, None]
    bias3 = bias[None, :, None]
    for t in range(0, n_tiles):  # the second read of x: from L2
        offs, mask, c = _tile(t // tiles_b, t % tiles_b, tc, A, C, B, BA, BB=BB, BC=BC)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        out = (x - mean3) * scale3 + bias3
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fused_backward_kernel(x_ptr, dy_ptr, dx_ptr, w_ptr, mean_ptr, invstd_ptr, dw_ptr, db_ptr,
                           A, C, B, tiles_b, n_tiles, m,
                           TRAIN: tl.constexpr, HAS_AFFINE: tl.constexpr,
                           BA: tl.constexpr, BC: tl.constexpr, BB: tl.constexpr):
    """One program per channel block: the two sums over all its tiles, then dx.

    dx = gamma * invstd * (dy - (dbeta + xhat * dgamma) / m) in training,
    dx = gamma * invstd * dy with constant (running) statistics.
    """
    tc = tl.program_id(0)
    c = tc * BC + tl.arange(0, BC)
    keep = c < C
    mean = tl.load(mean_ptr + c, mask=keep, other=0.0)
    invstd = tl.load(invstd_ptr + c, mask=keep, other=1.0)
    mean3 = mean[None, :, None]
    s_dy = tl.zeros([BC], tl.float32)
    s_dyx = tl.zeros([BC], tl.float32)
    for t in range(0, n_tiles):  # fixed order: deterministic
        offs, mask, c = _tile(t // tiles_b, t % tiles_b, tc, A, C, B, BA, BB=BB, BC=BC)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s_dy += _sum_ab(dy)
        s_dyx += _sum_ab(dy * tl.where(mask, x - mean3, 0.0))  # centred: no cancellation
    c = tc * BC + tl.arange(0, BC)
    dbeta = s_dy
    dgamma = s_dyx * invstd
    if HAS_AFFINE:
        k_dy = tl.load(w_ptr + c, mask=keep, other=1.0).to(tl.float32) * invstd
        tl.store(dw_ptr + c, dgamma, mask=keep)
        tl.store(db_ptr + c, dbeta, mask=keep)
    else:
        k_dy = invstd
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
        dx = k_dy3 * dy + k_xc3 * (x - mean3) + k_c3
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
                           HAS_AFFINE: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """out = (x - mean[c]) * scale[c] + bias[c] over the flat tensor."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < E
    c = _channel_of(offs, C, B, ROWS)
    mean = tl.load(mean_ptr + c, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + c, mask=mask, other=0.0)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    out = (x - mean) * scale
    if HAS_AFFINE:
        out += tl.load(b_ptr + c, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _eval_flat_kernel(x_ptr, out_ptr, rm_ptr, rv_ptr, w_ptr, b_ptr, E, C, B, eps,
                      HAS_AFFINE: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Eval: out = (x - running_mean) / sqrt(running_var + eps) * weight + bias, one launch."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < E
    c = _channel_of(offs, C, B, ROWS)
    rm = tl.load(rm_ptr + c, mask=mask, other=0.0).to(tl.float32)
    scale = 1.0 / tl.sqrt(tl.load(rv_ptr + c, mask=mask, other=1.0).to(tl.float32) + eps)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_AFFINE:
        scale *= tl.load(w_ptr + c, mask=mask, other=1.0).to(tl.float32)
    out = (x - rm) * scale
    if HAS_AFFINE:
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


def forward_train(x3, shape, weight, bias, running_mean, running_var, momentum, eps, path=None):
    """(out, mean, invstd) of training mode for an (A, C, B) array; updates the
    running statistics in place when given. weight/bias None: affine=False."""
    _check_path(path)
    path = path or plan(x3, shape)
    A, C, B = shape
    out = torch.empty_like(x3)
    has_affine = weight is not None
    if path == "fused":
        BA, BC, BB, programs = fused_tiles(shape, x3.element_size(), tk._num_sms(x3))
        stats = torch.empty((2, C), dtype=torch.float32, device=x3.device)
        has_running = running_mean is not None
        _fused_forward_kernel[(programs,)](
            x3, out, weight if has_affine else stats, bias if has_affine else stats,
            running_mean if has_running else stats, running_var if has_running else stats,
            stats[0], stats[1], A, C, B, -(-B // BB), -(-A // BA) * -(-B // BB), float(eps), float(momentum),
            HAS_AFFINE=has_affine, HAS_RUNNING=has_running, BA=BA, BC=BC, BB=BB,
            num_warps=config(shape, x3.element_size())[1]["num_warps"])
        return out, stats[0], stats[1]
    ones = torch.ones(C, dtype=torch.float32, device=x3.device) if not has_affine else weight
    zeros = torch.zeros(C, dtype=torch.float32, device=x3.device) if not has_affine else bias
    mean, invstd, scale, _ = tk.stats(x3, shape, ones, zeros, running_mean, running_var, momentum, eps)
    grid, block, warps = _flat_grid(x3, shape)
    _normalize_flat_kernel[grid](x3, out, mean, scale, bias if has_affine else scale, x3.numel(), C, B,
                                 HAS_AFFINE=has_affine, ROWS=B == 1, BLOCK=block, num_warps=warps)
    return out, mean, invstd


def backward_train(x3, dy3, shape, weight, mean, invstd, train=True, path=None):
    """(dx, dweight, dbias) for an (A, C, B) array; dy3 in x3's layout.
    dweight/dbias are None when weight is None (affine=False)."""
    _check_path(path)
    path = path or plan(x3, shape, tensors=2)
    A, C, B = shape
    has_affine = weight is not None
    if path == "fused":
        BA, BC, BB, programs = fused_tiles(shape, x3.element_size(), tk._num_sms(x3))
        dx = torch.empty_like(x3)
        dwb = torch.empty((2, C), dtype=torch.float32, device=x3.device)
        _fused_backward_kernel[(programs,)](
            x3, dy3, dx, weight if has_affine else dwb, mean, invstd, dwb[0], dwb[1],
            A, C, B, -(-B // BB), -(-A // BA) * -(-B // BB), float(A * B),
            TRAIN=train, HAS_AFFINE=has_affine, BA=BA, BC=BC, BB=BB,
            num_warps=config(shape, x3.element_size())[1]["num_warps"])
        if not has_affine:
            return dx, None, None
        return dx, dwb[0].to(weight.dtype), dwb[1].to(weight.dtype)
    w = weight if has_affine else torch.ones(C, dtype=torch.float32, device=x3.device)
    dx, dw, db = tk.backward(x3, dy3, w, mean, invstd, shape, train=train)
    return (dx, dw, db) if has_affine else (dx, None, None)


def forward_eval(x3, shape, weight, bias, running_mean, running_var, eps):
    """out with the running statistics, one launch."""
    out = torch.empty_like(x3)
    has_affine = weight is not None
    grid, block, warps = _flat_grid(x3, shape)
    _eval_flat_kernel[grid](x3, out, running_mean, running_var, weight if has_affine else running_mean,
                            bias if has_affine else running_mean, x3.numel(), shape[1], shape[2], float(eps),
                            HAS_AFFINE=has_affine, ROWS=shape[2] == 1, BLOCK=block, num_warps=warps)
    return out


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

    apply(x, weight, bias, running_mean, running_var, momentum, eps, axis, path)
    -> out. weight/bias None means affine=False; running_mean/var may be
    None; momentum is the factor itself (a float). path None chooses.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, axis, path):
        x3, shape = tk._view3d(x, axis)
        out, mean, invstd = forward_train(x3, shape, weight, bias, running_mean, running_var,
                                          momentum, eps, path)
        ctx.save_for_backward(x3, weight, mean, invstd)
        ctx.shape, ctx.path = shape, path
        return out

    @staticmethod
    def backward(ctx, dout):
        x3, weight, mean, invstd = ctx.saved_tensors
        dx, dw, db = backward_train(x3, _dy_like(dout, x3), ctx.shape, weight, mean, invstd, True, ctx.path)
        return dx, dw, db, None, None, None, None, None, None


class EvalFunction(torch.autograd.Function):
    """Eval mode with the running statistics; the backward treats them as constants."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, axis, path):
        x3, shape = tk._view3d(x, axis)
        out = forward_eval(x3, shape, weight, bias, running_mean, running_var, eps)
        ctx.save_for_backward(x3, weight, running_mean, running_var)
        ctx.shape, ctx.eps, ctx.path = shape, eps, path
        return out

    @staticmethod
    def backward(ctx, dout):
        x3, weight, rm, rv = ctx.saved_tensors
        mean, invstd = rm.float(), torch.rsqrt(rv.float() + ctx.eps)
        dx, dw, db = backward_train(x3, _dy_like(dout, x3), ctx.shape, weight, mean, invstd, False, ctx.path)
        return dx, dw, db, None, None, None, None, None


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, axis=1, path=None):
    """torch.nn.functional.batch_norm on the fewer-launch kernels.

    Same semantics and checks as `bnkit.triton_kernels.batch_norm` (training
    uses the batch statistics and updates the running ones in place; eval
    uses the running statistics); weight/bias None means affine=False, with
    no ones/zeros tensors made. `momentum` is the running-average factor
    (a float). `path` forces 'fused' or 'split' (None: `plan` chooses).
    """
    tk._check(x, weight, bias, axis)
    _check_path(path)
    axis %= x.dim()
    C = x.shape[axis]
    if (weight is None) != (bias is None):
        raise ValueError("pass both weight and bias, or neither (affine=False)")
    if training:
        if x.numel() // C < 2:
            raise ValueError("Expected more than 1 value per channel when training, "
                             f"got input of shape {tuple(x.shape)}")
        if running_mean is not None and momentum is None:
            raise ValueError("momentum must be a float here: resolve None (cumulative average) to its factor first")
        return TrainFunction.apply(x, weight, bias, running_mean, running_var,
                                   0.0 if momentum is None else momentum, eps, axis, path)
    if running_mean is None or running_var is None:
        raise ValueError("eval mode needs running_mean and running_var (or pass training=True)")
    return EvalFunction.apply(x, weight, bias, running_mean, running_var, eps, axis, path)
