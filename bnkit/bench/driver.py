"""The measurement loop: every (shape, dtype, implementation, pass) timed,
then each result put in terms of bytes moved, the copy bandwidth and
PyTorch's native kernel on the same device.

On the CPU the numpy implementations are timed twice, side by side, in two
fresh processes (`numpy_process`): one that never imports torch (where a
reader's own numpy code runs) and one that imports torch first. The rows'
``process`` field says which; ``vs_staged`` is the staged numpy time over
the row's, in the same process. This process computes their outputs once,
untimed, for the errors against torch-native and to check the children's."""
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import fast, staged
from .environment import environment
from .impls import available_impls, numpy_case, numpy_impl, torch_case, torch_impl
from .numpy_process import NUMPY_ONLY, TORCH_IMPORTED, digest, measure_in_fresh_process
from .timing import copy_bandwidth, cpu_times, graph_of, log, new_side_stream, summary, time_cuda

PASS_BYTES = {"fwd": (2, 3), "bwd": (3, 5)}  # (ideal, two-pass) multiples of E·s

# (layout, shape): layout 'nd' is (N, D); 'nchw' contiguous; 'nhwc' is the
# same logical NCHW shape stored channels-last (numpy: an (N, H, W, C) array).
FULL_SHAPES = [
    ("nd", (4096, 4096)),
    ("nd", (1024, 1024)),
    ("nd", (65536, 64)),
    ("nchw", (256, 64, 56, 56)),
    ("nchw", (256, 256, 14, 14)),
    ("nchw", (128, 3, 224, 224)),
    ("nchw", (256, 16, 64, 64)),
    ("nhwc", (256, 64, 56, 56)),
    ("nhwc", (256, 256, 14, 14)),
    ("nhwc", (128, 3, 224, 224)),
    ("nhwc", (256, 16, 64, 64)),
]
QUICK_SHAPES = [
    ("nd", (1024, 1024)),
    ("nd", (256, 256)),
    ("nchw", (32, 64, 28, 28)),
    ("nchw", (64, 4, 64, 64)),
    ("nhwc", (32, 64, 28, 28)),
]

Shape = Tuple[str, Tuple[int, ...]]


def rel_err(a, ref) -> float:
    """||a - ref|| / ||ref||, in float64."""
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1e-300))


def to_numpy(t):
    """A tensor's values as a float32 numpy array (NCHW order); arrays pass through."""
    import torch

    if isinstance(t, torch.Tensor):
        t = t.detach().float().cpu()
        if t.dim() == 4 and not t.is_contiguous():
            t = t.contiguous()
        return t.numpy()
    return t


def run(device: str = "cpu", quick: bool = False, shapes: Optional[Sequence[Shape]] = None,
        dtypes: Optional[Sequence[str]] = None, impls: Optional[Sequence[str]] = None, compile_: bool = True,
        repeat: Optional[int] = None, checkpoint: Optional[Callable] = None,
        fresh_processes: bool = True) -> Tuple[Dict, List[Dict]]:
    """Time every (shape, dtype, implementation, pass); return (meta, rows).

    shapes default to QUICK_SHAPES or FULL_SHAPES; dtypes to float32 and
    float64 on the CPU and float32/float16/bfloat16 on CUDA; impls to all
    available. checkpoint(meta, rows), if given, is called after every shape
    and dtype. fresh_processes: on the CPU, time the numpy implementations
    in two fresh processes, one without torch and one with it (else here).
    """
    meta = environment(device)
    threads = meta.get("torch_threads")
    if device == "cpu" and threads:
        import torch

        torch.set_num_threads(1)  # numpy's kernels are single-threaded too
        meta["torch_threads"] = 1
    try:
        return _run(meta, device, quick, shapes, dtypes, impls, compile_, repeat, checkpoint, fresh_processes)
    finally:
        if device == "cpu" and threads:
            torch.set_num_threads(threads)  # leave the caller's process as it was


def _run(meta, device, quick, shapes, dtypes, impls, compile_, repeat, checkpoint, fresh_processes):
    shapes = shapes or (QUICK_SHAPES if quick else FULL_SHAPES)
    dtypes = dtypes or (["float32", "float64"] if device == "cpu" else ["float32", "float16", "bfloat16"])
    todo = []
    for name, reason in available_impls(device):
        if impls and name not in impls:
            continue
        if name == "torch-compile" and not compile_:
            reason = "--no-compile"
        if reason:
            log(f"skipping {name}: {reason}")
        else:
            todo.append(name)
    stream = new_side_stream() if device == "cuda" else None
    log(f"measuring the copy bandwidth on {meta['device_name']} ...")
    meta["copy_GBps"] = copy_bandwidth(device, quick)
    meta["quick"] = quick
    log(f"copy bandwidth: {meta['copy_GBps']:.1f} GB/s (read + write)")
    this_process = TORCH_IMPORTED if "torch" in sys.modules else NUMPY_ONLY
    numpy_names = [n for n in todo if n.endswith("numpy")]
    fresh = {}  # process kind -> {(layout, shape, dtype, impl): the child's rows and digests}
    if device == "cpu" and numpy_names and fresh_processes:
        cases = [(lay, shape, dt, n) for lay, shape in shapes for dt in dtypes for n in numpy_names]
        for kind in (NUMPY_ONLY, TORCH_IMPORTED) if "torch" in meta else (NUMPY_ONLY,):
            log(f"timing {', '.join(numpy_names)} in a fresh {kind} process ...")
            fresh[kind] = measure_in_fresh_process(cases, quick, repeat, kind)
    meta["processes"] = sorted(fresh) if fresh else [this_process]
    rows = []
    total = len(shapes) * len(dtypes) * len(todo)
    k = 0
    for layout, shape in shapes:
        for dtype in dtypes:
            case_rows = []
            ref = None
            for name in todo:
                k += 1
                if name in numpy_names and fresh:  # timed in the fresh processes: outputs only here
                    outputs = numpy_outputs(name, layout, shape, dtype)
                    key = (layout, "x".join(map(str, shape)), dtype, name)
                    for kind, measured in fresh.items():
                        same = measured[key]["digests"] == [digest(o) for o in outputs]
                        if not same:
                            log(f"  {name}: the {kind} process computed different outputs")
                        case_rows.append(dict(rows=measured[key]["rows"], outputs=outputs if same else None))
                    continue
                try:
                    res = measure(name, layout, shape, dtype, device, quick, repeat, stream)
                except Exception as e:  # one failure must not lose the whole run
                    log(f"[{k}/{total}] {layout} {shape} {dtype} {name}: FAILED {type(e).__name__}: {e}")
                    continue
                if name == "torch-native":
                    ref = res["outputs"]
                for r in res["rows"]:
                    r["process"] = this_process
                    log(f"[{k}/{total}] {layout:4} {'x'.join(map(str, shape)):>16} {dtype:8} "
                        f"{name:13} {r['pass']}: {r['median_ms']:9.3f} ms")
                case_rows.append(res)
            finish(case_rows, ref, meta["copy_GBps"])
            for res in case_rows:
                rows.extend(res["rows"])
            if checkpoint:
                checkpoint(meta, rows)
    return meta, rows


def numpy_outputs(name: str, layout: str, shape: Tuple[int, ...], dtype: str) -> List:
    """[forward output, dx] of staged-numpy or fast-numpy on the benchmark's
    case, NCHW order, untimed."""
    fwd, bwd = numpy_impl(staged if name == "staged-numpy" else fast, numpy_case(layout, shape, dtype=dtype))
    return [np.moveaxis(f(), -1, 1) if layout == "nhwc" else f() for f in (fwd, bwd)]


def measure(name: str, layout: str, shape: Tuple[int, ...], dtype: str, device: str, quick: bool,
            repeat: Optional[int], stream=None) -> Dict:
    """Both passes of one implementation on one case: {'rows': [fwd, bwd], 'outputs': [out, dx]}."""
    nrep = repeat or (5 if quick else 10)

    def cpu_timer(fn):
        return cpu_times(fn, nrep, min_time=0.4 if quick else 1.0)

    if name.endswith("numpy"):
        case = numpy_case(layout, shape, dtype=dtype)
        fwd, bwd = numpy_impl(staged if name == "staged-numpy" else fast, case)
        itemsize = np.dtype(dtype).itemsize
        outputs = [np.moveaxis(fwd(), -1, 1) if layout == "nhwc" else fwd(),
                   np.moveaxis(bwd(), -1, 1) if layout == "nhwc" else bwd()]
        timings = [(cpu_timer(fn), "process_time") for fn in (fwd, bwd)]
    else:
        import torch

        case = torch_case(layout, shape, getattr(torch, dtype), device)
        fwd, bwd = torch_impl(name, case, stream)
        itemsize = case[0].element_size()
        outputs = [to_numpy(fwd()), to_numpy(bwd())]
        timings = []
        for fn in (fwd, bwd):
            if device == "cuda":
                graph = graph_of(fn, stream)
                timings.append((time_cuda(graph.replay if graph is not None else fn, quick),
                                "cuda-graph" if graph is not None else "eager"))
            else:
                timings.append((cpu_timer(fn), "process_time"))
    elements = int(np.prod(shape))
    rows = []
    for pas, (times, mode) in zip(("fwd", "bwd"), timings):
        row = dict(layout=layout, shape="x".join(map(str, shape)), dtype=dtype, impl=name,
                   device=device, elements=elements, itemsize=itemsize, **{"pass": pas})
        if isinstance(times, dict):  # CPU: process time, wall time beside it
            row.update(summary(times["cpu"]))
            row["wall_median_ms"] = summary(times["wall"])["median_ms"]
        else:
            row.update(summary(times))
        row["timing"] = mode
        rows.append(row)
    return dict(rows=rows, outputs=outputs)


def finish(case_rows: List[Dict], ref, copy_gbps: float) -> None:
    """Bandwidths, fractions of the copy bandwidth, ratios to torch-native
    and to staged-numpy in the same process, and errors against
    torch-native, for one (shape, dtype), in place."""
    native = {r["pass"]: r["median_ms"] for res in case_rows for r in res["rows"]
              if r["impl"] == "torch-native"}
    cudnn = {r["pass"]: r["median_ms"] for res in case_rows for r in res["rows"]
             if r["impl"] == "torch-cudnn"}
    staged_ms = {(r["pass"], r.get("process")): r["median_ms"] for res in case_rows for r in res["rows"]
                 if r["impl"] == "staged-numpy"}
    for res in case_rows:
        for i, r in enumerate(res["rows"]):
            ideal, moved = PASS_BYTES[r["pass"]]
            es = r["elements"] * r["itemsize"]
            sec = r["median_ms"] * 1e-3
            r["ideal_bytes"], r["moved_bytes"] = ideal * es, moved * es
            r["GBps"] = moved * es / sec / 1e9
            r["frac_copy"] = r["GBps"] / copy_gbps
            r["ideal_frac_copy"] = ideal * es / sec / 1e9 / copy_gbps
            r["vs_native"] = native[r["pass"]] / r["median_ms"] if r["pass"] in native else None
            r["vs_cudnn"] = cudnn[r["pass"]] / r["median_ms"] if r["pass"] in cudnn else None
            key = (r["pass"], r.get("process"))
            r["vs_staged"] = staged_ms[key] / r["median_ms"] if r["impl"].endswith("numpy") and key in staged_ms \
                else None
            r["rel_err_vs_native"] = rel_err(res["outputs"][i], ref[i]) \
                if ref is not None and res["outputs"] is not None else None
