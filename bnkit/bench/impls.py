"""What the benchmark times: the inputs (`numpy_case`, `torch_case`) and the
implementations, as a table `IMPLS` from name to an `Impl` (where it runs,
what it needs, and a factory that returns its (forward, backward) closures).

Adding an implementation is one entry in `IMPLS`. Every factory has the
signature make(case, stream, **options) -> (forward, backward): `case` from
`numpy_case` or `torch_case`, `stream` the CUDA side stream (None on the
CPU), options the implementation's own (the Triton kernels take `tuning`).
backward replays autograd's backward of one recorded forward
(retain_graph), so it times the backward alone.
"""
import contextlib
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from .. import conventions, fast, staged


class Impl(NamedTuple):
    devices: Tuple[str, ...]  # where it runs: 'cpu', 'cuda'
    needs: Tuple[str, ...]  # modules it imports: 'torch', 'triton'
    make: Callable  # make(case, stream, **options) -> (forward, backward)


# ------------------------------------------------------------------ inputs

def numpy_case(layout: str, shape: Tuple[int, ...], seed: int = 0, dtype: str = "float32"):
    """(x, gamma, beta, dout, axis) as numpy arrays of `dtype`; 'nhwc' is the
    logical NCHW `shape` stored (N, H, W, C), channel axis -1. The numbers are
    drawn in float32 whatever the dtype, so every dtype holds the same values."""
    rng = np.random.default_rng(seed)
    if layout == "nhwc":
        n, c, h, w = shape
        shape, axis = (n, h, w, c), -1
    else:
        axis = 1
    x = rng.standard_normal(shape, dtype=np.float32) * 2 + 3
    C = shape[axis]
    gamma = rng.standard_normal(C, dtype=np.float32)
    beta = rng.standard_normal(C, dtype=np.float32)
    dout = rng.standard_normal(shape, dtype=np.float32)
    if dtype != "float32":
        x, gamma, beta, dout = (a.astype(dtype) for a in (x, gamma, beta, dout))
    return x, gamma, beta, dout, axis


def torch_case(layout: str, shape: Tuple[int, ...], dtype, device: str, seed: int = 0):
    """(x, weight, bias, running_mean, running_var, dout) torch tensors holding
    the same numbers as `numpy_case` (so every implementation can be checked
    against torch-native); 'nhwc' tensors are channels-last."""
    import torch

    x, gamma, beta, dout, axis = numpy_case(layout, shape, seed)

    def tensor(a):
        t = torch.from_numpy(a)
        if layout == "nhwc":  # (N, H, W, C) memory seen as NCHW: channels-last
            t = t.permute(0, 3, 1, 2)
        return t.to(device=device, dtype=dtype)

    x, dout = tensor(x), tensor(dout)
    # parameters and running statistics stay float32 under float16/bfloat16
    # (mixed precision's convention); float64 runs keep them in float64
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32
    w, b = (torch.from_numpy(a).to(device=device, dtype=pdtype) for a in (gamma, beta))
    C = w.numel()
    rm, rv = torch.zeros(C, device=device, dtype=pdtype), torch.ones(C, device=device, dtype=pdtype)
    return x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), rm, rv, dout


# --------------------------------------------------------- implementations

def numpy_impl(module, case):
    """(forward, backward) closures for bnkit.staged or bnkit.fast."""
    x, gamma, beta, dout, axis = case
    bn_param = {"mode": "train"}
    _, cache = module.batchnorm_forward(x, gamma, beta, bn_param, axis=axis)

    def forward():
        return module.batchnorm_forward(x, gamma, beta, bn_param, axis=axis)[0]

    def backward():
        return module.batchnorm_backward(dout, cache)[0]

    return forward, backward


def _numpy_factory(module):
    def make(case, stream=None):
        return numpy_impl(module, case)
    return make


def _autograd_pair(f, case, stream, ctx=contextlib.nullcontext):
    """(forward, backward) of a torch callable f() -> out: the forward is f;
    the backward replays autograd's backward of one recorded forward."""
    import torch

    x, w, b, _, _, dout = case

    def forward():
        with ctx():
            return f()

    with ctx(), (torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()):
        out = f()
    if stream is not None:
        torch.cuda.current_stream().wait_stream(stream)

    def backward():
        with ctx():
            return torch.autograd.grad(out, (x, w, b), dout, retain_graph=True)[0]

    return forward, backward


def _functional(case, batch_norm):
    """f() calling batch_norm(x, rm, rv, w, b) in training mode, the conventions' defaults."""
    x, w, b, rm, rv, _ = case

    def f():
        return batch_norm(x, rm, rv, w, b, training=True, momentum=conventions.MOMENTUM, eps=conventions.EPS)
    return f


def _torch_native(case, stream=None):
    import torch
    import torch.nn.functional as F

    ctx = contextlib.nullcontext
    if case[0].is_cuda:  # ATen's own kernels, not cuDNN's
        def ctx():
            return torch.backends.cudnn.flags(enabled=False)
    return _autograd_pair(_functional(case, F.batch_norm), case, stream, ctx)


def _torch_cudnn(case, stream=None):
    import torch.nn.functional as F

    return _autograd_pair(_functional(case, F.batch_norm), case, stream)


def _torch_compile(case, stream=None):
    import torch
    import torch._functorch.config as functorch_config
    import torch.nn.functional as F

    functorch_config.donated_buffer = False  # the timed backward replays with retain_graph
    compiled = torch.compile(lambda x, rm, rv, w, b: F.batch_norm(
        x, rm, rv, w, b, training=True, momentum=conventions.MOMENTUM, eps=conventions.EPS))
    x, w, b, rm, rv, _ = case
    return _autograd_pair(lambda: compiled(x, rm, rv, w, b), case, stream)


def _bnkit_torch(case, stream=None):
    from .. import torch as bt

    return _autograd_pair(_functional(case, bt.batch_norm), case, stream)


def _bnkit_triton(case, stream=None, tuning=None):
    from .. import triton_kernels as tk

    x, w, b, rm, rv, _ = case

    def f():
        return tk.batch_norm(x, rm, rv, w, b, training=True, momentum=conventions.MOMENTUM, eps=conventions.EPS,
                             tuning=tuning)
    return _autograd_pair(f, case, stream)


def _bnkit_triton_fused(case, stream=None, path=None, configs=None):
    from .. import triton_fused as tf  # the fewer-launch paths; path None: its plan chooses; configs: the tuner's

    x, w, b, rm, rv, _ = case

    def f():
        return tf.batch_norm(x, rm, rv, w, b, training=True, momentum=conventions.MOMENTUM, eps=conventions.EPS,
                             path=path, configs=configs)
    return _autograd_pair(f, case, stream)


IMPLS: Dict[str, Impl] = {  # in the order the tables list them
    "staged-numpy": Impl(("cpu",), (), _numpy_factory(staged)),
    "fast-numpy": Impl(("cpu",), (), _numpy_factory(fast)),
    "torch-cudnn": Impl(("cuda",), ("torch",), _torch_cudnn),
    "torch-native": Impl(("cpu", "cuda"), ("torch",), _torch_native),
    "torch-compile": Impl(("cuda",), ("torch",), _torch_compile),
    "bnkit-torch": Impl(("cpu", "cuda"), ("torch",), _bnkit_torch),
    "bnkit-triton": Impl(("cuda",), ("torch", "triton"), _bnkit_triton),
    "bnkit-triton-fused": Impl(("cuda",), ("torch", "triton"), _bnkit_triton_fused),
}
CPU_IMPLS = [n for n, i in IMPLS.items() if "cpu" in i.devices]
CUDA_IMPLS = [n for n, i in IMPLS.items() if "cuda" in i.devices]


def torch_impl(name: str, case, stream=None, **options):
    """(forward, backward) of the torch-based implementation `name`."""
    if name not in IMPLS or not IMPLS[name].needs:
        raise ValueError(f"unknown implementation {name!r}; known: {', '.join(IMPLS)}")
    return IMPLS[name].make(case, stream, **options)


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def available_impls(device: str) -> List[Tuple[str, Optional[str]]]:
    """(name, reason it is missing or None) for every implementation on `device`."""
    names = CPU_IMPLS if device == "cpu" else CUDA_IMPLS
    has_torch = _importable("torch")
    if device == "cuda":
        import importlib

        if not has_torch or not importlib.import_module("torch").cuda.is_available():
            return [(n, "no CUDA device") for n in names]
    out = []
    for n in names:
        missing = [m for m in IMPLS[n].needs if not (has_torch if m == "torch" else _importable(m))]
        out.append((n, f"{missing[0]} is not installed" if missing else None))
    return out
