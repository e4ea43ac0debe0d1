"""`python -m bnkit bench`: the figures it writes, on tiny shapes (no timing
claims here: performance lives in the benchmark, not in tests), and the
committed figures the performance chapter plots."""
import csv
import json
import pathlib
import sys

import numpy as np
import pytest

from bnkit import bench
from bnkit.__main__ import main

DATA = pathlib.Path(__file__).resolve().parent.parent / "book" / "data"
TINY = [("nd", (64, 8)), ("nchw", (4, 3, 5, 5)), ("nhwc", (4, 3, 5, 5))]


def test_summary_and_timer():
    times = bench.time_cpu(lambda: None, repeat=7, warmup=0)
    assert len(times) == 7 and all(t >= 0 for t in times)
    s = bench.summary([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s["median_ms"] == 3.0 and s["p20_ms"] <= 3.0 <= s["p80_ms"] and s["runs"] == 5


def test_numpy_implementations_agree_with_each_other():
    """The bench times staged and fast on the same case; both must compute it."""
    for layout, shape in TINY:
        case = bench.numpy_case(layout, shape)
        s_fwd, s_bwd = bench.numpy_impl(bench.staged, case)
        f_fwd, f_bwd = bench.numpy_impl(bench.fast, case)
        assert bench.rel_err(f_fwd(), s_fwd()) < 1e-5
        assert bench.rel_err(f_bwd(), s_bwd()) < 1e-4


def test_run_reports_every_field():
    pytest.importorskip("torch", reason="torch is not installed: no torch-native reference")
    meta, rows = bench.run("cpu", quick=True, shapes=TINY, repeat=2, fresh_processes=2,
                           impls=["staged-numpy", "fast-numpy", "torch-native", "bnkit-torch"])
    for key in ("device_name", "date", "numpy", "torch", "copy_GBps"):
        assert meta[key]
    assert meta["copy_GBps"] > 0
    assert meta["processes"] == [bench.NUMPY_ONLY, bench.TORCH_IMPORTED]
    # per shape and dtype (float32, float64): the two numpy implementations in
    # both fresh processes, the two torch ones here; each with two passes
    assert len(rows) == len(TINY) * 2 * (2 * 2 + 2) * 2
    assert {r["dtype"] for r in rows} == {"float32", "float64"}
    numpy_rows = [r for r in rows if r["impl"].endswith("numpy")]
    assert {r["process"] for r in numpy_rows} == {bench.NUMPY_ONLY, bench.TORCH_IMPORTED}
    assert {r["process"] for r in rows if not r["impl"].endswith("numpy")} == {bench.TORCH_IMPORTED}
    assert all(r["rel_err_vs_native"] is not None for r in numpy_rows)  # the children computed what we did
    for r in numpy_rows:  # fast against staged, side by side in the same process
        staged_row = next(s for s in numpy_rows if s["impl"] == "staged-numpy" and s["process"] == r["process"]
                          and all(s[k] == r[k] for k in ("layout", "shape", "dtype", "pass")))
        assert staged_row["rounds"] == r["rounds"] >= 2  # the same rounds
        assert len(r["vs_staged_all"]) == len(r["median_ms_all"]) == 2  # one figure per fresh process
        assert r["faults_per_call"] >= 0
        assert r["vs_staged"] > 0 and (r["impl"] != "staged-numpy" or r["vs_staged"] == 1.0)
        assert r["timing"] == "process_time" and r["wall_median_ms"] > 0
    for r in rows:
        es = r["elements"] * r["itemsize"]
        assert r["moved_bytes"] == (3 if r["pass"] == "fwd" else 5) * es
        assert r["ideal_bytes"] == (2 if r["pass"] == "fwd" else 3) * es
        assert r["GBps"] == pytest.approx(r["moved_bytes"] / (r["median_ms"] * 1e-3) / 1e9)
        assert r["frac_copy"] == pytest.approx(r["GBps"] / meta["copy_GBps"])
        assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        # every implementation computed the same thing as torch's native kernel
        assert r["rel_err_vs_native"] < 1e-4, r
        if r["impl"] == "torch-native":
            assert r["vs_native"] == 1.0


def test_cli_writes_json_and_csv(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(bench, "QUICK_SHAPES", TINY)
    out_json, out_csv = tmp_path / "b.json", tmp_path / "b.csv"
    assert main(["bench", "--quick", "--impl", "fast-numpy", "--impl", "staged-numpy", "--repeat", "2",
                 "--processes", "1", "--dtype", "float32", "--json", str(out_json), "--csv", str(out_csv)]) == 0
    data = json.loads(out_json.read_text())
    assert {r["impl"] for r in data["results"]} == {"fast-numpy", "staged-numpy"}
    assert data["meta"]["device"] == "cpu" and data["meta"]["numpy"] == np.__version__
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(data["results"]) and rows[0]["device_name"]
    assert set(rows[0]) == set(bench.COLUMNS + bench.META_COLUMNS)
    captured = capfd.readouterr()  # fd level: the fresh processes write progress too; read once
    table_lines = captured.out.strip().splitlines()
    assert table_lines[0].split()[:5] == ["layout", "shape", "dtype", "impl", "pass"]
    assert len(table_lines) == 1 + len(data["results"])  # stdout: the table and nothing else
    # stderr: the progress of every measurement, in both fresh processes where
    # torch is installed (one step per shape and dtype: the two implementations
    # are timed side by side), then where the files went
    total = len(TINY)
    kinds = [bench.NUMPY_ONLY] + ([bench.TORCH_IMPORTED] if "torch" in sys.modules else [])
    for kind in kinds:
        assert f"[{kind} 1/{total}]" in captured.err and f"[{kind} {total}/{total}]" in captured.err
    assert {r["process"] for r in data["results"]} == set(kinds)
    assert {r["dtype"] for r in data["results"]} == {"float32"}
    assert f"wrote {out_json}" in captured.err and f"wrote {out_csv}" in captured.err


def test_cuda_paths_skip_with_a_reason():
    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if cuda:
        pytest.skip("this machine has CUDA: nothing is skipped")
    impls = bench.available_impls("cuda")
    assert {n for n, _ in impls} == set(bench.CUDA_IMPLS)
    assert all(reason for _, reason in impls)


@pytest.mark.parametrize("name", ["bench-h100.json", "bench-cpu.json"])
def test_committed_figures_are_complete(name):
    """The chapter plots these files; they must hold every implementation and
    shape, the environment, and results that agree with PyTorch."""
    data = json.loads((DATA / name).read_text())
    meta, rows = data["meta"], data["results"]
    for key in ("device_name", "date", "torch", "numpy", "copy_GBps"):
        assert meta[key]
    impls = bench.CUDA_IMPLS if meta["device"] == "cuda" else bench.CPU_IMPLS
    owed = {"bnkit-triton-fused"}  # registered after the committed H100 run: its figures are owed (issue 10)
    assert {r["impl"] for r in rows} == set(impls) - owed
    if meta["device"] == "cuda":
        assert "H100" in meta["device_name"]
        assert {r["dtype"] for r in rows} == {"float32", "float16", "bfloat16"}
        assert {(r["layout"], r["shape"]) for r in rows} == {
            (layout, "x".join(map(str, s))) for layout, s in bench.FULL_SHAPES}
    for r in rows:
        assert r["median_ms"] > 0
        tol = 1e-4 if r["dtype"] in ("float32", "float64") else 2e-2
        assert r["rel_err_vs_native"] is not None and r["rel_err_vs_native"] < tol, r
    if meta["device"] == "cpu":  # what chapter 9 reads: numpy in both kinds of process, both dtypes
        assert meta["processes"] == [bench.NUMPY_ONLY, bench.TORCH_IMPORTED]
        for process in meta["processes"]:
            for dtype in ("float32", "float64"):
                fast_rows = [r for r in rows if r["impl"] == "fast-numpy" and r["process"] == process
                             and r["dtype"] == dtype]
                assert fast_rows and all(r["vs_staged"] > 0 for r in fast_rows), (process, dtype)


@pytest.mark.parametrize("kind", ["numpy-only", "torch-imported"])
def test_the_fresh_processes_import_torch_or_not_as_named(kind):
    """The children the benchmark starts compute exactly what this process
    does; measure_in_fresh_process raises unless the child imported torch
    exactly when its kind says so."""
    if kind == bench.TORCH_IMPORTED:
        pytest.importorskip("torch")
    got = bench.measure_in_fresh_process([("nd", (64, 8), "float64", "fast-numpy")], quick=True, repeat=2,
                                         process=kind)
    (key, res), = got.items()
    assert key == ("nd", "64x8", "float64", "fast-numpy")
    assert [r["process"] for r in res["rows"]] == [kind] * 2
    fwd, bwd = bench.numpy_impl(bench.fast, bench.numpy_case("nd", (64, 8), dtype="float64"))
    from bnkit.bench.numpy_process import digest
    assert res["digests"] == [digest(fwd()), digest(bwd())]


def test_side_by_side_timing_takes_turns_and_divides_round_by_round():
    """The numpy implementations are timed in turns (a slow spell of a shared
    machine falls on both), and vs_staged is the median of per-round ratios."""
    from bnkit.bench.timing import cpu_times_side_by_side, paired_ratio

    calls = []
    out = cpu_times_side_by_side([lambda: calls.append("a"), lambda: calls.append("b")], repeat=4, min_time=0.0,
                                 block=0.0)
    # each block: one untimed call (it pays for the other's heap), then the timed ones
    assert calls == ["a", "a", "b", "b", "b", "b", "a", "a"] * 2
    assert [len(t["rounds"]) for t in out] == [4, 4] and all(len(t["cpu"]) == len(t["wall"]) == 4 for t in out)
    # a spell that slows both sides of round 2 fourfold leaves the ratio at 2
    assert paired_ratio([2.0, 2.0, 8.0], [1.0, 1.0, 4.0]) == 2.0
    assert paired_ratio([4.0, 9.0, 3.0], [1.0, 3.0, 3.0]) == 3.0  # the median, not a mean
    with pytest.raises(ValueError):
        paired_ratio([1.0, 2.0], [1.0])


def test_the_median_process_is_kept_and_the_others_shown():
    """Each kind of fresh process runs several times; every row is the median
    process's own row, with each process's figure beside it."""
    from bnkit.bench.driver import median_process

    def run(staged_ms, fast_ms):
        row = dict(median_ms=fast_ms, vs_staged=staged_ms / fast_ms)
        return {("nd", "8x8", "float64", "staged-numpy"): dict(rows=[dict(median_ms=staged_ms, vs_staged=1.0)],
                                                                digests=["s"]),
                ("nd", "8x8", "float64", "fast-numpy"): dict(rows=[row], digests=["f"])}

    merged = median_process([run(12.0, 3.0), run(12.0, 12.0), run(10.0, 2.0)])  # ratios 4, 1 (an odd process), 5
    fast_row, = merged[("nd", "8x8", "float64", "fast-numpy")]["rows"]
    assert fast_row["vs_staged"] == 4.0 and fast_row["median_ms"] == 3.0
    assert fast_row["vs_staged_all"] == [4.0, 1.0, 5.0]
    staged_row, = merged[("nd", "8x8", "float64", "staged-numpy")]["rows"]
    assert staged_row["median_ms"] == 12.0 and staged_row["median_ms_all"] == [12.0, 12.0, 10.0]
    bad = run(12.0, 3.0)
    bad[("nd", "8x8", "float64", "fast-numpy")]["digests"] = ["other"]
    with pytest.raises(RuntimeError, match="different outputs"):
        median_process([run(12.0, 3.0), bad])


def test_fast_keeps_its_vectors_half_a_page_from_the_big_arrays():
    """bnkit.fast copies the per-channel vectors it broadcasts so that their
    address is 2 KiB from the x-sized array's modulo 4 KiB (4K aliasing,
    chapter 9); the copy holds the same values."""
    from bnkit.fast import _apart

    big = np.zeros((256, 64))
    for dtype in (np.float32, np.float64):
        v = np.arange(64, dtype=dtype).reshape(1, 64)
        w = _apart(v, big)
        assert w.dtype == v.dtype and w.shape == v.shape and np.array_equal(w, v)
        assert (w.ctypes.data - big.ctypes.data) % 4096 == 2048
    assert _apart(big, big) is big  # not a small vector: left where it is


def test_registry_names_every_implementation():
    """CPU_IMPLS and CUDA_IMPLS come from the one table; every entry builds."""
    assert bench.CPU_IMPLS == ["staged-numpy", "fast-numpy", "torch-native", "bnkit-torch"]
    assert bench.CUDA_IMPLS == ["torch-cudnn", "torch-native", "torch-compile", "bnkit-torch", "bnkit-triton",
                                "bnkit-triton-fused"]
    assert set(bench.IMPLS) == set(bench.CPU_IMPLS) | set(bench.CUDA_IMPLS)
    with pytest.raises(ValueError, match="unknown implementation 'nope'"):
        bench.torch_impl("nope", None)


def test_sweep_variants_are_explicit_tunings():
    """The sweep changes one knob at a time in a Tuning value it passes to the
    kernels; the module's own knobs stay as they were."""
    pytest.importorskip("torch")
    tk = pytest.importorskip("bnkit.triton_kernels", reason="triton is not installed")
    base = tk.tuning_defaults()
    got = bench.variants(base, {"reduce_tile": [2048], "max_run": [256, 4096]})
    assert [label for label, _ in got] == ["base", "reduce_tile=2048", "max_run=256", "max_run=4096"]
    assert got[0][1] == base and got[1][1].reduce_tile == 2048 and got[1][1].max_run == base.max_run
    assert got[3][1].max_run == 4096 and got[3][1].reduce_tile == base.reduce_tile
    assert tk.tuning_defaults() == base and tk.REDUCE_TILE == base.reduce_tile
    with pytest.raises(ValueError, match="unknown tuning knob 'REDUCE_TILE'"):
        bench.variants(base, {"REDUCE_TILE": [1]})
