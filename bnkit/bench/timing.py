"""Timers: wall clock on the CPU, CUDA events (and CUDA graphs) on the GPU.

Every function takes what it needs as arguments; the CUDA side stream is
created by the caller (`new_side_stream`) and passed in, so nothing here
keeps state between calls.
"""
import resource
import statistics
import sys
import time
from typing import Callable, Dict, List, Sequence

import numpy as np


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout carries only the results table."""
    print(msg, file=sys.stderr, flush=True)


def time_cpu(fn: Callable, repeat: int, warmup: int = 1, min_time: float = 0.0,
             clock: Callable[[], float] = time.perf_counter) -> List[float]:
    """Run fn warmup times, then at least `repeat` times (and at least
    min_time seconds of wall time); return the list of times in ms, read
    from `clock` (wall time by default; the benchmark's CPU rows pass
    `time.process_time`, see `cpu_times`)."""
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1e3)
    return times


def cpu_times(fn: Callable, repeat: int, min_time: float) -> Dict[str, List[float]]:
    """The CPU implementations' timer: {'cpu': ms of this process's CPU time
    per call, 'wall': ms of wall time per call}, from the same calls.

    Every CPU implementation runs on one thread (numpy's ufuncs, torch set to
    one thread), so on an idle machine the two agree; on a shared one the
    wall time also counts the time the process waited for a core, which has
    nothing to do with the code. The benchmark reports the CPU time as
    median_ms and keeps the wall time beside it (wall_median_ms)."""
    fn()
    out = {"cpu": [], "wall": []}
    start = time.perf_counter()
    while len(out["cpu"]) < repeat or time.perf_counter() - start < min_time:
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        out["cpu"].append((time.process_time() - c0) * 1e3)
        out["wall"].append((time.perf_counter() - w0) * 1e3)
    return out


def cpu_times_side_by_side(fns: Sequence[Callable], repeat: int, min_time: float,
                           block: float = 0.05) -> List[Dict[str, List[float]]]:
    """`cpu_times` of several functions, measured in turns, so that a change in
    the machine's speed during the run (a busy neighbour on a shared host)
    falls on all of them alike. Each round gives every function a block of
    calls (the order reversed every other round): one untimed call, which
    pays for the heap the previous function left (its freed arrays, pages
    returned to the system), then timed calls for at least `block` seconds.
    Returns per function {'cpu': [...], 'wall': [...], 'faults': [...]} for
    every timed call (faults: the process's minor page faults during it,
    each a fresh page the kernel had to map), and 'rounds': each round's
    median CPU time, for `paired_ratio`.
    At least `repeat` rounds, and at least min_time seconds per function."""
    out = [{"cpu": [], "wall": [], "faults": [], "rounds": []} for _ in fns]
    start, rounds = time.perf_counter(), 0
    while rounds < repeat or time.perf_counter() - start < min_time * len(fns):
        order = range(len(fns)) if rounds % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            fns[i]()
            cpu, t_block = [], time.perf_counter()
            while not cpu or time.perf_counter() - t_block < block:
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                c0, w0 = time.process_time(), time.perf_counter()
                fns[i]()
                cpu.append((time.process_time() - c0) * 1e3)
                out[i]["wall"].append((time.perf_counter() - w0) * 1e3)
                out[i]["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
            out[i]["cpu"] += cpu
            out[i]["rounds"].append(statistics.median(cpu))
        rounds += 1
    return out


def paired_ratio(base: Sequence[float], times: Sequence[float]) -> float:
    """The median over rounds of base[k] / times[k]: how many times faster
    than `base` a function was, from times taken side by side (the
    'rounds' of `cpu_times_side_by_side`)."""
    return statistics.median(b / t for b, t in zip(base, times, strict=True))


def time_cuda(fn: Callable, quick: bool = False) -> List[float]:
    """Times in ms of fn on the GPU: CUDA events, L2 flushed before each run
    (`triton.testing.do_bench` where triton is installed)."""
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


def new_side_stream():
    """A non-default CUDA stream for the recorded forwards and the graph
    captures: autograd runs a backward on its forward's stream, and a capture
    only sees work on its own stream. One per run, passed to whoever needs it."""
    import torch

    return torch.cuda.Stream()


def graph_of(fn: Callable, stream):
    """fn captured in a CUDA graph on `stream` (after a warm-up there), or
    None if it cannot be captured. Replaying the graph times the device work
    without Python's launch overhead, equally for every implementation."""
    import torch

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


def summary(times: List[float]) -> Dict[str, float]:
    """Median and 20th/80th percentiles (ms) of a list of times, and their count."""
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return dict(median_ms=statistics.median(times), p20_ms=q[1], p80_ms=q[7], runs=len(times))


def copy_bandwidth(device: str, quick: bool) -> float:
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
