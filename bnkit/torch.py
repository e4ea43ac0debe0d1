"""bnkit's closed form on torch tensors, as a `torch.autograd.Function`.

The only bnkit module that imports torch. It runs on whatever device the
tensors are on, so it compares bnkit's maths with PyTorch's kernels on CPU
and GPU alike. Same conventions as `bnkit.fast`.
"""
import torch


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
    def forward(ctx, x, weight, bias, axis, eps):
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


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, axis=1):
    """Drop-in for torch.nn.functional.batch_norm, backed by bnkit's closed form.

    In training the batch statistics are used and running_mean/running_var
    (if given) are updated in place with PyTorch's recurrence (unbiased
    variance). In eval the running statistics are used. axis=-1 takes
    channels-last tensors laid out (N, *, C).
    """
    axis %= x.dim()
    C = x.shape[axis]
    weight = torch.ones(C, dtype=x.dtype, device=x.device) if weight is None else weight
    bias = torch.zeros(C, dtype=x.dtype, device=x.device) if bias is None else bias
    bshape = [1] * x.dim()
    bshape[axis] = C
    if not training:
        scale = weight * torch.rsqrt(running_var + eps)
        shift = bias - running_mean * scale
        return (x * scale.reshape(bshape) + shift.reshape(bshape)).to(x.dtype)
    n = x.numel() // C
    if n < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {tuple(x.shape)}")
    out, mu, var = BatchNormFunction.apply(x, weight, bias, axis, eps)
    if running_mean is not None:
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mu.to(running_mean.dtype))
            running_var.mul_(1 - momentum).add_(momentum * (var * n / (n - 1)).to(running_var.dtype))
    return out
