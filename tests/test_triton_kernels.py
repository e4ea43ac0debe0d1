"""bnkit's Triton kernels against torch (float64) and bnkit.fast.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1,
set by conftest.py before triton is imported) on CPU tensors, so the
shapes are small. With CUDA they run compiled, on the GPU.
"""

import numpy as np
import pytest

from _triton import DEVICE, torch  # first: skips the module without Triton

import torch.nn.functional as F

from bnkit import fast
from bnkit import triton_kernels as tk


# (shape, axis, channels_last): every layout, C from 1 to > one tile of channels
CASES = [
    ((64, 10), 1, False),  # (N, D)
    ((5, 300), 1, False),  # more channels than one tile (128), tiny N
    ((3, 1), 1, False),  # tiny: three values per channel (with two, dx is 0 up to eps)
    ((8, 3, 5, 7), 1, False),  # NCHW
    ((3, 1, 40, 40), 1, False),  # C = 1, larger H*W
    ((3, 16, 1, 1), 1, False),  # 1x1 spatial: B = 1 inside NCHW
    ((8, 3, 5, 7), 1, True),  # channels-last NHWC
    ((4, 130, 3, 3), 1, True),  # channels-last, two channel tiles
    ((6, 5, 4, 3), -1, False),  # (N, H, W, C) with axis=-1
]


def make(shape, axis, channels_last, dtype=torch.float32, offset=5.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = shape[axis]
    x = (torch.randn(shape, generator=g) * 3 + offset).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(C, generator=g)
    b = torch.randn(C, generator=g)
    dy = torch.randn(shape, generator=g).to(dtype)
    return x.to(DEVICE), w.to(DEVICE), b.to(DEVICE), dy.to(DEVICE)


def rel(a, ref):
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def run_triton(x, w, b, dy, axis, rm=None, rv=None, momentum=0.1):
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    out = tk.batch_norm(xg, rm, rv, wg, bg, training=True, momentum=momentum, axis=axis)
    out.backward(dy)
    return out, xg.grad, wg.grad, bg.grad


def run_torch64(x, w, b, dy, axis, rm=None, rv=None, momentum=0.1):
    """PyTorch's own batch norm in float64, channel axis moved to 1."""
    xg = x.double().movedim(axis, 1).contiguous().requires_grad_()
    wg, bg = w.double().requires_grad_(), b.double().requires_grad_()
    out = F.batch_norm(xg, rm, rv, wg, bg, training=True, momentum=momentum)
    out.backward(dy.double().movedim(axis, 1))
    return out.movedim(1, axis), xg.grad.movedim(1, axis), wg.grad, bg.grad


@pytest.mark.parametrize("shape,axis,channels_last", CASES)
def test_forward_backward_match_torch_float64(shape, axis, channels_last):
    x, w, b, dy = make(shape, axis, channels_last)
    got = run_triton(x, w, b, dy, axis)
    ref = run_torch64(x, w, b, dy, axis)
    for name, g, r in zip(("out", "dx", "dweight", "dbias"), got, ref):
        assert g.shape == r.shape, name
        assert rel(g, r) < 2e-5, (name, rel(g, r))
    assert got[0].stride() == x.stride()  # the output keeps the input's layout


@pytest.mark.parametrize("shape,axis,channels_last", CASES[:1] + CASES[3:4] + CASES[-1:])
def test_match_bnkit_fast(shape, axis, channels_last):
    x, w, b, dy = make(shape, axis, channels_last)
    out, dx, dw, db = run_triton(x, w, b, dy, axis)
    xn = x.cpu().double().numpy()
    f_out, cache = fast.batchnorm_forward(xn, w.cpu().double().numpy(), b.cpu().double().numpy(),
                                          {"mode": "train"}, axis=axis)
    f_dx, f_dw, f_db = fast.batchnorm_backward(dy.cpu().double().numpy(), cache)
    for g, r in ((out, f_out), (dx, f_dx), (dw, f_dw), (db, f_db)):
        assert rel(g, torch.from_numpy(np.asarray(r))) < 2e-5


def test_many_tiles_and_splits(monkeypatch):
    """Tiny tiles force many tiles per split and many splits: the Chan merges
    inside a program and across splits must agree with one pass."""
    monkeypatch.setattr(tk, "REDUCE_TILE", 16)
    monkeypatch.setattr(tk, "AFFINE_TILE", 16)
    for shape, axis, cl in (((37, 6), 1, False), ((9, 2, 5, 3), 1, False), ((9, 3, 4, 5), 1, True)):
        x, w, b, dy = make(shape, axis, cl, seed=3)
        monkeypatch.setattr(tk, "MIN_TILES", 1)
        assert tk._plan(x, tk._view3d(x, axis)[1], tk.SPLIT_WAVES)["splits"] > 1
        for g, r in zip(run_triton(x, w, b, dy, axis), run_torch64(x, w, b, dy, axis)):
            assert rel(g, r) < 2e-5


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)])
def test_half_precision_accumulates_in_float32(dtype, tol):
    x, w, b, dy = make((16, 4, 6, 6), 1, True, dtype=dtype)
    out, dx, dw, db = run_triton(x, w, b, dy, 1)
    assert out.dtype == dtype and dx.dtype == dtype and dw.dtype == torch.float32
    ref = run_torch64(x, w, b, dy, 1)  # same rounded inputs, float64 maths
    for g, r in zip((out, dx, dw, db), ref):
        assert rel(g, r) < tol


def test_large_mean_does_not_cancel():
    """|mean| = 1e4 >> std = 1: E[x^2] - E[x]^2 in float32 would lose the variance."""
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(64, 3, 8, 8, generator=g) + 1e4).to(DEVICE)
    rm, rv = torch.zeros(3, device=DEVICE), torch.ones(3, device=DEVICE)
    tk.batch_norm(x, rm, rv, training=True, momentum=1.0)  # momentum 1: running = batch
    var64 = x.double().var(dim=(0, 2, 3), unbiased=True)
    assert rel(rv, var64) < 1e-4
    assert rel(rm, x.double().mean(dim=(0, 2, 3))) < 1e-7


@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_running_stats_follow_torch(momentum):
    x, w, b, dy = make((12, 5, 3, 3), 1, False)
    rm, rv = torch.randn(5, device=DEVICE), torch.rand(5, device=DEVICE) + 0.5
    rm64, rv64 = rm.double(), rv.double()
    for _ in range(2):
        run_triton(x, w, b, dy, 1, rm, rv, momentum)
        run_torch64(x, w, b, dy, 1, rm64, rv64, momentum)
    assert rel(rm, rm64) < 1e-6 and rel(rv, rv64) < 1e-6


def test_eval_mode_matches_torch():
    x, w, b, dy = make((8, 4, 3, 3), 1, True)
    rm, rv = torch.randn(4, device=DEVICE), torch.rand(4, device=DEVICE) + 0.5
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    out = tk.batch_norm(xg, rm, rv, wg, bg, training=False)
    out.backward(dy)
    xr, wr, br = (t.double().detach().requires_grad_() for t in (x, w, b))
    ref = F.batch_norm(xr, rm.double(), rv.double(), wr, br, training=False)
    ref.backward(dy.double())
    for g, r in ((out, ref), (xg.grad, xr.grad), (wg.grad, wr.grad), (bg.grad, br.grad)):
        assert rel(g, r) < 2e-5


def test_deterministic():
    x, w, b, dy = make((32, 3, 6, 6), 1, False)
    first = run_triton(x, w, b, dy, 1)
    second = run_triton(x, w, b, dy, 1)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


def test_bad_input_is_refused():
    x = torch.randn(4, 3, device=DEVICE)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        tk.batch_norm(x.double(), training=True)
    with pytest.raises(ValueError, match="weight must have shape"):
        tk.batch_norm(x, weight=torch.ones(4, device=DEVICE), training=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        tk.batch_norm(x[:1], training=True)
    with pytest.raises(ValueError, match="running_mean"):
        tk.batch_norm(x, training=False)
