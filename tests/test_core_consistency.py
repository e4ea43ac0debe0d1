"""Staged and fast agree with each other and with numerical gradients;
the other norms match torch; numerics hold where naive formulas cancel."""
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from bnkit import fast, norms, staged
from bnkit.gradcheck import numerical_gradient, rel_error


@st.composite
def small_inputs(draw):
    shape = draw(st.sampled_from([(4, 3), (5, 1), (2, 3, 4), (3, 2, 2, 2), (2, 2, 1, 3, 2)]))
    axis = draw(st.sampled_from([1, -1]))
    mode = draw(st.sampled_from(["train", "eval"]))
    seed = draw(st.integers(0, 2**32 - 1))
    return shape, axis, mode, seed


@given(small_inputs())
def test_staged_fast_and_numerical_gradients_agree(inp):
    shape, axis, mode, seed = inp
    rng = np.random.default_rng(seed)
    C = shape[axis]
    x = rng.normal(2.0, 3.0, size=shape)
    gamma, beta = rng.normal(size=C), rng.normal(size=C)
    dout = rng.normal(size=shape)
    stats = dict(running_mean=rng.normal(size=C), running_var=rng.uniform(0.5, 2, size=C))

    def param():
        return dict(mode=mode, momentum=0.3, **{k: v.copy() for k, v in stats.items()})

    out_s, cache_s = staged.batchnorm_forward(x, gamma, beta, param(), axis=axis)
    out_f, cache_f = fast.batchnorm_forward(x, gamma, beta, param(), axis=axis)
    np.testing.assert_allclose(out_s, out_f, rtol=1e-12, atol=1e-12)
    grads_s = staged.batchnorm_backward(dout, cache_s)
    grads_f = fast.batchnorm_backward(dout, cache_f)
    for gs, gf in zip(grads_s, grads_f):
        assert gs.shape == gf.shape
        np.testing.assert_allclose(gs, gf, rtol=1e-10, atol=1e-12)

    def out_of(x_=x, g_=gamma, b_=beta):
        return fast.batchnorm_forward(x_, g_, b_, param(), axis=axis)[0]

    # Centred differences are off by about 1e-10 in absolute terms (rounding, h = 1e-5), so an entry
    # 1e-5 the size of the others (seed 65535 draws dx = 5e-6 beside 0.76) cannot meet an elementwise
    # relative bound: each entry is held to 1e-5 relative, or 1e-8 of the gradient's largest entry.
    for name, value, grad in (("x_", x, grads_s[0]), ("g_", gamma, grads_s[1]), ("b_", beta, grads_s[2])):
        numerical = numerical_gradient(lambda a: out_of(**{name: a}), value.copy(), dout)
        np.testing.assert_allclose(numerical, grad, rtol=1e-5, atol=1e-8 * np.abs(grad).max())


@pytest.mark.parametrize("shape,axis", [((5, 3), 1), ((4, 3, 2, 2), 1), ((4, 2, 2, 3), -1)])
def test_staged_cache_holds_every_gate(shape, axis):
    """Each gate's output in the cache is its formula (staged.GATES) applied to
    its inputs in the cache."""
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, size=shape)
    C = shape[axis]
    gamma, beta = rng.normal(size=C), rng.normal(size=C)
    out, cache = staged.batchnorm_forward(x, gamma, beta, {"eps": 1e-3}, axis=axis)
    values = {"out": out, **{k: getattr(cache, k) for k in ("x", "mu", "xc", "sq", "var", "std", "inv_std",
                                                               "xhat", "gamma", "beta", "scaled")}}
    namespace = dict(mean=lambda a: np.mean(a, axis=cache.axes, keepdims=True), sqrt=np.sqrt, eps=1e-3)
    assert [g.output for g in staged.GATES][-1] == "out"
    for gate in staged.GATES:
        lhs, rhs = (side.strip() for side in gate.formula.split("="))
        assert lhs == gate.output, gate
        expected = eval(rhs, namespace, {k: values[k] for k in gate.inputs})
        np.testing.assert_allclose(values[gate.output], expected, rtol=1e-12, atol=1e-12, err_msg=gate.name)
    assert np.all(cache.var > 1.0)  # the data's variance is 4: the gates are not all zeros


def test_numerical_gradient_restores_x_even_if_f_raises():
    x = np.arange(4.0)
    calls = []

    def f(a):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return float(np.sum(a**2))

    with pytest.raises(RuntimeError):
        numerical_gradient(f, x)
    np.testing.assert_array_equal(x, np.arange(4.0))


def test_numerical_gradient_of_a_known_function():
    x = np.array([1.0, -2.0, 3.0])
    np.testing.assert_allclose(numerical_gradient(lambda a: np.sum(a**3), x), 3 * x**2, rtol=1e-8)


def test_rel_error_refuses_broadcasting():
    with pytest.raises(ValueError, match=r"\(1, 3\).*\(3,\)"):
        rel_error(np.ones((1, 3)), np.ones(3))


# ---- numerics --------------------------------------------------------------

@pytest.mark.parametrize("impl", [staged, fast])
def test_float32_with_a_large_mean_does_not_cancel(impl):
    rng = np.random.default_rng(1)
    x = (1e4 + rng.normal(size=(4096, 8))).astype(np.float32)
    gamma, beta = np.ones(8, np.float32), np.zeros(8, np.float32)
    out, cache = impl.batchnorm_forward(x, gamma, beta, {})
    ref, _ = impl.batchnorm_forward(x.astype(np.float64), gamma.astype(np.float64), beta.astype(np.float64), {})
    assert out.dtype == np.float32
    err = np.max(np.abs(out - ref))
    assert err < 1e-5, err  # torch CPU is off by ~8e-3 here; E[x^2]-E[x]^2 by O(1)
    # the naive formula really is broken at this offset: the test is not vacuous
    naive_var = np.mean(x * x, axis=0) - np.mean(x, axis=0) ** 2
    assert np.max(np.abs(naive_var - np.var(x.astype(np.float64), axis=0))) > 1e-2


def test_float16_inputs_accumulate_in_float32():
    rng = np.random.default_rng(2)
    x = (100 + rng.normal(size=(2048, 4))).astype(np.float16)
    out, cache = fast.batchnorm_forward(x, None, None, {})
    assert out.dtype == np.float16
    ref, _ = fast.batchnorm_forward(x.astype(np.float64), None, None, {})
    assert np.max(np.abs(out.astype(np.float64) - ref)) < 1e-2
    dx, _, _ = fast.batchnorm_backward(np.ones_like(x), cache)
    assert dx.dtype == np.float16


@pytest.mark.parametrize("impl", [staged, fast])
def test_nan_propagates_to_its_channel_only(impl):
    x = np.random.default_rng(3).normal(size=(5, 3))
    x[2, 1] = np.nan
    out, _ = impl.batchnorm_forward(x, np.ones(3), np.zeros(3), {})
    assert np.isnan(out[:, 1]).all()
    assert np.isfinite(out[:, [0, 2]]).all()


# ---- other norms against torch ----------------------------------------------

def _check_norm(fwd, bwd, torch_fn, x, gamma, beta, *args):
    rng = np.random.default_rng(4)
    dout = rng.normal(size=x.shape)
    out, cache = fwd(x, gamma, beta, *args)
    dx, dgamma, dbeta = bwd(dout, cache)
    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    yt = torch_fn(xt, gt, bt)
    yt.backward(torch.from_numpy(dout))
    for mine, theirs in [(out, yt), (dx, xt.grad), (dgamma, gt.grad), (dbeta, bt.grad)]:
        assert mine.shape == tuple(theirs.shape)
        np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=1e-9, atol=1e-11)


def test_layernorm_matches_torch():
    rng = np.random.default_rng(5)
    for shape in [(6, 5), (3, 4, 2, 2)]:
        x = rng.normal(1, 3, size=shape)
        gamma, beta = rng.normal(size=shape[1:]), rng.normal(size=shape[1:])
        _check_norm(norms.layernorm_forward, norms.layernorm_backward,
                    lambda a, g, b: F.layer_norm(a, shape[1:], g, b, 1e-5), x, gamma, beta, {})


def test_instancenorm_matches_torch():
    rng = np.random.default_rng(6)
    x = rng.normal(1, 3, size=(3, 4, 5, 2))
    gamma, beta = rng.normal(size=4), rng.normal(size=4)
    _check_norm(norms.instancenorm_forward, norms.instancenorm_backward,
                lambda a, g, b: F.instance_norm(a, weight=g, bias=b, eps=1e-5), x, gamma, beta, {})


@pytest.mark.parametrize("G", [1, 2, 6])
def test_groupnorm_matches_torch(G):
    rng = np.random.default_rng(7)
    x = rng.normal(1, 3, size=(3, 6, 4, 3))
    gamma, beta = rng.normal(size=6), rng.normal(size=6)
    _check_norm(norms.groupnorm_forward, norms.groupnorm_backward,
                lambda a, g, b: F.group_norm(a, G, g, b, 1e-5), x, gamma, beta, G, {})


def test_spatial_batchnorm_is_batchnorm_over_n_h_w():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(4, 3, 5, 5))
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    out, cache = norms.spatial_batchnorm_forward(x, gamma, beta, {})
    xt = torch.from_numpy(x)
    ref = F.batch_norm(xt, None, None, torch.from_numpy(gamma), torch.from_numpy(beta), training=True)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-10, atol=1e-12)


# ---- bnkit.torch -------------------------------------------------------------

@pytest.mark.parametrize("shape,axis", [((8, 5), 1), ((4, 3, 6, 6), 1), ((4, 6, 6, 3), -1)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_function_matches_native(shape, axis, dtype):
    from bnkit import torch as bt

    g = torch.Generator().manual_seed(9)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 2).to(dtype)
    C = shape[axis]
    w, b = torch.randn(C, generator=g, dtype=dtype), torch.randn(C, generator=g, dtype=dtype)
    dout = torch.randn(shape, generator=g, dtype=dtype)
    tol = dict(rtol=1e-10, atol=1e-11) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)

    def run(fn):
        """out, the three gradients and the running stats after one training step of fn."""
        xr, wr, br = (t.clone().requires_grad_(True) for t in (x, w, b))
        rm, rv = torch.rand(C, dtype=dtype), torch.rand(C, dtype=dtype) + 0.5
        out = fn(xr, rm, rv, wr, br)
        out.backward(dout)
        return [out.detach(), xr.grad, wr.grad, br.grad, rm, rv]

    def native_nc(xr, rm, rv, wr, br, **kw):
        """F.batch_norm with the channel axis moved to 1 (it knows no other) and back."""
        return F.batch_norm(xr.movedim(axis, 1), rm, rv, wr, br, **kw).movedim(1, axis)

    torch.manual_seed(0)  # the same running stats for both runs
    mine = run(lambda *a: bt.batch_norm(*a, training=True, momentum=0.2, axis=axis))
    torch.manual_seed(0)
    native = run(lambda *a: native_nc(*a, training=True, momentum=0.2))
    for a, b_ in zip(mine, native):
        torch.testing.assert_close(a, b_, **tol)
    torch.manual_seed(0)
    running_mean_before = torch.rand(C, dtype=dtype)
    assert (mine[4] - running_mean_before).abs().max() > 0.01  # the running stats moved
    # eval mode uses the running statistics
    rm, rv = torch.rand(C, dtype=dtype), torch.rand(C, dtype=dtype) + 0.5
    torch.testing.assert_close(bt.batch_norm(x, rm, rv, w, b, training=False, axis=axis),
                               native_nc(x, rm, rv, w, b, training=False), **tol)


def test_torch_function_momentum_none_matches_torch_module():
    """momentum=None with num_batches_tracked: nn.BatchNorm2d's cumulative average."""
    from bnkit import torch as bt

    g = torch.Generator().manual_seed(10)
    module = torch.nn.BatchNorm2d(3, momentum=None).double()
    rm, rv, count = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), torch.tensor(0)
    for _ in range(3):
        x = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64) * 2 + 1
        torch.testing.assert_close(bt.batch_norm(x, rm, rv, training=True, momentum=None, num_batches_tracked=count),
                                   module(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rm, module.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv, module.running_var, rtol=1e-12, atol=1e-12)
    assert int(count) == int(module.num_batches_tracked) == 3


def test_import_bnkit_does_not_import_torch():
    code = "import bnkit, bnkit.fast, bnkit.staged, bnkit.norms, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_caches_are_named_and_read_as_the_book_reads_them():
    """NamedTuples: fields by name, cache["name"] (ch4, ch5, ch6), and iteration
    over the values (ch5 sums the bytes a cache holds)."""
    x = np.random.default_rng(11).normal(size=(6, 3))
    _, cache_s = staged.batchnorm_forward(x, np.ones(3), np.zeros(3), {})
    _, cache_f = fast.batchnorm_forward(x, np.ones(3), np.zeros(3), {})
    assert cache_s["xhat"] is cache_s.xhat and cache_f["core"][0] is cache_f.core.xhat
    assert cache_f.core._fields == ("xhat", "gamma", "inv_std", "axes", "m", "batch")
    assert list(cache_s) == [getattr(cache_s, f) for f in cache_s._fields]
    _, cache_n = norms.layernorm_forward(x, np.ones(3), np.zeros(3))
    assert cache_n.core.xhat.shape == x.shape and cache_n.param_shape == (3,)


@pytest.mark.parametrize("shape, axis", [
    ((64, 24), 1),            # (N, D): rows of 2 samples
    ((9, 24), 1),             # N odd: one sample per row
    ((8, 3, 5, 7), 1),        # NCHW
    ((16, 5, 6, 3), -1),      # channels-last
    ((3, 4, 5, 5), 1),        # under four rows: the plain broadcast
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_row_layout_gives_the_bits_of_the_plain_broadcast(shape, axis, dtype, monkeypatch):
    """bnkit.fast runs batch norm's elementwise passes over rows, with the
    per-channel vectors tiled into a row (`fast._rows_for`): the same
    operations on the same values, so the same bits as broadcasting the
    (1, C, 1, 1) vectors. Its per-channel sums (`fast._channel_sums`) add
    rows first when the channel axis is last: the sums of np.sum, to rounding."""
    from bnkit import fast

    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    gamma, beta = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)

    def both():
        out, cache = fast.batchnorm_forward(x, gamma, beta, {"mode": "train"}, axis=axis)
        return (out, *fast.batchnorm_backward(dout, cache))

    other_axes = tuple(i for i in range(len(shape)) if i != axis % len(shape))
    _, cache = fast.batchnorm_forward(x, gamma, beta, {"mode": "train"}, axis=axis)
    dbeta, dgamma = fast._channel_sums(dout, cache.core.xhat, cache.core.gamma.shape)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dbeta.reshape(-1), dout.sum(axis=other_axes), rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(dgamma.reshape(-1), (dout * cache.core.xhat).sum(axis=other_axes),
                               rtol=tol, atol=tol * 10)

    # the elementwise passes alone: the same sums on both sides
    monkeypatch.setattr(fast, "_channel_sums", lambda d, xh, shp: (fast._sum_to(d, shp), fast._dot_to(d, xh, shp)))
    rows_used = []
    real = fast._rows_for
    monkeypatch.setattr(fast, "_rows_for", lambda *a: rows_used.append(real(*a)) or rows_used[-1])
    with_rows = both()
    monkeypatch.setattr(fast, "_rows_for", lambda *a: None)
    plain = both()
    for a, b in zip(with_rows, plain):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert all(r is not None for r in rows_used) == (shape != (3, 4, 5, 5))
