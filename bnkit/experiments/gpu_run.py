"""One command for a machine with a GPU: the full benchmark, the training step,
and the table against PyTorch's best path.

    python -m bnkit.experiments.gpu_run                 # everything, into book/data/
    python -m bnkit.experiments.gpu_run --only bench --layout nd    # one part (a short device slot)
    python -m bnkit.experiments.gpu_run --summarize book/data/bench-h100.json   # no GPU needed

Writes, for a GPU named e.g. "NVIDIA H200" (slug ``h200``):

- ``book/data/bench-h200.json`` / ``.csv``: ``python -m bnkit bench --device
  cuda`` (every implementation, the 11 shapes x 3 dtypes x 2 passes; the
  device name, versions and date are in the JSON's meta and the CSV's columns);
- ``book/data/train-step-h200.json``: `bnkit.experiments.train_step`;
- with ``--only tune``, ``book/data/triton-configs-h200.json`` and the best
  `bnkit.triton_fused.CONFIGS` table printed, to paste, commit and then bench;
- ``book/data/bench-h200-vs-best.md``: the 66 cases, bnkit's Triton time
  against the best of torch's paths (cuDNN, ATen native, torch.compile), and
  the issue's goals (>= 1.0x on every case; at tensors >= 100 MB, fp16/bf16 >=
  0.85 and fp32 >= 0.90 of the copy bandwidth over the bytes moved), each met
  or not with its worst case.

Each part writes as it goes (the benchmark checkpoints after every shape),
so a part cut short by a time limit still leaves its figures. `--layout`
(repeatable) runs one part of the benchmark into
``bench-<gpu>-part-<layouts>.json/csv``; a later ``--only summary`` merges the
parts into ``bench-<gpu>.json/csv``. With a 10-minute limit per command:

    python -m bnkit.experiments.gpu_run --only bench --layout nd
    python -m bnkit.experiments.gpu_run --only bench --layout nchw
    python -m bnkit.experiments.gpu_run --only bench --layout nhwc
    python -m bnkit.experiments.gpu_run --only train --only summary
"""
import argparse
import json
import os
import re
import sys
from pathlib import Path

TORCH_PATHS = ("torch-cudnn", "torch-native", "torch-compile")
TRITON_IMPLS = ("bnkit-triton-fused", "bnkit-triton")  # the first one present is summarised
BANDWIDTH_GOALS = {"float32": 0.90, "float16": 0.85, "bfloat16": 0.85}
LARGE_BYTES = 100e6  # the bandwidth goals apply to tensors at least this large


def slug(device_name):
    """'NVIDIA H100 80GB HBM3' -> 'h100', 'NVIDIA A100-SXM4-80GB' -> 'a100', else a safe lowercase name."""
    m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", device_name.upper())
    if m:
        return m.group(1).lower()
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "gpu"


def load_rows(paths):
    """Rows and meta of one or more bench JSON files (CUDA rows only)."""
    rows, meta = [], {}
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        m = d.get("meta", {})
        meta = m.get("runs", {}).get("cuda", m) if "runs" in m else m
        rows += [r for r in d["results"] if r.get("device") == "cuda"]
    if not rows:
        raise ValueError(f"no CUDA rows in {', '.join(map(str, paths))}: nothing to summarise")
    return rows, meta


def versus_best(rows, triton_impl=None):
    """(triton_impl, cases): for every (layout, shape, dtype, pass) with the
    Triton implementation and at least one torch path, a dict with the best
    torch path, both times, ratio = best torch time / Triton time (>= 1: as
    fast or faster) and the Triton row's fraction of the copy bandwidth."""
    impls = {r["impl"] for r in rows}
    triton_impl = triton_impl or next((i for i in TRITON_IMPLS if i in impls), None)
    if triton_impl not in impls:
        raise ValueError(f"no rows of {triton_impl or ' or '.join(TRITON_IMPLS)} in the figures")
    by_case = {}
    for r in rows:
        by_case.setdefault((r["layout"], r["shape"], r["dtype"], r["pass"]), {})[r["impl"]] = r
    cases = []
    for key, got in by_case.items():
        torch_rows = [got[i] for i in TORCH_PATHS if i in got]
        if triton_impl not in got or not torch_rows:
            continue
        best = min(torch_rows, key=lambda r: r["median_ms"])
        t = got[triton_impl]
        cases.append(dict(layout=key[0], shape=key[1], dtype=key[2], pass_=key[3], best=best["impl"],
                          best_ms=best["median_ms"], triton_ms=t["median_ms"],
                          ratio=best["median_ms"] / t["median_ms"], frac_copy=t.get("frac_copy"),
                          tensor_bytes=t["elements"] * t["itemsize"]))
    return triton_impl, cases


def goals(cases):
    """The issue's goals: dict(name -> dict(met, worst, detail))."""
    out = {}
    worst = min(cases, key=lambda c: c["ratio"])
    wins = sum(c["ratio"] >= 1.0 for c in cases)
    out["every case >= 1.0x the best torch path"] = dict(
        met=wins == len(cases), detail=f"{wins} of {len(cases)} cases",
        worst=f"{_name(worst)}: {worst['ratio']:.3f}x ({worst['best']})")
    for dtypes, goal in ((("float16", "bfloat16"), 0.85), (("float32",), 0.90)):
        large = [c for c in cases if c["dtype"] in dtypes and c["tensor_bytes"] >= LARGE_BYTES
                 and c["frac_copy"] is not None]
        name = f"{'/'.join(dtypes)} >= {goal:.2f} of the copy bandwidth at >= 100 MB"
        if not large:
            out[name] = dict(met=None, detail="no case that large", worst=None)
            continue
        low = min(large, key=lambda c: c["frac_copy"])
        out[name] = dict(met=all(c["frac_copy"] >= BANDWIDTH_GOALS[c["dtype"]] for c in large),
                         detail=f"{len(large)} cases", worst=f"{_name(low)}: {low['frac_copy']:.3f}")
    return out


def _name(c):
    return f"{c['layout']} {c['shape']} {c['dtype']} {c['pass_']}"


def markdown(triton_impl, cases, meta):
    lines = [f"# {triton_impl} against the best torch path on {meta.get('device_name', '?')}", "",
             f"torch {meta.get('torch')}, triton {meta.get('triton')}, cuDNN {meta.get('cudnn')}, "
             f"{meta.get('date')}; copy bandwidth {meta.get('copy_GBps', float('nan')):.0f} GB/s.", "",
             "## Goals", ""]
    for name, g in goals(cases).items():
        state = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
        lines.append(f"- {name}: **{state}** ({g['detail']}; worst {g['worst']})")
    lines += ["", f"## The {len(cases)} cases (ratio = best torch time / Triton time; < 1 is a loss)", "",
              "| layout | shape | dtype | pass | best torch | torch ms | triton ms | ratio | % copy |",
              "|---|---|---|---|---|---:|---:|---:|---:|"]
    for c in sorted(cases, key=lambda c: c["ratio"]):
        frac = f"{100 * c['frac_copy']:.0f}" if c["frac_copy"] is not None else "-"
        lines.append(f"| {c['layout']} | {c['shape']} | {c['dtype']} | {c['pass_']} | {c['best']} | "
                     f"{c['best_ms']:.4f} | {c['triton_ms']:.4f} | {c['ratio']:.3f} | {frac} |")
    return "\n".join(lines) + "\n"


def summarize(paths, out=None, triton_impl=None):
    rows, meta = load_rows(paths)
    impl, cases = versus_best(rows, triton_impl)
    text = markdown(impl, cases, meta)
    if out:
        Path(out).write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    return text


# ------------------------------------------------------------------ tuning

TUNE_KNOBS = {"tile_bytes": (8192, 16384, 32768), "num_warps": (2, 4, 8), "flat_bytes": (8192, 16384, 32768),
              "flat_warps": (4, 8), "row_bytes": (16, 32, 64), "max_bc": (32, 64, 128)}


def tune_cases(shapes=None, dtypes=("float32", "float16", "bfloat16")):
    """{CONFIGS key: [(layout, shape, dtype)]}: the benchmark's cases grouped by shape class."""
    import torch

    from .. import bench
    from .. import triton_fused as tf
    from .. import triton_kernels as tk

    groups = {}
    for layout, shape in shapes or bench.FULL_SHAPES:
        for dtype in dtypes:
            x = torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
            if layout == "nhwc":
                x = x.contiguous(memory_format=torch.channels_last)
            groups.setdefault(tf.shape_class(tk._view3d(x, 1)[1], x.element_size()), []).append((layout, shape, dtype))
    return groups


def _cuda_ms(fn, stream):
    import statistics

    from .. import bench

    graph = bench.graph_of(fn, stream)
    return statistics.median(bench.time_cuda(graph.replay if graph is not None else fn))


def class_time(key, cfg, cases, device="cuda", timer=None):
    """Summed forward + backward time (ms) of `cases` with CONFIGS[key] replaced by cfg."""
    import torch

    from .. import bench
    from .. import triton_fused as tf

    configs = {**tf.CONFIGS, key: cfg}
    stream = bench.new_side_stream() if device == "cuda" else None
    timer = timer or (lambda fn: _cuda_ms(fn, stream))
    total = 0.0
    for layout, shape, dtype in cases:
        case = bench.torch_case(layout, shape, getattr(torch, dtype), device)
        fwd, bwd = bench.torch_impl("bnkit-triton-fused", case, stream, configs=configs)
        total += timer(fwd) + timer(bwd)
    return total


def tune(groups=None, score=None, progress=True):
    """Coordinate descent over TUNE_KNOBS per shape class, from the committed
    CONFIGS: one knob at a time, a change kept when it is more than 1% faster.
    score(key, cfg, cases) -> ms (default `class_time` on CUDA). Returns
    dict(best={key: cfg}, trials=[...]): paste `best` into triton_fused.CONFIGS
    and commit it (nothing is tuned at run time)."""
    from .. import triton_fused as tf

    groups = groups or tune_cases()
    score = score or class_time
    best, trials = {}, []
    for key, cases in groups.items():
        cur = dict(tf.CONFIGS[key])
        cur_ms = score(key, cur, cases)
        trials.append(dict(key=list(key), config=dict(cur), ms=cur_ms))
        for knob, values in TUNE_KNOBS.items():
            if knob not in cur:
                continue
            for v in values:
                if v == cur[knob]:
                    continue
                cand = dict(cur, **{knob: v})
                try:
                    ms = score(key, cand, cases)
                except Exception as e:  # e.g. out of resources: that variant is out, the others go on
                    print(f"  {key} {knob}={v}: FAILED {type(e).__name__}: {e}", file=sys.stderr)
                    continue
                trials.append(dict(key=list(key), config=cand, ms=ms))
                if progress:
                    print(f"  {key} {knob}={v}: {ms:.4f} ms (best {cur_ms:.4f})", file=sys.stderr, flush=True)
                if ms < 0.99 * cur_ms:
                    cur, cur_ms = cand, ms
        best[key] = cur
    return dict(best=best, trials=trials)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bnkit.experiments.gpu_run", description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", default="book/data", help="where the figures go (default book/data)")
    p.add_argument("--only", choices=["bench", "train", "summary", "tune"], action="append",
                   help="run only this part (repeatable; default: bench, train, summary). 'tune' times "
                        "variants of triton_fused.CONFIGS and prints the best table, to commit before the bench")
    p.add_argument("--layout", action="append", choices=["nd", "nchw", "nhwc"],
                   help="benchmark only this layout (repeatable), e.g. to fit a time limit")
    p.add_argument("--quick", action="store_true", help="a trial run: the benchmark's and training step's quick modes")
    p.add_argument("--summarize", nargs="+", metavar="JSON", help="only summarise these bench JSON files (no GPU)")
    p.add_argument("--triton-impl", choices=TRITON_IMPLS, help="the implementation the summary compares")
    args = p.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize, triton_impl=args.triton_impl))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_run needs a CUDA GPU (torch.cuda.is_available() is False); "
              "use --summarize to tabulate existing figures", file=sys.stderr)
        return 2
    name = slug(torch.cuda.get_device_name())
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bench_json, bench_csv = out / f"bench-{name}.json", out / f"bench-{name}.csv"
    parts = args.only or ["bench", "train", "summary"]
    rc = 0
    if "tune" in parts:
        result = tune()
        with open(out / f"triton-configs-{name}.json", "w") as f:
            json.dump(dict(best=[dict(key=list(k), config=v) for k, v in result["best"].items()],
                           trials=result["trials"]), f, indent=1)
        print("CONFIGS = {\n" + "".join(f"    {k!r}: dict({', '.join(f'{a}={b!r}' for a, b in v.items())}),\n"
                                       for k, v in result["best"].items()) + "}")
    if "bench" in parts:
        from ..__main__ import main as bnkit_main

        target_json, target_csv = bench_json, bench_csv
        if args.layout:  # one part of the benchmark: its own files, merged by the summary
            part = "-".join(sorted(args.layout))
            target_json, target_csv = (out / f"bench-{name}-part-{part}.{ext}" for ext in ("json", "csv"))
        bench_args = ["bench", "--device", "cuda", "--json", str(target_json), "--csv", str(target_csv)]
        bench_args += ["--quick"] * args.quick + [a for layout in args.layout or [] for a in ("--layout", layout)]
        print(f"== benchmark -> {target_json}", file=sys.stderr, flush=True)
        rc |= bnkit_main(bench_args)
    if "train" in parts:
        from . import train_step

        ts_json = out / f"train-step-{name}.json"
        print(f"== training step -> {ts_json}", file=sys.stderr, flush=True)
        rc |= train_step.main(["--device", "cuda", "--json", str(ts_json)] + ["--quick"] * args.quick)
    if "summary" in parts:
        parts_json = sorted(out.glob(f"bench-{name}-part-*.json"))
        if parts_json and not args.layout:
            merge_parts(parts_json, bench_json, bench_csv)
        if bench_json.exists():
            print(summarize([bench_json], out / f"bench-{name}-vs-best.md", args.triton_impl))
        else:
            print(f"no {bench_json} to summarise: run the bench part first", file=sys.stderr)
            rc |= 1
    return rc


def merge_parts(paths, json_path, csv_path):
    """One bench JSON/CSV from the parts of a benchmark run by layout (the meta of the first)."""
    from .. import bench

    rows, meta = [], None
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        meta = meta or d["meta"]
        rows += d["results"]
    bench.write_json(str(json_path), meta, rows)
    bench.write_csv(str(csv_path), meta, rows)
    print(f"merged {len(paths)} parts into {json_path} and {csv_path}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
