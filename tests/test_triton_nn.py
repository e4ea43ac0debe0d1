"""bnkit.nn.BatchNorm2d against torch.nn.BatchNorm2d: the same sequence of
train and eval steps gives the same outputs, gradients, running statistics
and counts. Without a GPU the kernels run in Triton's interpreter."""
import warnings

import pytest

from _triton import DEVICE, torch  # first: skips the module without Triton

from torch import nn

from bnkit.nn import BatchNorm2d, convert_batchnorm, triton_unavailable


def batches(n, shape, channels_last, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = (torch.randn(shape, generator=g) * 2 + 3).to(dtype)
        dy = torch.randn(shape, generator=g).to(dtype)
        if channels_last:
            x, dy = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy))
        out.append((x.to(DEVICE), dy.to(DEVICE)))
    return out


def rel(a, ref):
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def step(module, x, dy):
    xg = x.clone().requires_grad_()
    out = module(xg)
    out.backward(dy)
    return out, xg.grad


# train, train, eval, train, eval: the running statistics are used and updated in turn
SEQUENCE = ["train", "train", "eval", "train", "eval"]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("kwargs", [dict(), dict(momentum=0.3), dict(momentum=None), dict(affine=False),
                                    dict(track_running_stats=False)],
                         ids=["default", "momentum0.3", "momentumNone", "affineFalse", "noRunningStats"])
def test_same_as_torch_through_a_train_eval_sequence(kwargs, channels_last):
    C = 5
    ref = nn.BatchNorm2d(C, **kwargs).to(DEVICE).double()
    ours = BatchNorm2d(C, backend="triton", **kwargs).to(DEVICE)
    if ours.affine:  # parameters that are not ones and zeros
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            ours.weight.copy_(torch.randn(C, generator=g))
            ours.bias.copy_(torch.randn(C, generator=g))
            ref.weight.copy_(ours.weight)
            ref.bias.copy_(ours.bias)
    for mode, (x, dy) in zip(SEQUENCE, batches(len(SEQUENCE), (6, C, 4, 3), channels_last)):
        ours.train(mode == "train")
        ref.train(mode == "train")
        out, dx = step(ours, x, dy)
        r_out, r_dx = step(ref, x.double(), dy.double())
        assert ours.last_backend == "triton"
        assert out.dtype == x.dtype and out.stride() == x.stride()
        assert rel(out, r_out) < 2e-5 and rel(dx, r_dx) < 2e-5, mode
        if ours.affine:
            assert rel(ours.weight.grad, ref.weight.grad) < 2e-5 and rel(ours.bias.grad, ref.bias.grad) < 2e-5
            ours.zero_grad()
            ref.zero_grad()
        if ours.track_running_stats:
            assert rel(ours.running_mean, ref.running_mean) < 1e-6, mode
            assert rel(ours.running_var, ref.running_var) < 1e-6, mode
            assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item()
        else:
            assert ours.running_mean is None and ours.running_var is None


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)])
def test_half_inputs_with_float32_parameters(dtype, tol):
    """Mixed precision's convention: half activations, float32 parameters and
    running statistics (what autocast hands a BatchNorm2d after a conv)."""
    ours = BatchNorm2d(4, backend="triton").to(DEVICE)
    ref = nn.BatchNorm2d(4).to(DEVICE).double()
    for x, dy in batches(2, (8, 4, 5, 5), True, dtype=dtype):
        out, dx = step(ours, x, dy)
        r_out, r_dx = step(ref, x.double(), dy.double())
        assert out.dtype == dtype and ours.running_mean.dtype == torch.float32
        assert rel(out, r_out) < tol and rel(dx, r_dx) < tol
    assert rel(ours.running_var, ref.running_var) < 1e-5


def test_convert_keeps_state_and_outputs():
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=0.2), nn.ReLU(),
                          nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, affine=False))).to(DEVICE)
    x = torch.randn(4, 3, 6, 6, generator=g).to(DEVICE)
    model.train()
    model(x)  # running statistics that are not the initial ones
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        expected = model(x)
    converted = convert_batchnorm(model, backend="triton")
    assert isinstance(converted[1], BatchNorm2d) and isinstance(converted[3][1], BatchNorm2d)
    assert converted[1].momentum == 0.2 and converted[3][1].affine is False
    assert converted.state_dict().keys() == state.keys()
    for k, v in converted.state_dict().items():
        assert torch.equal(v, state[k]), k
    with torch.no_grad():
        assert rel(converted(x), expected) < 1e-5
    assert converted[1].last_backend == "triton"


def test_fallback_is_said_once_and_forced_backends(monkeypatch):
    x = torch.randn(4, 3, 2, 2)  # a CPU tensor
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "interpreter is off" in triton_unavailable(x)
    assert "float32, float16 or bfloat16" in triton_unavailable(x.double())
    auto = BatchNorm2d(3)
    with pytest.warns(RuntimeWarning, match="running torch's batch norm: x is on cpu"):
        auto(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto(x)  # said once, not on every call
    assert auto.last_backend == "torch"
    with pytest.raises(RuntimeError, match="cannot run its kernels"):
        BatchNorm2d(3, backend="triton")(x)
    forced = BatchNorm2d(3, backend="torch")
    forced(x)
    assert forced.last_backend == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        BatchNorm2d(3, backend="cudnn")


def test_bad_input_is_refused_like_torch():
    bn = BatchNorm2d(3, backend="triton").to(DEVICE)
    with pytest.raises(ValueError, match="expected 4D input"):
        bn(torch.randn(4, 3, device=DEVICE))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(torch.randn(1, 3, 1, 1, device=DEVICE))
    with pytest.raises(ValueError, match="weight must have shape"):
        bn(torch.randn(4, 5, 2, 2, device=DEVICE))
    assert bn.num_batches_tracked.item() == 0  # nothing counted by the refused calls
