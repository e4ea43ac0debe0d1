"""`python -m bnkit bench --sweep`: bnkit's Triton forward and backward timed
(CUDA graphs, L2 flushed) while one tuning knob of `bnkit.triton_kernels`
varies at a time. How the committed defaults were chosen.

Each variant is a `triton_kernels.Tuning` passed to the kernels explicitly;
nothing is changed in any module.
"""
import dataclasses
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .impls import torch_case, torch_impl
from .timing import graph_of, new_side_stream, time_cuda

SWEEP_SHAPES = [("nchw", (256, 64, 56, 56), "float32"), ("nhwc", (256, 64, 56, 56), "float32"),
                ("nd", (4096, 4096), "float32"), ("nhwc", (256, 256, 14, 14), "bfloat16"),
                ("nchw", (256, 256, 14, 14), "float16"), ("nchw", (128, 3, 224, 224), "float32")]
# the values tried for each knob (a field of triton_kernels.Tuning), one knob at a time
KNOBS = dict(reduce_tile=[2048, 8192, 16384], affine_tile=[2048, 8192, 16384],
             reduce_warps=[8, 16], affine_warps=[8], split_waves=[2, 8, 16],
             max_row=[64, 256], max_run=[256, 4096])


def variants(base, knobs: Dict[str, Sequence[int]]) -> List[Tuple[str, object]]:
    """[(label, tuning)]: the base, then base with one knob changed at a time."""
    out, known = [("base", base)], [f.name for f in dataclasses.fields(base)]
    for knob, values in knobs.items():
        if knob not in known:
            raise ValueError(f"unknown tuning knob {knob!r}; known: {', '.join(known)}")
        out += [(f"{knob}={v}", dataclasses.replace(base, **{knob: v})) for v in values]
    return out


def sweep_triton(quick: bool = False, shapes=None, knobs: Optional[Dict[str, Sequence[int]]] = None,
                 base=None) -> List[Dict]:
    """Time every variant on every shape (CUDA); print one line per variant and
    return the rows (layout, shape, dtype, variant, fwd_us, bwd_us and their GB/s)."""
    import torch

    from .. import triton_kernels as tk

    base = base or tk.tuning_defaults()
    stream = new_side_stream()
    rows = []
    for layout, shape, dtype in shapes or SWEEP_SHAPES:
        case = torch_case(layout, shape, getattr(torch, dtype), "cuda")
        es = int(np.prod(shape)) * case[0].element_size()
        for label, tuning in variants(base, KNOBS if knobs is None else knobs):
            try:
                fwd, bwd = torch_impl("bnkit-triton", case, stream, tuning=tuning)
                t = [statistics.median(time_cuda(graph_of(f, stream).replay, quick)) for f in (fwd, bwd)]
            except Exception as e:
                print(f"{layout} {shape} {dtype} {label}: FAILED {e}", flush=True)
                continue
            row = dict(layout=layout, shape="x".join(map(str, shape)), dtype=dtype, variant=label,
                       fwd_us=t[0] * 1e3, bwd_us=t[1] * 1e3, fwd_GBps=3 * es / t[0] / 1e6,
                       bwd_GBps=5 * es / t[1] / 1e6)
            rows.append(row)
            print(f"{layout} {row['shape']} {dtype} {label}: "
                  f"fwd {row['fwd_us']:7.1f} us ({row['fwd_GBps']:5.0f} GB/s)  "
                  f"bwd {row['bwd_us']:7.1f} us ({row['bwd_GBps']:5.0f} GB/s)", flush=True)
    return rows
