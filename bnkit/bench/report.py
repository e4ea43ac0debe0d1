"""The figures as files and as a table: JSON (meta + results), CSV (one row
per result, the environment repeated on each) and a short text table.

The performance chapter reads the JSON's fields (`book/09_performance.md`):
keep COLUMNS and the meta keys when changing anything here.
"""
import csv
import json
from typing import Dict, List

COLUMNS = ["layout", "shape", "dtype", "impl", "pass", "device", "median_ms", "p20_ms", "p80_ms",
           "runs", "elements", "itemsize", "ideal_bytes", "moved_bytes", "GBps", "frac_copy",
           "ideal_frac_copy", "vs_native", "vs_cudnn", "rel_err_vs_native", "timing", "process", "vs_staged",
           "rounds", "wall_median_ms", "faults_per_call"]
META_COLUMNS = ["device_name", "date", "torch", "triton", "numpy", "copy_GBps"]
PROCESS_TAGS = {"numpy-only": "no-torch", "torch-imported": "+torch"}


def write_json(path: str, meta: Dict, rows: List[Dict]) -> None:
    with open(path, "w") as f:
        json.dump(dict(meta=meta, results=rows), f, indent=1)


def write_csv(path: str, meta: Dict, rows: List[Dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS + META_COLUMNS)
        for r in rows:
            w.writerow([r.get(c) for c in COLUMNS] + [meta.get(c) for c in META_COLUMNS])


def table(rows: List[Dict]) -> str:
    """A short text table: median time, fraction of copy bandwidth, ratio to native."""
    lines = [f"{'layout':5} {'shape':>16} {'dtype':8} {'impl':13} {'pass':4} {'process':8} {'ms':>9} "
             f"{'%copy':>6} {'xnative':>8} {'xcudnn':>7} {'xstaged':>7}"]
    for r in rows:
        vn = f"{r['vs_native']:.2f}" if r.get("vs_native") else "-"
        vc = f"{r['vs_cudnn']:.2f}" if r.get("vs_cudnn") else "-"
        vs = f"{r['vs_staged']:.2f}" if r.get("vs_staged") else "-"
        proc = PROCESS_TAGS.get(r.get("process"), "-")
        lines.append(f"{r['layout']:5} {r['shape']:>16} {r['dtype']:8} {r['impl']:13} {r['pass']:4} {proc:8} "
                     f"{r['median_ms']:9.3f} {100 * r['frac_copy']:5.0f}% {vn:>8} {vc:>7} {vs:>7}")
    return "\n".join(lines)


def fast_vs_staged(rows: List[Dict]) -> str:
    """One line per (process, dtype): the smallest fast/staged backward ratio
    over the inputs of a million elements or more, the figure chapter 9 quotes."""
    worst = {}
    for r in rows:
        if r["impl"] == "fast-numpy" and r["pass"] == "bwd" and r.get("vs_staged") and r["elements"] >= 2**20:
            key = (r.get("process"), r["dtype"])
            worst[key] = min(worst.get(key, (float("inf"), "")), (r["vs_staged"], r["shape"]))
    return "\n".join(f"fast/staged backward, {proc} process, {dt}: at least {v:.2f}x ({shape})"
                     for (proc, dt), (v, shape) in sorted(worst.items()))
