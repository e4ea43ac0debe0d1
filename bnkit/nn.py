"""`BatchNorm2d`: a drop-in for `torch.nn.BatchNorm2d` on bnkit's Triton kernels.

    from bnkit.nn import BatchNorm2d, convert_batchnorm
    model = convert_batchnorm(model)    # every nn.BatchNorm2d replaced, state kept

It is a subclass of `torch.nn.BatchNorm2d`: the same constructor, parameters,
buffers (running_mean, running_var, num_batches_tracked) and state_dict, and
PyTorch's semantics (train/eval, momentum=None as the cumulative average,
affine=False, track_running_stats=False). Only the forward differs: it calls
`bnkit.triton_fused.batch_norm` (conventions from `bnkit.conventions`), on
NCHW and channels-last inputs alike; the output keeps the input's layout.

Where the kernels can run: CUDA tensors, or CPU tensors under Triton's
interpreter (TRITON_INTERPRET=1 set before triton is imported: exact, slow,
for tests). Elsewhere backend='auto' (the default) falls back to torch's own
batch norm and says so once with a RuntimeWarning; backend='triton' raises
instead; backend='torch' always uses torch's. `last_backend` records which
one ran. Imports torch; triton only at the first Triton forward.
"""
import os
import warnings

import torch
from torch import nn

from . import conventions

BACKENDS = ("auto", "triton", "torch")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def triton_unavailable(x):
    """None if bnkit's Triton kernels can run on x, else why not (a sentence)."""
    if x.dtype not in KERNEL_DTYPES:
        return f"the kernels take float32, float16 or bfloat16, not {x.dtype}"
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return (f"x is on {x.device.type}, not CUDA, and Triton's interpreter is off "
                "(set TRITON_INTERPRET=1 before triton is imported to run the kernels on the CPU)")
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install 'bnkit[gpu]')"
    return None


class BatchNorm2d(nn.BatchNorm2d):
    """torch.nn.BatchNorm2d with bnkit's Triton kernels in the forward and backward.

    Arguments are torch's, plus backend ('auto', 'triton' or 'torch', see the
    module docstring). Input (N, C, H, W), contiguous or channels-last.
    """

    def __init__(self, num_features, eps=conventions.EPS, momentum=conventions.MOMENTUM, affine=True,
                 track_running_stats=True, device=None, dtype=None, backend="auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.last_backend = None
        self._warned = False

    def extra_repr(self):
        return f"{super().extra_repr()}, backend={self.backend!r}"

    def forward(self, x):
        self._check_input_dim(x)
        reason = "backend='torch'" if self.backend == "torch" else triton_unavailable(x)
        if reason is not None:
            if self.backend == "triton":
                raise RuntimeError(f"BatchNorm2d(backend='triton') cannot run its kernels: {reason}")
            if self.backend == "auto" and not self._warned:
                warnings.warn(f"bnkit.nn.BatchNorm2d is running torch's batch norm: {reason}", RuntimeWarning,
                              stacklevel=2)
                self._warned = True
            self.last_backend = "torch"
            return super().forward(x)
        from . import triton_fused

        # torch.nn.modules.batchnorm._BatchNorm.forward's rules, verbatim in meaning
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep_running = not self.training or self.track_running_stats
        count = self.num_batches_tracked if self.training and self.track_running_stats else None
        self.last_backend = "triton"
        return triton_fused.batch_norm(
            x, self.running_mean if keep_running else None, self.running_var if keep_running else None,
            self.weight, self.bias, training=use_batch_stats, momentum=self.momentum, eps=self.eps,
            num_batches_tracked=count)


def convert_batchnorm(module, backend="auto"):
    """`module` with every torch.nn.BatchNorm2d (itself included) replaced by
    bnkit's, parameters and buffers carried over (the same tensors: nothing
    is copied). Returns the module, changed in place where it is not itself
    a BatchNorm2d."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, BatchNorm2d):
        new = BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                          module.track_running_stats, backend=backend)
        new.training = module.training
        for name in ("weight", "bias"):
            setattr(new, name, getattr(module, name))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(new, name, getattr(module, name))
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child, backend))
    return module
