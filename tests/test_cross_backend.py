"""Every backend follows `bnkit.conventions`: the same train/eval sequence
gives the same outputs, gradients and running statistics, and the same bad
input gives the same error type and message, leaving the state untouched.

Backends: numpy staged, numpy fast, the numpy BatchNorm layer, the torch
Function (`bnkit.torch.batch_norm`) and the Triton wrappers
(`bnkit.triton_kernels.batch_norm`, and `bnkit.triton_fused.batch_norm` on
each of its paths; without a GPU in Triton's interpreter, TRITON_INTERPRET=1
set by conftest.py before triton is imported, on CPU tensors).
Triton runs in float32, the others in float64; the reference is staged.
"""
import functools
import os

import numpy as np
import pytest
import torch

from bnkit import BatchNorm, conventions, fast, staged
from bnkit import torch as bt

CUDA = torch.cuda.is_available()
try:  # conftest.py set TRITON_INTERPRET=1 before this import where there is no GPU
    import triton  # noqa: F401
    TRITON = CUDA or os.environ.get("TRITON_INTERPRET") == "1"
except ImportError:
    TRITON = False
if TRITON:
    from bnkit import triton_fused as tf
    from bnkit import triton_kernels as tk
DEVICE = "cuda" if CUDA else "cpu"

C = 3
SHAPE = (6, C, 2, 2)  # NCHW: 24 values per channel; the bad inputs use this one
LAYOUTS = {  # name: (shape, channel axis)
    "nchw": (SHAPE, 1),
    "nd": ((10, C), 1),
    "channels-last": ((4, 2, 2, C), -1),
}


class State:
    """The parameters and running statistics a backend carries between steps (float64 numpy)."""

    def __init__(self):
        rng = np.random.default_rng(7)
        self.gamma, self.beta = rng.normal(1.0, 0.5, C), rng.normal(0.0, 0.5, C)
        self.running_mean, self.running_var = rng.normal(0.0, 1.0, C), rng.uniform(0.5, 2.0, C)
        self.num_batches_tracked = 2

    def snapshot(self):
        return (self.running_mean.copy(), self.running_var.copy(), self.num_batches_tracked)


def call_numpy(impl):
    def call(state, inp, train):
        bn_param = dict(mode="train" if train else "eval", eps=inp["eps"], momentum=inp["momentum"],
                        running_mean=inp["running_mean"].copy(), running_var=state.running_var.copy(),
                        num_batches_tracked=state.num_batches_tracked)
        out, cache = impl.batchnorm_forward(inp["x"], inp["gamma"], state.beta, bn_param, axis=inp["axis"])
        dx, dgamma, dbeta = impl.batchnorm_backward(inp["dout"], cache)
        state.running_mean, state.running_var = bn_param["running_mean"], bn_param["running_var"]
        state.num_batches_tracked = bn_param["num_batches_tracked"]
        return out, dx, dgamma, dbeta
    return call


def call_layer(state, inp, train):
    layer = BatchNorm(C, eps=inp["eps"], momentum=inp["momentum"], axis=inp["axis"])
    layer.weight, layer.bias = np.array(inp["gamma"], copy=True), state.beta.copy()
    layer.running_mean, layer.running_var = inp["running_mean"].copy(), state.running_var.copy()
    layer.num_batches_tracked = state.num_batches_tracked
    layer.train(train)
    out = layer.forward(inp["x"])
    dx = layer.backward(inp["dout"])
    state.running_mean, state.running_var = layer.running_mean, layer.running_var
    state.num_batches_tracked = layer.num_batches_tracked
    return out, dx, layer.weight_grad, layer.bias_grad


def call_torch_like(batch_norm, dtype):
    def tensor(a, grad=False):
        return torch.tensor(np.asarray(a), device=DEVICE).to(dtype).requires_grad_(grad)

    def call(state, inp, train):
        x = inp["x"]
        x = torch.tensor(x, device=DEVICE) if not np.issubdtype(x.dtype, np.floating) else tensor(x, True)
        w, b = tensor(inp["gamma"], True), tensor(state.beta, True)
        rm, rv = tensor(inp["running_mean"]), tensor(state.running_var)
        count = torch.tensor(state.num_batches_tracked, device=DEVICE)
        out = batch_norm(x, rm, rv, w, b, training=train, momentum=inp["momentum"], eps=inp["eps"],
                         axis=inp["axis"], num_batches_tracked=count)
        out.backward(tensor(inp["dout"]))
        state.running_mean, state.running_var = rm.double().cpu().numpy(), rv.double().cpu().numpy()
        state.num_batches_tracked = int(count)
        return tuple(t.detach().double().cpu().numpy() for t in (out, x.grad, w.grad, b.grad))
    return call


BACKENDS = {
    "staged": (call_numpy(staged), 1e-12),
    "fast": (call_numpy(fast), 1e-10),
    "layer": (call_layer, 1e-10),
    "torch": (call_torch_like(bt.batch_norm, torch.float64), 1e-10),
}
TRITON_BACKENDS = {  # the split kernels, and bnkit.triton_fused's two paths
    "triton": lambda: tk.batch_norm,
    "triton-fused": lambda: functools.partial(tf.batch_norm, path="fused"),
    "triton-fused-split": lambda: functools.partial(tf.batch_norm, path="split"),
}
for _name, _fn in TRITON_BACKENDS.items():  # without triton: skipped with the reason, not silently left out
    BACKENDS[_name] = (call_torch_like(_fn(), torch.float32), 2e-5) if TRITON else (None, None)

# train, train, eval, train, eval: the evals read what the trains left behind
MODES = (True, True, False, True, False)


def inputs(step, momentum=conventions.MOMENTUM, layout="nchw", **bad):
    shape, axis = LAYOUTS[layout]
    rng = np.random.default_rng(100 + step)
    inp = dict(x=rng.normal(2.0, 3.0, shape), dout=rng.normal(size=shape), gamma=State().gamma,
               momentum=momentum, eps=conventions.EPS, axis=axis)
    inp.update(bad)
    return inp


def with_running(inp, state):
    return {"running_mean": state.running_mean, **inp}


def run_sequence(call, momentum, layout="nchw"):
    state, results = State(), []
    for step, train in enumerate(MODES):
        results.append(call(state, with_running(inputs(step, momentum, layout), state), train))
        results.append(state.snapshot())
    return results


def backend(name):
    call, tol = BACKENDS[name]
    if call is None:
        pytest.skip("triton is not installed, or was imported before interpreter mode could be set")
    return call, tol


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("momentum", [conventions.MOMENTUM, 0.3, None])
@pytest.mark.parametrize("name", [n for n in BACKENDS if n != "staged"])
def test_same_results_as_staged(name, momentum, layout):
    call, tol = backend(name)
    got, ref = run_sequence(call, momentum, layout), run_sequence(BACKENDS["staged"][0], momentum, layout)
    for i, (g, r) in enumerate(zip(got, ref)):
        step, what = divmod(i, 2)
        labels = ("running_mean", "running_var", "num_batches_tracked") if what else ("out", "dx", "dgamma", "dbeta")
        for label, a, b in zip(labels, g, r):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"step {step} ({label})")


def test_the_reference_sequence_is_not_trivial():
    """The sequence really moves the running statistics, and momentum matters."""
    seqs = {m: run_sequence(BACKENDS["staged"][0], m) for m in (0.1, 0.3, None)}
    final = {m: s[-1] for m, s in seqs.items()}
    assert final[0.1][2] == State().num_batches_tracked + MODES.count(True)
    for a, b in ((0.1, 0.3), (0.3, None), (0.1, None)):
        assert np.max(np.abs(final[a][1] - final[b][1])) > 1e-2
    assert np.max(np.abs(final[0.1][1] - State().running_var)) > 1e-2


BAD = {  # name: (train, changes to a good call)
    "momentum above 1": (True, dict(momentum=1.5)),
    "momentum below 0": (True, dict(momentum=-0.1)),
    "momentum not a number": (True, dict(momentum="0.1")),
    "eps zero": (True, dict(eps=0.0)),
    "eps nan": (False, dict(eps=float("nan"))),
    "integer x": (True, dict(x=np.ones(SHAPE, np.int64))),
    "1-D x": (True, dict(x=np.ones(5), dout=np.ones(5))),
    "axis 0": (True, dict(axis=0)),
    "axis out of range": (True, dict(axis=4)),
    "one value per channel": (True, dict(x=np.ones((1, C)), dout=np.ones((1, C)))),
    "gamma of the wrong shape": (True, dict(gamma=np.ones(C + 1))),
    "running_mean of the wrong shape": (False, dict(running_mean=np.zeros(C + 1))),
}


def error_of(name, train, bad):
    call, _ = backend(name)
    state = State()
    before = state.snapshot()
    with pytest.raises((TypeError, ValueError)) as err:
        call(state, with_running(inputs(0, **bad), state), train)
    after = state.snapshot()  # a refused call loses nothing
    assert all(np.array_equal(a, b) for a, b in zip(before, after)), name
    # the torch-like API calls gamma `weight`: the one difference in wording
    return err.type, str(err.value).replace("weight", "gamma")


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("name", [n for n in BACKENDS if n != "staged"])
def test_same_errors_as_staged(name, case):
    train, bad = BAD[case]
    assert error_of(name, train, bad) == error_of("staged", train, bad)


def test_errors_are_the_conventions_messages():
    """Spot checks that the shared message is the clear one."""
    assert error_of("staged", True, dict(momentum=1.5)) == (
        ValueError, "momentum must lie in [0, 1] or be None, got momentum=1.5")
    assert error_of("staged", True, dict(gamma=np.ones(C + 1))) == (
        ValueError, f"gamma must have shape ({C},) for an input of shape {SHAPE}, got shape ({C + 1},)")


@pytest.mark.parametrize("name", ["torch", *TRITON_BACKENDS])
def test_functional_momentum_none_needs_the_count(name):
    backend(name)
    fn = bt.batch_norm if name == "torch" else TRITON_BACKENDS[name]()
    x = torch.randn(SHAPE, device=DEVICE)
    rm, rv = torch.zeros(C, device=DEVICE), torch.ones(C, device=DEVICE)
    with pytest.raises(ValueError, match=r"momentum=None \(the cumulative average\) needs num_batches_tracked"):
        fn(x, rm, rv, training=True, momentum=None)
    assert torch.equal(rm, torch.zeros(C, device=DEVICE)) and torch.equal(rv, torch.ones(C, device=DEVICE))
