"""`python -m bnkit bench`: batch norm, forward and backward in training mode,
timed for every implementation on the machine.

Implementations (`impls.IMPLS`, a name -> factory table):
- CPU: staged numpy (`bnkit.staged`), fast numpy (`bnkit.fast`), PyTorch's
  native CPU kernel (`F.batch_norm`), bnkit's `torch.autograd.Function`.
- CUDA: `F.batch_norm` with cuDNN (PyTorch's default), without it (ATen's
  native kernels), under `torch.compile`, bnkit's Function, and bnkit's
  Triton kernels.

On the CPU the numpy implementations run in float32 and float64, each
timed twice: in a fresh process that never imports torch and in the
benchmark's own process, which has; the rows' ``process`` field says which.

Method: warm-up, then repeated runs; the median and the 20th/80th
percentiles. CPU runs are timed in the process's CPU time
(`time.process_time`: every CPU implementation runs on one thread, and a
shared machine's waits for a core are not the code's), with the wall time
beside it. On the GPU each
call is captured once in a CUDA graph and the graph's replays are timed with
`triton.testing.do_bench` (CUDA events, L2 flushed before each run; CUDA
events and an explicit flush when triton is missing): that is the device
time, without Python's launch overhead, for every implementation alike. The
same process measures the copy bandwidth (a large array copy, bytes read
plus bytes written), and each result is reported as time, bandwidth over the
bytes a two-pass implementation must move (forward 3·E·s, backward 5·E·s;
the ideal single-pass figures 2·E·s and 3·E·s are given too), that
bandwidth as a fraction of the copy bandwidth, and the ratio to PyTorch's
native implementation on the same device (> 1: faster than native).

The package, one job per module:
- `timing`: the timers, CUDA graphs, the copy bandwidth;
- `impls`: the inputs and the implementations registry;
- `environment`: what the figures were measured on;
- `driver`: the measurement loop (`run`);
- `numpy_process`: the numpy implementations timed in a fresh process that
  never imports torch (what a reader's own numpy code runs in);
- `report`: JSON, CSV and the text table (the fields the book reads);
- `sweep`: the Triton tuning sweep, with its knobs passed explicitly.

Imports torch lazily: a machine without torch still times the numpy versions.
"""
from .. import fast, staged
from .driver import FULL_SHAPES, PASS_BYTES, QUICK_SHAPES, finish, measure, rel_err, run, to_numpy
from .environment import environment
from .impls import CPU_IMPLS, CUDA_IMPLS, IMPLS, Impl, available_impls, numpy_case, numpy_impl, torch_case, torch_impl
from .numpy_process import NUMPY_ONLY, TORCH_IMPORTED, measure_in_fresh_process
from .report import COLUMNS, META_COLUMNS, fast_vs_staged, table, write_csv, write_json
from .sweep import sweep_triton, variants
from .timing import copy_bandwidth, cpu_times, graph_of, log, new_side_stream, summary, time_cpu, time_cuda

__all__ = [
    "COLUMNS", "CPU_IMPLS", "CUDA_IMPLS", "FULL_SHAPES", "IMPLS", "Impl", "META_COLUMNS", "NUMPY_ONLY", "PASS_BYTES",
    "QUICK_SHAPES", "TORCH_IMPORTED", "available_impls", "copy_bandwidth", "cpu_times", "environment", "fast",
    "fast_vs_staged", "finish", "graph_of", "log", "measure", "measure_in_fresh_process", "new_side_stream",
    "numpy_case", "numpy_impl", "rel_err", "run", "staged", "summary", "sweep_triton", "table", "time_cpu",
    "time_cuda", "to_numpy", "torch_case", "torch_impl", "variants", "write_csv", "write_json",
]
