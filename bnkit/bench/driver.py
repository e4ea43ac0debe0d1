"""The measurement loop: every (shape, dtype, implementation, pass) timed,
then each result put in terms of bytes moved, the copy bandwidth and
PyTorch's native kernel on the same device.

On the CPU the numpy implementations are timed in fresh processes
(`numpy_process`) of two kinds: ones that never import torch (where a
reader's own numpy code runs) and ones that import torch first, three of
each by default, keeping the median process (`median_process`). The rows'
``process`` field says which kind; ``vs_staged`` is how many times faster
than staged numpy the row was, the two timed in turns in the same process
(`measure_numpy`). This process computes their outputs once, untimed, for
the errors against torch-native and to check the children's."""
import statistics
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import fast, staged
from .environment import environment
from .impls import available_impls, numpy_case, numpy_impl, torch_case, torch_impl
from .numpy_process import NUMPY_ONLY, TORCH_IMPORTED, digest, measure_in_fresh_process
from .timing import (copy_bandwidth, cpu_times, cpu_times_side_by_side, graph_of, log, new_side_stream,
                     paired_ratio, summary, time_cuda)

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
        fresh_processes: int = 3) -> Tuple[Dict, List[Dict]]:
    """Time every (shape, dtype, implementation, pass); return (meta, rows).

    shapes default to QUICK_SHAPES or FULL_SHAPES; dtypes to float32 and
    float64 on the CPU and float32/float16/bfloat16 on CUDA; impls to all
    available. checkpoint(meta, rows), if given, is called after every shape
    and dtype. fresh_processes: on the CPU, time the numpy implementations
    in this many fresh processes of each kind, without torch and with it,
    and keep the median process's figures (`median_process`); 0 times them
    here.
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
            runs = []
            for i in range(fresh_processes):
                log(f"timing {', '.join(numpy_names)} in fresh {kind} process {i + 1}/{fresh_processes} ...")
                runs.append(measure_in_fresh_process(cases, quick, repeat, kind))
            fresh[kind] = median_process(runs)
    meta["processes"] = sorted(fresh) if fresh else [this_process]
    meta["fresh_processes_per_kind"] = fresh_processes if fresh else 0
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


def median_process(runs: List[Dict]) -> Dict:
    """One result per case from the same cases timed in several fresh
    processes of one kind: each row is the row of the process whose
    vs_staged (for staged-numpy: whose time) is the median, and carries
    every process's figure beside it (vs_staged_all, median_ms_all).

    Why: where a fresh process's arrays land, and whether their pages are
    already mapped, is an accident of that process (chapter 9); an odd
    process is then one of several, not the figure."""
    merged = {}
    for key in runs[0]:
        digests = {tuple(run[key]["digests"]) for run in runs}
        if len(digests) != 1:
            raise RuntimeError(f"fresh processes computed different outputs for {key}")
        rows = []
        for k in range(len(runs[0][key]["rows"])):
            candidates = [run[key]["rows"][k] for run in runs]
            by = "median_ms" if key[3] == "staged-numpy" else "vs_staged"
            ordered = sorted(candidates, key=lambda r: r[by])
            row = dict(ordered[(len(ordered) - 1) // 2])  # the lower median: a real process's row
            row["vs_staged_all"] = [r["vs_staged"] for r in candidates]
            row["median_ms_all"] = [r["median_ms"] for r in candidates]
            rows.append(row)
        merged[key] = dict(rows=rows, digests=runs[0][key]["digests"])
    return merged


def numpy_outputs(name: str, layout: str, shape: Tuple[int, ...], dtype: str) -> List:
    """[forward output, dx] of staged-numpy or fast-numpy on the benchmark's
    case, NCHW order, untimed."""
    fwd, bwd = numpy_impl(staged if name == "staged-numpy" else fast, numpy_case(layout, shape, dtype=dtype))
    return [np.moveaxis(f(), -1, 1) if layout == "nhwc" else f() for f in (fwd, bwd)]


def measure(name: str, layout: str, shape: Tuple[int, ...], dtype: str, device: str, quick: bool,
            repeat: Optional[int], stream=None) -> Dict:
    """Both passes of one implementation on one case: {'rows': [fwd, bwd], 'outputs': [out, dx]}."""
    if name.endswith("numpy"):
        return measure_numpy([name], layout, shape, dtype, quick, repeat)[name]
    import torch

    case = torch_case(layout, shape, getattr(torch, dtype), device)
    fwd, bwd = torch_impl(name, case, stream)
    itemsize = case[0].element_size()
    outputs = [to_numpy(fwd()), to_numpy(bwd())]
    rows = []
    for pas, fn in zip(("fwd", "bwd"), (fwd, bwd)):
        if device == "cuda":
            graph = graph_of(fn, stream)
            times = time_cuda(graph.replay if graph is not None else fn, quick)
            mode = "cuda-graph" if graph is not None else "eager"
        else:
            times, mode = cpu_times(fn, _repeats(quick, repeat), min_time=_min_time(quick, repeat)), "process_time"
        rows.append(_row(name, layout, shape, dtype, device, itemsize, pas, times, mode))
    return dict(rows=rows, outputs=outputs)


def measure_numpy(names: Sequence[str], layout: str, shape: Tuple[int, ...], dtype: str, quick: bool,
                  repeat: Optional[int]) -> Dict[str, Dict]:
    """Both passes of the numpy implementations `names` (staged-numpy and/or
    fast-numpy) on one case, timed side by side, round by round
    (`cpu_times_side_by_side`): {name: {'rows': [fwd, bwd], 'outputs': [out, dx]}}.
    With staged-numpy among them, each row's vs_staged is the median of the
    per-round ratios (`paired_ratio`), so a slow spell of the machine falls
    on both sides of the ratio; `rounds` in the row says how many."""
    itemsize = np.dtype(dtype).itemsize
    impls = {n: numpy_impl(staged if n == "staged-numpy" else fast, numpy_case(layout, shape, dtype=dtype))
             for n in names}
    result = {n: dict(rows=[], outputs=[np.moveaxis(f(), -1, 1) if layout == "nhwc" else f() for f in impls[n]])
              for n in names}
    for k, pas in enumerate(("fwd", "bwd")):
        times = cpu_times_side_by_side([impls[n][k] for n in names], _repeats(quick, repeat), _min_time(quick, repeat))
        for n, t in zip(names, times):
            row = _row(n, layout, shape, dtype, "cpu", itemsize, pas, t, "process_time")
            row["rounds"] = len(t["rounds"])
            if "staged-numpy" in names:
                row["vs_staged"] = paired_ratio(times[list(names).index("staged-numpy")]["rounds"], t["rounds"])
            result[n]["rows"].append(row)
    return result


def _repeats(quick: bool, repeat: Optional[int]) -> int:
    return repeat or (5 if quick else 10)


def _min_time(quick: bool, repeat: Optional[int]) -> float:
    """Seconds each CPU measurement runs for at least (per implementation);
    none when the caller fixed the number of runs."""
    return 0.0 if repeat else 0.4 if quick else 1.0


def _row(name, layout, shape, dtype, device, itemsize, pas, times, mode) -> Dict:
    """One result row; `times` is a list of ms, or on the CPU {'cpu': [...],
    'wall': [...]} (process time reported, wall time kept beside it)."""
    row = dict(layout=layout, shape="x".join(map(str, shape)), dtype=dtype, impl=name,
               device=device, elements=int(np.prod(shape)), itemsize=itemsize, **{"pass": pas})
    if isinstance(times, dict):
        row.update(summary(times["cpu"]))
        row["wall_median_ms"] = summary(times["wall"])["median_ms"]
        if "faults" in times:
            row["faults_per_call"] = statistics.median(times["faults"])
    else:
        row.update(summary(times))
    row["timing"] = mode
    return row


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
            if r.get("vs_staged") is None:  # (rows timed beside staged carry their paired ratio)
                r["vs_staged"] = staged_ms[key] / r["median_ms"] \
                    if r["impl"].endswith("numpy") and key in staged_ms else None
            r["rel_err_vs_native"] = rel_err(res["outputs"][i], ref[i]) \
                if ref is not None and res["outputs"] is not None else None
