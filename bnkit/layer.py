"""`BatchNorm`: a numpy layer with the semantics of torch.nn.BatchNorm1d/2d/3d.

Like PyTorch's split between nn.functional and nn.modules, the layer holds
state (parameters, running statistics, train/eval) and delegates the maths
to `bnkit.fast`.
"""
from typing import Optional

import numpy as np

from . import conventions, fast
from ._common import check_float_array


class BatchNorm:
    """Batch normalisation over the channel axis, matching PyTorch.

    BatchNorm(C) accepts (N, C) and (N, C, *) inputs, like BatchNorm1d, 2d
    and 3d together; axis=-1 takes channels-last inputs (N, *, C).

    Attributes (PyTorch's names):
    - weight, bias: (C,) arrays, or None when affine=False.
    - running_mean, running_var: (C,), or None when track_running_stats=False.
    - num_batches_tracked: int, or None when track_running_stats=False.
    - weight_grad, bias_grad: set by `backward`.
    - training: True after construction and `train()`, False after `eval()`.

    Options:
    - momentum: running = (1 - momentum) * running + momentum * batch;
      None means the cumulative average over all batches seen.
    - track_running_stats=False: batch statistics in both modes.
    """

    def __init__(self, num_features: int, eps: float = conventions.EPS,
                 momentum: Optional[float] = conventions.MOMENTUM, affine: bool = True,
                 track_running_stats: bool = True, axis: int = 1, dtype=np.float64):
        # refused here, with the message every backend gives, before any state exists
        self.eps, self.momentum = conventions.check_eps(eps), conventions.check_momentum(momentum)
        self.num_features = num_features
        self.affine, self.track_running_stats, self.axis = affine, track_running_stats, axis
        self.weight = np.ones(num_features, dtype) if affine else None
        self.bias = np.zeros(num_features, dtype) if affine else None
        self.weight_grad = self.bias_grad = None
        if track_running_stats:
            self.running_mean = np.zeros(num_features, dtype)
            self.running_var = np.ones(num_features, dtype)
            self.num_batches_tracked = 0
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self.training = True
        self._cache = None

    def train(self, mode: bool = True) -> "BatchNorm":
        self.training = bool(mode)
        return self

    def eval(self) -> "BatchNorm":
        return self.train(False)

    def forward(self, x) -> np.ndarray:
        """out = BN(x); in training mode also updates the running statistics."""
        x = check_float_array("x", x)
        axis = conventions.channel_axis(x.shape, self.axis)
        if x.shape[axis] != self.num_features:
            raise ValueError(
                f"BatchNorm({self.num_features}) got an input of shape {x.shape} with "
                f"{x.shape[axis]} channels on axis {self.axis}"
            )
        bn_param = dict(
            mode="train" if self.training else "eval", eps=self.eps, momentum=self.momentum,
            track_running_stats=self.track_running_stats, running_mean=self.running_mean,
            running_var=self.running_var, num_batches_tracked=self.num_batches_tracked,
        )
        out, self._cache = fast.batchnorm_forward(x, self.weight, self.bias, bn_param, axis=self.axis)
        if self.track_running_stats:
            self.running_mean = bn_param["running_mean"]
            self.running_var = bn_param["running_var"]
            self.num_batches_tracked = bn_param["num_batches_tracked"]
        return out

    __call__ = forward

    def backward(self, dout) -> np.ndarray:
        """dx for the last forward; sets weight_grad and bias_grad."""
        if self._cache is None:
            raise RuntimeError("BatchNorm.backward called before forward")
        dx, dgamma, dbeta = fast.batchnorm_backward(dout, self._cache)
        if self.affine:
            self.weight_grad, self.bias_grad = dgamma, dbeta
        return dx

    def __repr__(self) -> str:
        return (f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}, axis={self.axis})")
