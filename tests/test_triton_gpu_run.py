"""The GPU run script's parts that need no GPU: the table against torch's best
path, checked on the committed H100 figures (issue 10's 52 of 66 and its 14
losses), the GPU's slug, and the refusal without CUDA."""
import os

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

CUDA = torch.cuda.is_available()  # without it, conftest.py made the tuner's kernels run in the interpreter

from bnkit.experiments import gpu_run  # noqa: E402

H100 = "book/data/bench-h100.json"
# issue 10's list of the cases where bnkit-triton lost to torch's best path on the H100
LOSSES = {
    ("nchw", "256x256x14x14", "float16", "fwd"), ("nchw", "256x256x14x14", "float32", "fwd"),
    ("nd", "1024x1024", "bfloat16", "fwd"), ("nd", "1024x1024", "float32", "fwd"),
    ("nd", "1024x1024", "bfloat16", "bwd"), ("nd", "1024x1024", "float16", "bwd"),
    ("nd", "1024x1024", "float32", "bwd"),
    ("nhwc", "256x64x56x56", "float16", "fwd"), ("nhwc", "256x64x56x56", "float16", "bwd"),
    ("nhwc", "256x64x56x56", "float32", "fwd"), ("nhwc", "256x64x56x56", "float32", "bwd"),
    ("nhwc", "256x256x14x14", "float32", "bwd"), ("nhwc", "128x3x224x224", "float32", "bwd"),
    ("nd", "65536x64", "bfloat16", "bwd"),
}


def test_versus_best_reproduces_the_h100_table():
    rows, meta = gpu_run.load_rows([H100])
    impl, cases = gpu_run.versus_best(rows)
    assert impl == "bnkit-triton" and len(cases) == 66  # 11 shapes x 3 dtypes x 2 passes
    assert {(c["layout"], c["shape"], c["dtype"], c["pass_"]) for c in cases if c["ratio"] < 1} == LOSSES
    worst = min(cases, key=lambda c: c["ratio"])
    assert worst["best"] == "torch-cudnn" and 0.5 < worst["ratio"] < 0.52  # the 0.51x
    g = gpu_run.goals(cases)
    assert g["every case >= 1.0x the best torch path"]["met"] is False
    assert g["every case >= 1.0x the best torch path"]["detail"] == "52 of 66 cases"
    assert g["float16/bfloat16 >= 0.85 of the copy bandwidth at >= 100 MB"]["met"] is False
    text = gpu_run.markdown(impl, cases, meta)
    assert "NVIDIA H100" in text and text.count("\n| ") == 67  # the header and the 66 cases


def test_summarize_refuses_figures_without_the_triton_rows(tmp_path):
    only_cpu = tmp_path / "cpu.json"
    only_cpu.write_text('{"meta": {}, "results": [{"device": "cpu", "impl": "fast-numpy"}]}')
    with pytest.raises(ValueError, match="no CUDA rows"):
        gpu_run.summarize([only_cpu])
    with pytest.raises(ValueError, match="no rows of bnkit-triton-fused"):
        gpu_run.summarize([H100], triton_impl="bnkit-triton-fused")


def test_slug():
    assert gpu_run.slug("NVIDIA H100 80GB HBM3") == "h100"
    assert gpu_run.slug("NVIDIA H200") == "h200"
    assert gpu_run.slug("NVIDIA A100-SXM4-80GB") == "a100"
    assert gpu_run.slug("NVIDIA L40S") == "l40s"
    assert gpu_run.slug("NVIDIA GeForce RTX 4090") == "nvidia-geforce-rtx-4090"  # no model code: the whole name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_says_so(capsys):
    assert gpu_run.main(["--only", "bench"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_tune_descends_to_the_fastest_variant():
    def score(key, cfg, cases):
        if cfg["max_bc"] == 128:
            raise RuntimeError("out of resources")  # a failing variant is left out, the rest go on
        return cfg["tile_bytes"] / 1e4 + (0.0 if cfg["num_warps"] == 8 else 1.0)

    result = gpu_run.tune({("rows", 4): ["a case"]}, score=score, progress=False)
    best = result["best"][("rows", 4)]
    assert best["tile_bytes"] == 8192 and best["num_warps"] == 8
    assert best["row_bytes"] == 32 and best["max_bc"] == 64  # no better variant: the committed value stays
    assert min(t["ms"] for t in result["trials"]) == score(None, best, None)


def test_class_time_runs_the_kernels_with_the_variant():
    pytest.importorskip("triton", reason="triton is not installed")
    if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("triton was imported before interpreter mode could be set, and there is no GPU")
    device = "cuda" if CUDA else "cpu"
    groups = gpu_run.tune_cases([("nd", (8, 4)), ("nchw", (4, 3, 2, 2)), ("nhwc", (4, 3, 2, 2))], ("float32",))
    assert groups == {("rows", 4): [("nd", (8, 4), "float32"), ("nhwc", (4, 3, 2, 2), "float32")],
                      ("runs", 4): [("nchw", (4, 3, 2, 2), "float32")]}
    from bnkit import triton_fused as tf

    calls = []

    def timer(fn):
        fn()
        calls.append(fn)
        return 1.0

    cfg = dict(tf.CONFIGS[("rows", 4)], tile_bytes=64)
    assert gpu_run.class_time(("rows", 4), cfg, groups[("rows", 4)], device, timer) == 4.0  # 2 cases x 2 passes
    assert len(calls) == 4
    broken = {k: v for k, v in cfg.items() if k != "tile_bytes"}
    with pytest.raises(KeyError, match="tile_bytes"):  # the variant, not the committed table, is what runs
        gpu_run.class_time(("rows", 4), broken, groups[("rows", 4)], device, timer)


def test_benchmark_parts_merge_into_one_file(tmp_path):
    import json

    data = json.load(open(H100))
    for layouts in (("nd",), ("nchw", "nhwc")):
        part = dict(meta=data["meta"], results=[r for r in data["results"] if r["layout"] in layouts])
        (tmp_path / f"bench-h100-part-{'-'.join(layouts)}.json").write_text(json.dumps(part))
    merged = tmp_path / "bench-h100.json"
    gpu_run.merge_parts(sorted(tmp_path.glob("bench-h100-part-*.json")), merged, tmp_path / "bench-h100.csv")
    rows, meta = gpu_run.load_rows([merged])
    assert len(rows) == len(data["results"]) and meta["device_name"] == data["meta"]["device_name"]
    assert len(gpu_run.versus_best(rows)[1]) == 66
    assert (tmp_path / "bench-h100.csv").read_text().count("\n") == len(rows) + 1  # a header and every row
