"""bnkit's staged and fast batch norm against torch in float64.

Property-based: random shapes, layouts (channel axis first or last),
momentum values (None included), affine on/off, and train/eval sequences.
Compared: forward outputs, autograd gradients dx, dgamma, dbeta for a random
upstream gradient, and the running statistics after every step.
"""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bnkit import BatchNorm, fast, staged

IMPLS = {"staged": staged, "fast": fast}
TOL = dict(rtol=1e-10, atol=1e-12)


@st.composite
def bn_cases(draw):
    ndim = draw(st.integers(2, 5))
    C = draw(st.integers(1, 6))
    spatial = draw(st.lists(st.integers(1, 4), min_size=ndim - 2, max_size=ndim - 2))
    N = draw(st.integers(1, 6))
    if N * int(np.prod(spatial, dtype=int)) < 2:
        N = 2
    channels_last = draw(st.booleans()) and ndim > 2
    momentum = draw(st.one_of(st.none(), st.floats(0.0, 1.0)))
    affine = draw(st.booleans())
    modes = draw(st.lists(st.sampled_from(["train", "eval"]), min_size=1, max_size=4))
    seed = draw(st.integers(0, 2**32 - 1))
    return dict(N=N, C=C, spatial=tuple(spatial), channels_last=channels_last,
                momentum=momentum, affine=affine, modes=modes, seed=seed)


def _torch_module(case):
    ndim = 2 + len(case["spatial"])
    cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}[ndim]
    return cls(case["C"], momentum=case["momentum"], affine=case["affine"], dtype=torch.float64)


@pytest.mark.parametrize("impl", list(IMPLS))
@given(case=bn_cases())
def test_functions_match_torch_over_a_train_eval_sequence(impl, case):
    rng = np.random.default_rng(case["seed"])
    C, axis = case["C"], (-1 if case["channels_last"] else 1)
    tmod = _torch_module(case)
    if case["affine"]:
        with torch.no_grad():
            tmod.weight.copy_(torch.from_numpy(rng.normal(size=C)))
            tmod.bias.copy_(torch.from_numpy(rng.normal(size=C)))
        gamma, beta = tmod.weight.detach().numpy().copy(), tmod.bias.detach().numpy().copy()
    else:
        gamma = beta = None
    bn_param = {"momentum": case["momentum"]}
    shape_ncx = (case["N"], C) + case["spatial"]
    for mode in case["modes"]:
        # features with different means and spreads, so each channel matters
        x_ncx = rng.normal(size=shape_ncx) * rng.uniform(0.1, 10, size=(1, C) + (1,) * len(case["spatial"])) \
            + rng.normal(scale=5, size=(1, C) + (1,) * len(case["spatial"]))
        dout_ncx = rng.normal(size=shape_ncx)
        tmod.train(mode == "train")
        bn_param["mode"] = mode
        xt = torch.from_numpy(x_ncx).requires_grad_(True)
        yt = tmod(xt)
        yt.backward(torch.from_numpy(dout_ncx))

        x = np.moveaxis(x_ncx, 1, -1) if axis == -1 else x_ncx
        dout = np.moveaxis(dout_ncx, 1, -1) if axis == -1 else dout_ncx
        out, cache = IMPLS[impl].batchnorm_forward(x, gamma, beta, bn_param, axis=axis)
        dx, dgamma, dbeta = IMPLS[impl].batchnorm_backward(dout, cache)
        if axis == -1:
            out, dx = np.moveaxis(out, -1, 1), np.moveaxis(dx, -1, 1)

        np.testing.assert_allclose(out, yt.detach().numpy(), **TOL)
        np.testing.assert_allclose(dx, xt.grad.numpy(), **TOL)
        if case["affine"]:
            np.testing.assert_allclose(dgamma, tmod.weight.grad.numpy(), **TOL)
            np.testing.assert_allclose(dbeta, tmod.bias.grad.numpy(), **TOL)
            tmod.weight.grad = tmod.bias.grad = None
        np.testing.assert_allclose(bn_param["running_mean"], tmod.running_mean.numpy(), **TOL)
        np.testing.assert_allclose(bn_param["running_var"], tmod.running_var.numpy(), **TOL)
        assert bn_param.get("num_batches_tracked", 0) == int(tmod.num_batches_tracked)


@given(case=bn_cases(), track=st.booleans())
def test_layer_matches_torch_module(case, track):
    rng = np.random.default_rng(case["seed"])
    C = case["C"]
    axis = -1 if case["channels_last"] else 1
    tmod = _torch_module(case)
    if not track:
        tmod = type(tmod)(C, momentum=case["momentum"], affine=case["affine"],
                          track_running_stats=False, dtype=torch.float64)
    layer = BatchNorm(C, momentum=case["momentum"], affine=case["affine"], track_running_stats=track, axis=axis)
    if case["affine"]:
        layer.weight, layer.bias = rng.normal(size=C), rng.normal(size=C)
        with torch.no_grad():
            tmod.weight.copy_(torch.from_numpy(layer.weight))
            tmod.bias.copy_(torch.from_numpy(layer.bias))
    for mode in case["modes"]:
        x_ncx = rng.normal(loc=3.0, scale=2.0, size=(case["N"], C) + case["spatial"])
        dout_ncx = rng.normal(size=x_ncx.shape)
        layer.train(mode == "train")
        tmod.train(mode == "train")
        xt = torch.from_numpy(x_ncx).requires_grad_(True)
        yt = tmod(xt)
        yt.backward(torch.from_numpy(dout_ncx))
        to_layout = (lambda a: np.moveaxis(a, 1, -1)) if axis == -1 else (lambda a: a)
        from_layout = (lambda a: np.moveaxis(a, -1, 1)) if axis == -1 else (lambda a: a)
        out = layer.forward(to_layout(x_ncx))
        dx = layer.backward(to_layout(dout_ncx))
        np.testing.assert_allclose(from_layout(out), yt.detach().numpy(), **TOL)
        np.testing.assert_allclose(from_layout(dx), xt.grad.numpy(), **TOL)
        if case["affine"]:
            np.testing.assert_allclose(layer.weight_grad, tmod.weight.grad.numpy(), **TOL)
            np.testing.assert_allclose(layer.bias_grad, tmod.bias.grad.numpy(), **TOL)
            tmod.weight.grad = tmod.bias.grad = None
        if track:
            np.testing.assert_allclose(layer.running_mean, tmod.running_mean.numpy(), **TOL)
            np.testing.assert_allclose(layer.running_var, tmod.running_var.numpy(), **TOL)
            assert layer.num_batches_tracked == int(tmod.num_batches_tracked)
        else:
            assert layer.running_mean is None and tmod.running_mean is None


def test_pytorch_docs_example_running_stats_to_the_digit():
    """nn.BatchNorm1d(10) on 1000 * randn(3, 10): the running stats agree exactly
    (up to float32 rounding, the dtype torch uses there)."""
    torch.manual_seed(0)
    x = 1000 * torch.randn(3, 10)
    m = torch.nn.BatchNorm1d(10)
    m(x)
    layer = BatchNorm(10, dtype=np.float32)
    layer.forward(x.numpy())
    np.testing.assert_allclose(layer.running_mean, m.running_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(layer.running_var, m.running_var.numpy(), rtol=1e-6)
    assert layer.running_var.max() > 1e4  # the unbiased variance of 1000*randn, not a placeholder
