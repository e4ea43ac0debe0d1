"""`python -m bnkit bench`: batch norm, forward and backward in training mode,
timed for every implementation on the machine.

Implementations:
- CPU: staged numpy (`bnkit.staged`), fast numpy (`bnkit.fast`), PyTorch's
  native CPU kernel (`F.batch_norm`), bnkit's `torch.autograd.Function`.
- CUDA: `F.batch_norm` with cuDNN (PyTorch's default), without it (ATen's
  native kernels), under `torch.compile`, bnkit's Function, and bnkit's
  Triton kernels.

Method: warm-up, then repeated runs; the median and the 20th/80th
percentiles. CPU runs are timed with `time.perf_counter`. On the GPU each
call is captured once in a CUDA graph and the graph's replays are timed with
`triton.testing.do_bench` (CUDA events, L2 flushed before each run; CUDA
events and an explicit flush when triton is missing): that is the device
time, without Python's launch overhead, for every implementation alike. The same
process measures the copy bandwidth (a large array copy, bytes read plus
bytes written), and each result is reported as time, bandwidth over the
bytes a two-pass implementation must move (forward 3·E·s, backward 5·E·s;
the ideal single-pass figures 2·E·s and 3·E·s are given too), that
bandwidth as a fraction of the copy bandwidth, and the ratio to PyTorch's
native implementation on the same device (> 1: faster than native).

Imports torch lazily: a machine without torch still times the numpy versions.
"""
import datetime
import json
import platform
import statistics
import sys
import time

import numpy as np

from . import fast, staged

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
CPU_IMPLS = ["staged-numpy", "fast-numpy", "torch-native", "bnkit-torch"]
CUDA_IMPLS = ["torch-cudnn", "torch-native", "torch-compile", "bnkit-torch", "bnkit-triton"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ timing

def time_cpu(fn, repeat, warmup=1, min_time=0.0):
    """Run fn warmup times, then at least `repeat` times (and at least
    min_time seconds); return the list of times in ms."""
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def time_cuda(fn, quick=False):
    """Times in ms of fn on the GPU: CUDA events, L2 flushed before each run."""
    import torch

    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        warmup, rep = (10, 30) if quick else (25, 100)
        try:
            return list(do_bench(fn, warmup=warmup, rep=rep, return_mode="all"))
        except TypeError:  # an older triton: no return_mode="all"
            return list(do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.2, 0.5, 0.8]))
    flush = torch.empty(64 * 2**20, dtype=torch.int32, device="cuda")  # 256 MB > L2
    for _ in range(3):
        fn()
    times = []
    for _ in range(10 if quick else 50):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


_STREAM = []


def side_stream():
    """One non-default CUDA stream for the recorded forwards and the graph
    captures: autograd runs a backward on its forward's stream, and a
    capture only sees work on its own stream."""
    import torch

    if not _STREAM:
        _STREAM.append(torch.cuda.Stream())
    return _STREAM[0]


def graph_of(fn):
    """fn captured in a CUDA graph (after a warm-up on a side stream), or None
    if it cannot be captured. Replaying the graph times the device work
    without Python's launch overhead, equally for every implementation."""
    import torch

    stream = side_stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=stream):
            fn()
    except Exception as e:  # e.g. an op that synchronises with the host
        log(f"  (no CUDA graph: {type(e).__name__}: {str(e)[:80]}; timing eagerly)")
        torch.cuda.synchronize()
        return None
    torch.cuda.synchronize()
    return graph


def summary(times):
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return dict(median_ms=statistics.median(times), p20_ms=q[1], p80_ms=q[7], runs=len(times))


def copy_bandwidth(device, quick):
    """Bytes read + written per second by a large array copy, GB/s."""
    if device == "cpu":
        n = (16 if quick else 64) * 2**20 // 4 * 4  # 64 or 256 MB of float32
        src = np.random.default_rng(0).standard_normal(n // 4, dtype=np.float32)
        dst = np.empty_like(src)
        times = time_cpu(lambda: np.copyto(dst, src), repeat=5 if quick else 20, warmup=2)
        return 2 * src.nbytes / (statistics.median(times) * 1e-3) / 1e9
    import torch

    src = torch.randn(2**28, device="cuda")  # 1 GiB of float32, 20x the L2
    dst = torch.empty_like(src)
    times = time_cuda(lambda: dst.copy_(src), quick)
    return 2 * src.numel() * 4 / (statistics.median(times) * 1e-3) / 1e9


# ------------------------------------------------------- the implementations

def numpy_case(layout, shape, seed=0):
    """(x, gamma, beta, dout, axis) as float32 numpy arrays."""
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
    return x, gamma, beta, dout, axis


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


def torch_case(layout, shape, dtype, device, seed=0):
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
    # parameters and running statistics stay float32 (mixed precision's convention)
    w, b = torch.from_numpy(gamma).to(device), torch.from_numpy(beta).to(device)
    C = w.numel()
    rm, rv = torch.zeros(C, device=device), torch.ones(C, device=device)
    return x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), rm, rv, dout


def torch_impl(name, case):
    """(forward, backward) closures; backward replays autograd's backward of
    one recorded forward (retain_graph), so it times the backward alone."""
    import contextlib

    import torch
    import torch.nn.functional as F

    x, w, b, rm, rv, dout = case
    ctx = contextlib.nullcontext
    if name == "torch-native" and x.is_cuda:
        ctx = lambda: torch.backends.cudnn.flags(enabled=False)  # noqa: E731
    if name in ("torch-native", "torch-cudnn"):
        def f(): return F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)
    elif name == "torch-compile":
        import torch._functorch.config as functorch_config

        functorch_config.donated_buffer = False  # the timed backward replays with retain_graph
        compiled = torch.compile(lambda x, rm, rv, w, b: F.batch_norm(
            x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5))
        def f(): return compiled(x, rm, rv, w, b)
    elif name == "bnkit-torch":
        from . import torch as bt

        def f(): return bt.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)
    elif name == "bnkit-triton":
        from . import triton_kernels as tk

        def f(): return tk.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)
    else:
        raise ValueError(f"unknown implementation {name!r}")

    def forward():
        with ctx():
            return f()

    with ctx(), (torch.cuda.stream(side_stream()) if x.is_cuda else contextlib.nullcontext()):
        out = f()
    if x.is_cuda:
        torch.cuda.current_stream().wait_stream(side_stream())

    def backward():
        with ctx():
            return torch.autograd.grad(out, (x, w, b), dout, retain_graph=True)[0]

    return forward, backward


def rel_err(a, ref):
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1e-300))


def to_numpy(t):
    import torch

    if isinstance(t, torch.Tensor):
        t = t.detach().float().cpu()
        if t.dim() == 4 and not t.is_contiguous():
            t = t.contiguous()
        return t.numpy()
    return t


# ------------------------------------------------------------- the driver

def available_impls(device):
    """(name, reason it is missing or None) for every implementation on `device`."""
    try:
        import torch
    except ImportError:
        torch = None
    if device == "cpu":
        return [(n, None if torch or "numpy" in n else "torch is not installed") for n in CPU_IMPLS]
    if torch is None or not torch.cuda.is_available():
        return [(n, "no CUDA device") for n in CUDA_IMPLS]
    out = []
    for n in CUDA_IMPLS:
        reason = None
        if n == "bnkit-triton":
            try:
                import triton  # noqa: F401
            except ImportError:
                reason = "triton is not installed"
        out.append((n, reason))
    return out


def environment(device):
    meta = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        python=platform.python_version(), numpy=np.__version__, machine=platform.machine(),
        cpu=platform.processor() or platform.machine(), device=device,
    )
    try:
        import torch

        meta["torch"] = torch.__version__
        meta["torch_threads"] = torch.get_num_threads()
        if device == "cuda":
            meta["device_name"] = torch.cuda.get_device_name()
            meta["cuda"] = torch.version.cuda
            meta["cudnn"] = torch.backends.cudnn.version()
        else:
            meta["device_name"] = _cpu_name()
    except ImportError:
        meta["device_name"] = _cpu_name()
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    return meta


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    import os

                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def run(device="cpu", quick=False, shapes=None, dtypes=None, impls=None, compile_=True, repeat=None,
        checkpoint=None):
    """Time every (shape, dtype, implementation, pass); return (meta, rows).
    checkpoint(meta, rows), if given, is called after every shape and dtype."""
    meta = environment(device)
    threads = meta.get("torch_threads")
    if device == "cpu" and threads:
        import torch

        torch.set_num_threads(1)  # numpy's kernels are single-threaded too
        meta["torch_threads"] = 1
    try:
        return _run(meta, device, quick, shapes, dtypes, impls, compile_, repeat, checkpoint)
    finally:
        if device == "cpu" and threads:
            torch.set_num_threads(threads)  # leave the caller's process as it was


def _run(meta, device, quick, shapes, dtypes, impls, compile_, repeat, checkpoint):
    shapes = shapes or (QUICK_SHAPES if quick else FULL_SHAPES)
    dtypes = dtypes or (["float32"] if device == "cpu" else ["float32", "float16", "bfloat16"])
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
    log(f"measuring the copy bandwidth on {meta['device_name']} ...")
    meta["copy_GBps"] = copy_bandwidth(device, quick)
    meta["quick"] = quick
    log(f"copy bandwidth: {meta['copy_GBps']:.1f} GB/s (read + write)")
    rows = []
    total = len(shapes) * len(dtypes) * len(todo)
    k = 0
    for layout, shape in shapes:
        for dtype in dtypes:
            case_rows = []
            ref = None
            for name in todo:
                k += 1
                try:
                    res = measure(name, layout, shape, dtype, device, quick, repeat)
                except Exception as e:  # one failure must not lose the whole run
                    log(f"[{k}/{total}] {layout} {shape} {dtype} {name}: FAILED {type(e).__name__}: {e}")
                    continue
                if name == "torch-native":
                    ref = res["outputs"]
                for r in res["rows"]:
                    log(f"[{k}/{total}] {layout:4} {'x'.join(map(str, shape)):>16} {dtype:8} "
                        f"{name:13} {r['pass']}: {r['median_ms']:9.3f} ms")
                case_rows.append(res)
            finish(case_rows, ref, meta["copy_GBps"])
            for res in case_rows:
                rows.extend(res["rows"])
            if checkpoint:
                checkpoint(meta, rows)
    return meta, rows


def measure(name, layout, shape, dtype, device, quick, repeat):
    if name.endswith("numpy"):
        case = numpy_case(layout, shape)
        fwd, bwd = numpy_impl(staged if name == "staged-numpy" else fast, case)
        itemsize = 4
        nrep = repeat or (5 if quick else 10)
        timer = lambda fn: time_cpu(fn, nrep, min_time=0.4 if quick else 1.0)  # noqa: E731
        outputs = [np.moveaxis(fwd(), -1, 1) if layout == "nhwc" else fwd(),
                   np.moveaxis(bwd(), -1, 1) if layout == "nhwc" else bwd()]
    else:
        import torch

        tdtype = getattr(torch, dtype)
        case = torch_case(layout, shape, tdtype, device)
        fwd, bwd = torch_impl(name, case)
        itemsize = case[0].element_size()
        if device == "cuda":
            def timer(fn):
                graph = graph_of(fn)
                timer.mode = "cuda-graph" if graph is not None else "eager"
                return time_cuda(graph.replay if graph is not None else fn, quick)
        else:
            nrep = repeat or (5 if quick else 10)
            timer = lambda fn: time_cpu(fn, nrep, min_time=0.4 if quick else 1.0)  # noqa: E731
        outputs = [to_numpy(fwd()), to_numpy(bwd())]
    elements = int(np.prod(shape))
    rows = []
    for pas, fn in (("fwd", fwd), ("bwd", bwd)):
        row = dict(layout=layout, shape="x".join(map(str, shape)), dtype=dtype, impl=name,
                   device=device, elements=elements, itemsize=itemsize, **{"pass": pas})
        row.update(summary(timer(fn)))
        row["timing"] = getattr(timer, "mode", "perf_counter")
        rows.append(row)
    return dict(rows=rows, outputs=outputs)


def finish(case_rows, ref, copy_gbps):
    """Bandwidths, fractions of the copy bandwidth, ratios to torch-native
    and errors against torch-native, for one (shape, dtype)."""
    native = {r["pass"]: r["median_ms"] for res in case_rows for r in res["rows"]
              if r["impl"] == "torch-native"}
    cudnn = {r["pass"]: r["median_ms"] for res in case_rows for r in res["rows"]
             if r["impl"] == "torch-cudnn"}
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
            r["rel_err_vs_native"] = rel_err(res["outputs"][i], ref[i]) if ref is not None else None


COLUMNS = ["layout", "shape", "dtype", "impl", "pass", "device", "median_ms", "p20_ms", "p80_ms",
           "runs", "elements", "itemsize", "ideal_bytes", "moved_bytes", "GBps", "frac_copy",
           "ideal_frac_copy", "vs_native", "vs_cudnn", "rel_err_vs_native", "timing"]
META_COLUMNS = ["device_name", "date", "torch", "triton", "numpy", "copy_GBps"]


def write_json(path, meta, rows):
    with open(path, "w") as f:
        json.dump(dict(meta=meta, results=rows), f, indent=1)


def write_csv(path, meta, rows):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS + META_COLUMNS)
        for r in rows:
            w.writerow([r.get(c) for c in COLUMNS] + [meta.get(c) for c in META_COLUMNS])


def table(rows):
    """A short text table: median time, fraction of copy bandwidth, ratio to native."""
    lines = [f"{'layout':5} {'shape':>16} {'dtype':8} {'impl':13} {'pass':4} {'ms':>9} "
             f"{'%copy':>6} {'xnative':>8} {'xcudnn':>7}"]
    for r in rows:
        vn = f"{r['vs_native']:.2f}" if r.get("vs_native") else "-"
        vc = f"{r['vs_cudnn']:.2f}" if r.get("vs_cudnn") else "-"
        lines.append(f"{r['layout']:5} {r['shape']:>16} {r['dtype']:8} {r['impl']:13} {r['pass']:4} "
                     f"{r['median_ms']:9.3f} {100 * r['frac_copy']:5.0f}% {vn:>8} {vc:>7}")
    return "\n".join(lines)


def sweep_triton(quick=False):
    """Time bnkit's Triton forward and backward (CUDA graphs, L2 flushed) on
    a few shapes while varying one tuning knob of `bnkit.triton_kernels` at a
    time; print one line per variant. How the defaults were chosen."""
    import torch

    from . import triton_kernels as tk

    shapes = [("nchw", (256, 64, 56, 56), "float32"), ("nhwc", (256, 64, 56, 56), "float32"),
              ("nd", (4096, 4096), "float32"), ("nhwc", (256, 256, 14, 14), "bfloat16"),
              ("nchw", (256, 256, 14, 14), "float16"), ("nchw", (128, 3, 224, 224), "float32")]
    knobs = dict(REDUCE_TILE=[2048, 8192, 16384], AFFINE_TILE=[2048, 8192, 16384],
                 REDUCE_WARPS=[8, 16], AFFINE_WARPS=[8], SPLIT_WAVES=[2, 8, 16],
                 MAX_ROW=[64, 256], MAX_RUN=[256, 4096])
    base = {k: getattr(tk, k) for k in knobs}
    variants = [("base", None, None)] + [(k, k, v) for k, vs in knobs.items() for v in vs]
    for layout, shape, dtype in shapes:
        case = torch_case(layout, shape, getattr(torch, dtype), "cuda")
        es = int(np.prod(shape)) * case[0].element_size()
        for label, knob, value in variants:
            if knob:
                setattr(tk, knob, value)
            try:
                fwd, bwd = torch_impl("bnkit-triton", case)
                t = [statistics.median(time_cuda(graph_of(f).replay, quick)) for f in (fwd, bwd)]
                print(f"{layout} {'x'.join(map(str, shape))} {dtype} {label}={value}: "
                      f"fwd {t[0]*1e3:7.1f} us ({3*es/t[0]/1e6:5.0f} GB/s)  "
                      f"bwd {t[1]*1e3:7.1f} us ({5*es/t[1]/1e6:5.0f} GB/s)", flush=True)
            except Exception as e:
                print(f"{layout} {shape} {dtype} {label}={value}: FAILED {e}", flush=True)
            for k, v in base.items():
                setattr(tk, k, v)
