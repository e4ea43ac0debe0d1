"""bnkit.triton_fused's paths (fused one-launch, split + flat, eval) against torch in float64.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1,
set by conftest.py before triton is imported) on CPU tensors, so the shapes are small;
every path is forced explicitly, so each one is covered whatever `plan`
would choose. With CUDA they run compiled, and one test also runs the
benchmark's sizes.
"""

import pytest

from _triton import CUDA, DEVICE, torch  # first: skips the module without Triton

import torch.nn.functional as F

from bnkit import triton_fused as tf
from bnkit import triton_kernels as tk

PATHS = ["fused", "split"]

# (shape, channels_last): every layout and shape class of the fused kernels
CASES = [
    ((64, 10), False),  # (N, D): 'rows'
    ((5, 300), False),  # more channels than one block, tiny N
    ((8, 3, 5, 7), False),  # NCHW: 'runs', H*W = 35 not a power of two
    ((3, 16, 1, 1), False),  # 1x1 spatial: B = 1 inside NCHW
    ((8, 3, 5, 7), True),  # channels-last: 'rows'
    ((4, 130, 3, 3), True),  # channels-last, several channel blocks
]


def make(shape, channels_last, dtype=torch.float32, offset=5.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = shape[1]
    x = (torch.randn(shape, generator=g) * 3 + offset).to(dtype)
    dy = torch.randn(shape, generator=g).to(dtype)
    if channels_last:
        x, dy = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy))
    w, b = torch.randn(C, generator=g), torch.randn(C, generator=g)
    rm, rv = torch.randn(C, generator=g), torch.rand(C, generator=g) + 0.5
    return [t.to(DEVICE) for t in (x, w, b, dy, rm, rv)]


def rel(a, ref):
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def run(x, w, b, dy, rm, rv, training, path, momentum=0.3, affine=True):
    """(out, dx, dw, db) of bnkit.triton_fused; rm/rv updated in place."""
    xg = x.clone().requires_grad_()
    wg, bg = (w.clone().requires_grad_(), b.clone().requires_grad_()) if affine else (None, None)
    out = tf.batch_norm(xg, rm, rv, wg, bg, training=training, momentum=momentum, path=path)
    out.backward(dy)
    return out, xg.grad, wg.grad if affine else None, bg.grad if affine else None


def run_torch64(x, w, b, dy, rm, rv, training, momentum=0.3, affine=True):
    xg = x.double().detach().requires_grad_()
    wg, bg = (w.double().requires_grad_(), b.double().requires_grad_()) if affine else (None, None)
    out = F.batch_norm(xg, rm, rv, wg, bg, training=training, momentum=momentum)
    out.backward(dy.double())
    return out, xg.grad, wg.grad if affine else None, bg.grad if affine else None


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape,channels_last", CASES)
def test_training_matches_torch_float64(shape, channels_last, path):
    x, w, b, dy, rm, rv = make(shape, channels_last)
    rm64, rv64 = rm.double(), rv.double()
    for step in range(2):  # two steps: the running statistics' recurrence, not just one update
        got = run(x, w, b, dy, rm, rv, True, path)
        ref = run_torch64(x, w, b, dy, rm64, rv64, True)
        for name, g, r in zip(("out", "dx", "dweight", "dbias"), got, ref):
            assert g.shape == r.shape, name
            assert rel(g, r) < 2e-5, (name, step, rel(g, r))
    assert rel(rm, rm64) < 1e-6 and rel(rv, rv64) < 1e-6
    assert got[0].stride() == x.stride() and got[1].stride() == x.stride()  # layouts kept


@pytest.mark.parametrize("shape,channels_last", [CASES[0], CASES[2], CASES[5]])
def test_eval_matches_torch_float64(shape, channels_last):
    x, w, b, dy, rm, rv = make(shape, channels_last)
    rm0, rv0 = rm.clone(), rv.clone()
    for path in PATHS:  # eval has one forward kernel; the backward follows the path
        got = run(x, w, b, dy, rm, rv, False, path)
        ref = run_torch64(x, w, b, dy, rm.double(), rv.double(), False)
        for name, g, r in zip(("out", "dx", "dweight", "dbias"), got, ref):
            assert rel(g, r) < 2e-5, (name, path, rel(g, r))
    assert torch.equal(rm, rm0) and torch.equal(rv, rv0)  # eval leaves them alone


@pytest.mark.parametrize("path", PATHS)
def test_affine_false_and_no_running_stats(path):
    for shape, cl in (CASES[0], CASES[2], CASES[4]):
        x, w, b, dy, _, _ = make(shape, cl, seed=2)
        got = run(x, w, b, dy, None, None, True, path, affine=False)
        ref = run_torch64(x, w, b, dy, None, None, True, affine=False)
        assert got[2] is None and got[3] is None
        assert rel(got[0], ref[0]) < 2e-5 and rel(got[1], ref[1]) < 2e-5
        rm, rv = make(shape, cl)[4:]
        got = run(x, w, b, dy, rm, rv, False, path, affine=False)
        ref = run_torch64(x, w, b, dy, rm.double(), rv.double(), False, affine=False)
        assert rel(got[0], ref[0]) < 2e-5 and rel(got[1], ref[1]) < 2e-5


@pytest.mark.parametrize("path", PATHS)
def test_momentum_none_is_the_cumulative_average(path):
    x, w, b, dy, rm, rv = make((8, 3, 5, 7), True)
    count = torch.zeros((), dtype=torch.long, device=DEVICE)
    rm64, rv64, count64 = rm.double(), rv.double(), torch.zeros((), dtype=torch.long)
    for seed in range(3):
        xs = make((8, 3, 5, 7), True, seed=seed)[0]
        tf.batch_norm(xs, rm, rv, w, b, training=True, momentum=None, num_batches_tracked=count, path=path)
        count64 += 1
        F.batch_norm(xs.double(), rm64, rv64, training=True, momentum=1.0 / count64.item())
    assert count.item() == 3
    assert rel(rm, rm64) < 1e-6 and rel(rv, rv64) < 1e-6


@pytest.mark.parametrize("path", PATHS)
def test_weight_or_bias_alone(path):
    x, w, b, dy, rm, rv = make((8, 3, 5, 7), False, seed=4)
    for wb in ((w, None), (None, b)):
        xg = x.clone().requires_grad_()
        p = [t.clone().requires_grad_() if t is not None else None for t in wb]
        out = tf.batch_norm(xg, None, None, *p, training=True, path=path)
        out.backward(dy)
        xr = x.double().requires_grad_()
        pr = [t.double().requires_grad_() if t is not None else None for t in wb]
        ref = F.batch_norm(xr, None, None, *pr, training=True)
        ref.backward(dy.double())
        assert rel(out, ref) < 2e-5 and rel(xg.grad, xr.grad) < 2e-5
        for g, r in zip(p, pr):
            assert (g is None) == (r is None) and (g is None or rel(g.grad, r.grad) < 2e-5)


def test_many_tiles_splits_and_merge_blocks(monkeypatch):
    """Tiny tiles: every fused program walks many tiles (its Chan merge and
    both loops), and the split path has many splits per channel block,
    merged by the last one in several blocks, in every shape class."""
    small = {k: dict(v, tile_bytes=64, flat_bytes=64) for k, v in tf.CONFIGS.items()}
    monkeypatch.setattr(tf, "CONFIGS", small)
    monkeypatch.setattr(tf, "MERGE_BLOCK", 2)
    monkeypatch.setattr(tk, "REDUCE_TILE", 16)  # the split plan's tiles (triton_kernels' tuning)
    monkeypatch.setattr(tk, "MIN_TILES", 1)
    for shape, cl in (((37, 6), False), ((9, 2, 5, 3), False), ((9, 3, 4, 5), True)):
        x, w, b, dy, rm, rv = make(shape, cl, seed=3)
        x3, s3 = tk._view3d(x, 1)
        BA, BC, BB, _ = tf.fused_tiles(s3, 4, 4)
        assert -(-s3[0] // BA) * -(-s3[2] // BB) > 3  # several tiles per fused program
        for backward in (False, True):
            assert tf._split_plan(x3, s3, backward)[0]["splits"] > 2  # more than one merge block
        for path in PATHS:
            rm64, rv64 = rm.double(), rv.double()
            got = run(x, w, b, dy, rm, rv, True, path)
            for g, r in zip(got, run_torch64(x, w, b, dy, rm64, rv64, True)):
                assert rel(g, r) < 2e-5, (shape, path)
            assert rel(rm, rm64) < 1e-6 and rel(rv, rv64) < 1e-6


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)])
@pytest.mark.parametrize("path", PATHS)
def test_half_precision_accumulates_in_float32(dtype, tol, path):
    for shape, cl in (((16, 4, 6, 6), True), ((16, 4, 6, 6), False), ((32, 24), False)):
        x, w, b, dy, rm, rv = make(shape, cl, dtype=dtype)
        got = run(x, w, b, dy, rm, rv, True, path)
        assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == torch.float32
        assert rm.dtype == torch.float32
        ref = run_torch64(x, w, b, dy, None, None, True)  # the same rounded inputs, float64 maths
        for name, g, r in zip(("out", "dx", "dweight", "dbias"), got, ref):
            assert rel(g, r) < tol, (name, shape, cl, rel(g, r))
        out = tf.batch_norm(x, rm, rv, w, b, training=False)
        assert out.dtype == dtype
        assert rel(out, F.batch_norm(x.double(), rm.double(), rv.double(), w.double(), b.double())) < tol


@pytest.mark.parametrize("path", PATHS)
def test_large_mean_does_not_cancel(path):
    """|mean| = 1e4 >> std = 1: E[x^2] - E[x]^2 in float32 would lose the
    variance, and x * scale + shift would round away the output's digits."""
    g = torch.Generator().manual_seed(1)
    for shape, cl in (((16, 3, 8, 8), False), ((16, 3, 8, 8), True)):
        x = (torch.randn(shape, generator=g) + 1e4).to(DEVICE)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        dy = torch.randn(shape, generator=g).to(DEVICE)
        rm, rv = torch.zeros(3, device=DEVICE), torch.ones(3, device=DEVICE)
        w, b = torch.ones(3, device=DEVICE), torch.zeros(3, device=DEVICE)
        got = run(x, w, b, dy, rm, rv, True, path, momentum=1.0)  # momentum 1: running = batch
        ref = run_torch64(x, w, b, dy, None, None, True)
        assert rel(rv, x.double().var(dim=(0, 2, 3), unbiased=True)) < 1e-4
        # shifted sums: measured ~2e-7 (unshifted float32 sums of ~1e4 give ~4e-3 here)
        assert rel(got[0], ref[0]) < 1e-6 and rel(got[1], ref[1]) < 1e-6, (rel(got[0], ref[0]), rel(got[1], ref[1]))
        out = tf.batch_norm(x, rm, rv, w, b, training=False)
        assert rel(out, F.batch_norm(x.double(), rm.double(), rv.double())) < 1e-4


def test_deterministic():
    x, w, b, dy, rm, rv = make((32, 3, 6, 6), False)
    for path in PATHS:
        first = run(x, w, b, dy, rm.clone(), rv.clone(), True, path)
        second = run(x, w, b, dy, rm.clone(), rv.clone(), True, path)
        for a, c in zip(first, second):
            assert torch.equal(a, c)


def test_plan_on_the_benchmark_shapes(monkeypatch):
    """With an H100's 132 multiprocessors and 50 MB L2: the fused path for the
    small and L2-sized tensors with enough channels, split for the rest."""
    monkeypatch.setattr(tk, "_num_sms", lambda x: 132)
    monkeypatch.setattr(tf, "_l2_bytes", lambda x: 50 * 2**20)

    def path(shape, dtype, cl=False, tensors=1):
        x = torch.empty(shape, dtype=dtype, device="meta")
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        return tf.plan(*tk._view3d(x, 1), tensors=tensors)

    assert path((1024, 1024), torch.float32) == "fused"  # 4 MB: 128 programs of 32 KB, launches dominate
    assert path((1024, 1024), torch.float32, tensors=2) == "fused"
    assert path((256, 256, 14, 14), torch.float16) == "fused"  # 26 MB in L2, C = 256 programs
    assert path((256, 256, 14, 14), torch.float32) == "split"  # 51 MB: more than L2
    assert path((256, 64, 56, 56), torch.float32) == "split"
    assert path((128, 3, 224, 224), torch.bfloat16, cl=True) == "split"  # 3 channels: too few programs
    assert path((4096, 4096), torch.float32) == "split"
    assert path((64, 1, 128, 128), torch.float32) == "split"  # 4 MB but one channel: one program would read it all
    assert path((16, 1, 32, 32), torch.float32) == "fused"  # 64 KB in one program: launch-bound


def test_bad_input_is_refused():
    x, w, b = make((4, 3), False)[:3]
    with pytest.raises(ValueError, match="path must be one of"):
        tf.batch_norm(x, training=True, path="persistent")
    with pytest.raises(ValueError, match="needs num_batches_tracked"):
        tf.batch_norm(x, torch.zeros(3, device=DEVICE), torch.ones(3, device=DEVICE), training=True, momentum=None)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        tf.batch_norm(x[:1], training=True)
    with pytest.raises(ValueError, match="running_mean"):
        tf.batch_norm(x, training=False)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        tf.batch_norm(x.double(), training=True)


@pytest.mark.skipif(not CUDA, reason="the compiled kernels at the benchmark's sizes need a CUDA GPU")
@pytest.mark.parametrize("shape,cl,dtype", [((256, 256, 14, 14), False, torch.float16),
                                            ((1024, 1024), False, torch.bfloat16),
                                            ((256, 64, 56, 56), True, torch.float16)])
def test_benchmark_sizes_on_the_gpu(shape, cl, dtype):
    x, w, b, dy, rm, rv = make(shape, cl, dtype=dtype)
    got = run(x, w, b, dy, rm, rv, True, None)
    ref = run_torch64(x, w, b, dy, None, None, True)
    for g, r in zip(got, ref):
        assert rel(g, r) < 1.5e-2
