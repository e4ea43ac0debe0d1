"""bnkit's closed form on torch tensors, as a `torch.autograd.Function`.

The only module of bnkit's core that imports torch. It runs on whatever device the
tensors are on, so it compares bnkit's maths with PyTorch's kernels on CPU
and GPU alike. The conventions (defaults, momentum=None, the running-stats
recurrence, validation) are `bnkit.conventions`'; `check_batch_norm_args`
and `update_running_` apply them to tensors, for this module and for the
Triton wrappers (`bnkit.triton_kernels`) alike.
"""
from typing import Optional, Tuple

import torch

from . import conventions


def _dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32: the name numpy would print, so that the
    messages match the numpy backends'."""
    return str(dtype).replace("torch.", "")


def _check_tensor(name: str, t, expected: Tuple[int, ...], x_shape: Tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    conventions.check_floating(name, t.is_floating_point(), _dtype_name(t.dtype), tuple(t.shape))
    conventions.check_shape(name, tuple(t.shape), expected, x_shape)


def check_batch_norm_args(x, running_mean, running_var, weight, bias, training: bool, momentum, eps, axis: int,
                          num_batches_tracked=None) -> Tuple[int, float, Optional[float]]:
    """Validate a functional batch-norm call on tensors; return (axis, eps, momentum).

    The checks and their order are those of the numpy backends
    (`bnkit._common.prepare`): x, the channel axis, weight, bias, eps,
    momentum, enough values per channel in training, the running statistics;
    then what only the functional form needs (running statistics in eval;
    num_batches_tracked for momentum=None). Nothing is modified.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    x_shape = tuple(x.shape)
    conventions.check_floating("x", x.is_floating_point(), _dtype_name(x.dtype), x_shape)
    axis = conventions.channel_axis(x_shape, axis)
    C = x_shape[axis]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            _check_tensor(name, p, (C,), x_shape)
    eps = conventions.check_eps(eps)
    momentum = conventions.check_momentum(momentum)
    if training:
        conventions.check_enough_values(x.numel() // C if C else 0, x_shape)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both be None)")
    has_running = running_mean is not None
    for name, r in (("running_mean", running_mean), ("running_var", running_var)):
        if r is not None:
            _check_tensor(name, r, (C,), x_shape)
    if not training:
        conventions.check_eval_stats(has_running)
    else:
        conventions.check_cumulative(momentum, has_running, num_batches_tracked)
    return axis, eps, momentum


def momentum_factor_(num_batches_tracked, momentum: Optional[float]) -> float:
    """Count this training step in num_batches_tracked (in place, if given)
    and return the running-average factor of `conventions.momentum_factor`.
    Only momentum=None reads the count back (a device sync on CUDA, as in
    torch.nn.BatchNorm)."""
    if num_batches_tracked is not None:
        with torch.no_grad():
            num_batches_tracked.add_(1)
    if momentum is None:
        return conventions.momentum_factor(None, int(num_batches_tracked))
    return conventions.momentum_factor(momentum, 1)


def update_running_(running_mean, running_var, mean, var, n: int, factor: float) -> None:
    """`conventions.update_running` applied in place to running_mean/var.

    mean, var: (C,) batch mean and biased variance; n values per channel.
    """
    with torch.no_grad():
        new_mean, new_var = conventions.update_running(running_mean, running_var, mean.to(running_mean.dtype),
                                                       var.to(running_var.dtype), n, factor)
        running_mean.copy_(new_mean)
        running_var.copy_(new_var)


def _stats(x, dims):
    """(mean, biased var) with keepdim, accumulated in at least float32.

    A shifted mean (minus one sample per channel) and then the mean of
    squared deviations, so a large mean does not cancel the variance.
    """
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    shift = xf
    for d in dims:
        shift = shift.narrow(d, 0, 1)
    mu = shift + (xf - shift).mean(dim=dims, keepdim=True)
    xc = xf - mu
    return mu, (xc * xc).mean(dim=dims, keepdim=True)


class BatchNormFunction(torch.autograd.Function):
    """out = gamma * (x - mean) / sqrt(var + eps) + beta, batch statistics.

    apply(x, weight, bias, axis, eps) with weight, bias (C,) tensors returns
    (out, mean, var); mean and var are the (C,) batch statistics (biased
    variance), not differentiable. The backward is bnkit's closed form:
        dx = gamma * inv_std * (dout - (dbeta + xhat * dgamma) / m)
    """

    @staticmethod
    def forward(ctx, x, weight, bias, axis: int, eps: float):
        dims = tuple(d for d in range(x.dim()) if d != axis)
        bshape = [1] * x.dim()
        bshape[axis] = x.shape[axis]
        mu, var = _stats(x, dims)
        inv_std = torch.rsqrt(var + eps)
        xhat = (x - mu) * inv_std
        g = weight.reshape(bshape).to(xhat.dtype)
        out = (xhat * g + bias.reshape(bshape)).to(x.dtype)
        ctx.save_for_backward(xhat, g, inv_std)
        ctx.dims, ctx.param_dtype = dims, weight.dtype
        mu, var = mu.reshape(-1), var.reshape(-1)
        ctx.mark_non_differentiable(mu, var)
        return out, mu, var

    @staticmethod
    def backward(ctx, dout, _dmean, _dvar):
        xhat, g, inv_std = ctx.saved_tensors
        d = dout.to(xhat.dtype)
        m = xhat.numel() // g.numel()
        dbeta = d.sum(dim=ctx.dims, keepdim=True)
        dgamma = (d * xhat).sum(dim=ctx.dims, keepdim=True)
        dx = (g * inv_std) * (d - (dbeta + xhat * dgamma) / m)
        pdt = ctx.param_dtype
        return dx.to(dout.dtype), dgamma.reshape(-1).to(pdt), dbeta.reshape(-1).to(pdt), None, None


def batch_norm(x: torch.Tensor, running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
               weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None, training: bool = False,
               momentum: Optional[float] = conventions.MOMENTUM, eps: float = conventions.EPS, axis: int = 1,
               num_batches_tracked: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Drop-in for torch.nn.functional.batch_norm, backed by bnkit's closed form.

    In training the batch statistics are used and running_mean/running_var
    (if given) are updated in place with `bnkit.conventions`' recurrence
    (unbiased variance); num_batches_tracked (a 0-d integer tensor, if given)
    is incremented in place, and momentum=None uses the cumulative average
    over it. In eval the running statistics are used. axis=-1 takes
    channels-last tensors laid out (N, *, C). Bad input raises before
    anything is modified, with the numpy backends' messages.
    """
    axis, eps, momentum = check_batch_norm_args(x, running_mean, running_var, weight, bias, training, momentum, eps,
                                                axis, num_batches_tracked)
    C = x.shape[axis]
    weight = torch.ones(C, dtype=x.dtype, device=x.device) if weight is None else weight
    bias = torch.zeros(C, dtype=x.dtype, device=x.device) if bias is None else bias
    bshape = [1] * x.dim()
    bshape[axis] = C
    if not training:
        scale = weight * torch.rsqrt(running_var + eps)
        shift = bias - running_mean * scale
        return (x * scale.reshape(bshape) + shift.reshape(bshape)).to(x.dtype)
    out, mu, var = BatchNormFunction.apply(x, weight, bias, axis, eps)
    if running_mean is not None:
        factor = momentum_factor_(num_batches_tracked, momentum)
        update_running_(running_mean, running_var, mu, var, x.numel() // C, factor)
    return out
