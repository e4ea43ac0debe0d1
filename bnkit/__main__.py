"""Command line: `python -m bnkit bench [--quick] [--json PATH] [--csv PATH]`."""
import argparse
import sys


def main(argv=None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(prog="bnkit", description="bnkit command line")
    parser.add_argument("--version", action="version", version=f"bnkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="time batch norm forward and backward (training mode)")
    b.add_argument("--quick", action="store_true", help="small shapes, few repeats (a short CPU run)")
    b.add_argument("--json", metavar="PATH", help="write the figures and the environment as JSON")
    b.add_argument("--csv", metavar="PATH", help="write the figures as CSV")
    b.add_argument("--device", choices=["auto", "cpu", "cuda", "all"], default="auto",
                   help="cpu, cuda, all (both, one after the other), or auto (default): "
                        "all where CUDA is available, else cpu")
    b.add_argument("--impl", action="append", help="only this implementation (repeatable)")
    b.add_argument("--dtype", action="append", choices=["float32", "float64", "float16", "bfloat16"],
                   help="only this dtype (repeatable; float64 on the CPU only, float16/bfloat16 on CUDA only)")
    b.add_argument("--layout", action="append", choices=["nd", "nchw", "nhwc"],
                   help="only this layout (repeatable)")
    b.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile)")
    b.add_argument("--repeat", type=int, help="timed runs per measurement on the CPU (then no minimum time)")
    b.add_argument("--processes", type=int, default=3, metavar="N",
                   help="fresh processes of each kind (no torch, torch imported) timing the numpy code on "
                        "the CPU; the median process's figures are kept (default 3)")
    b.add_argument("--show", action="append", metavar="IMPL",
                   help="print only these implementations in the final table (all are measured)")
    b.add_argument("--full-shapes", action="store_true", help="with --quick: quick timing, full shapes")
    b.add_argument("--sweep", action="store_true",
                   help="instead: vary the Triton kernels' tuning knobs on a few shapes (CUDA)")
    args = parser.parse_args(argv)

    from . import bench

    if args.sweep:
        bench.sweep_triton(args.quick)
        return 0

    device = args.device
    if device == "auto":
        device = "all" if bench.available_impls("cuda")[0][1] is None else "cpu"
    devices = ["cpu", "cuda"] if device == "all" else [device]
    meta, rows = {}, []
    for device in devices:
        reason = bench.available_impls(device)[0][1]
        if device == "cuda" and reason:
            print(f"no CUDA run: {reason}", file=sys.stderr)
            continue
        shapes = bench.QUICK_SHAPES if args.quick and not args.full_shapes else bench.FULL_SHAPES
        if args.layout:
            shapes = [s for s in shapes if s[0] in args.layout]
        allowed = ("float32", "float64") if device == "cpu" else ("float32", "float16", "bfloat16")
        dtypes = [d for d in args.dtype if d in allowed] if args.dtype else None
        def checkpoint(m, r, done=rows):  # partial figures survive an interrupted run
            if args.json:
                bench.write_json(args.json, m, done + r)
            if args.csv:
                bench.write_csv(args.csv, m, done + r)

        m, r = bench.run(device, quick=args.quick, shapes=shapes, dtypes=dtypes or None,
                         impls=args.impl, compile_=not args.no_compile, repeat=args.repeat,
                         checkpoint=checkpoint, fresh_processes=args.processes)
        meta[device], rows = m, rows + r
    if not rows:
        print("nothing was measured", file=sys.stderr)
        return 1
    meta = meta[devices[-1]] if len(meta) == 1 else dict(runs=meta)
    print(bench.table([r for r in rows if not args.show or r["impl"] in args.show]))
    summary = bench.fast_vs_staged(rows)
    if summary:
        print(summary, file=sys.stderr)
    if args.json:
        bench.write_json(args.json, meta, rows)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.csv:
        bench.write_csv(args.csv, meta.get("runs", {}).get("cuda", meta) if "runs" in meta else meta, rows)
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
