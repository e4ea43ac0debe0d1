"""A real training step: bnkit's Triton batch norm against torch's, in a small ResNet.

    python -m bnkit.experiments.train_step --json train-step.json            # on a GPU
    python -m bnkit.experiments.train_step --quick --json /tmp/ts.json       # tiny, CPU (Triton interpreter)

The network is a ResNet-style stack of conv-BN-ReLU basic blocks (channels
64, 128, 256 by default; batch 128; 32x32 images), trained with SGD on a
fixed synthetic task (each class an image template plus noise; seeded).
For each layout (NCHW, channels-last) and precision (float32, bfloat16
autocast) the same initial weights and batches are trained by:

- ``torch``: torch.nn.BatchNorm2d, eager (cuDNN on where torch uses it);
- ``torch-compile``: the same network under torch.compile;
- ``bnkit-triton``: bnkit.nn.BatchNorm2d (`bnkit.triton_fused`), eager.

Reported per run: the median train-step time (forward, backward, SGD
update; the device synchronised after each step) with its 20th/80th
percentiles, the first step's time (compilation), the loss of every step,
and the final loss (mean of the last tenth of the steps). Each final loss is
required to equal torch eager's in the same layout and precision within a
tolerance (relative plus absolute: float32 5% + 0.02, bfloat16 10% + 0.05):
the JSON says which pass, and the exit status is 1 if any does not.

Timing is figures for a file, never a test: tests run `--quick` only to
check that the script runs end to end and that the losses agree.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

IMPLS = ("torch", "torch-compile", "bnkit-triton")
LAYOUTS = ("nchw", "channels_last")
PRECISIONS = ("float32", "bfloat16")
TOLERANCE = {"float32": (0.05, 0.02), "bfloat16": (0.10, 0.05)}  # (relative, absolute) on the final loss
FULL = dict(channels=(64, 128, 256), batch=128, image=32, steps=300, classes=10, lr=0.05, batches=16)
QUICK = dict(channels=(4, 8), batch=8, image=8, steps=10, classes=4, lr=0.05, batches=4)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def make_model(channels, classes, bn):
    """conv-BN-ReLU stem, one basic block per stage (stride 2 and a 1x1
    projection between stages), global average pooling, a linear head.
    `bn` is the BatchNorm2d class (torch's or bnkit's)."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = bn(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = bn(cout)
            self.skip = None
            if stride != 1 or cin != cout:
                self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout))

        def forward(self, x):
            out = self.bn1(self.conv1(x)).relu()
            out = self.bn2(self.conv2(out))
            return (out + (x if self.skip is None else self.skip(x))).relu()

    layers = [nn.Conv2d(3, channels[0], 3, 1, 1, bias=False), bn(channels[0]), nn.ReLU()]
    for i, c in enumerate(channels):
        layers.append(Block(channels[max(i - 1, 0)], c, 1 if i == 0 else 2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], classes)]
    return nn.Sequential(*layers)


def make_data(cfg, device, seed=0):
    """`batches` fixed (x, y) batches: class templates plus noise, seeded."""
    import torch

    g = torch.Generator().manual_seed(seed)
    size = (3, cfg["image"], cfg["image"])
    templates = torch.randn((cfg["classes"], *size), generator=g)
    data = []
    for _ in range(cfg["batches"]):
        y = torch.randint(0, cfg["classes"], (cfg["batch"],), generator=g)
        x = templates[y] + torch.randn((cfg["batch"], *size), generator=g)
        data.append((x.to(device), y.to(device)))
    return data


def train(impl, layout, precision, cfg, device, init_state, data, progress=True):
    """Train one variant from `init_state`; return its figures (a dict)."""
    import contextlib

    import torch
    from torch import nn

    from .. import nn as bnkit_nn

    def triton_bn(c):
        return bnkit_nn.BatchNorm2d(c, backend="triton")

    bn = triton_bn if impl == "bnkit-triton" else nn.BatchNorm2d
    model = make_model(cfg["channels"], cfg["classes"], bn).to(device)
    model.load_state_dict(init_state)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    step_model = torch.compile(model) if impl == "torch-compile" else model
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    autocast = (lambda: torch.autocast(device.split(":")[0], dtype=torch.bfloat16)) if precision == "bfloat16" \
        else contextlib.nullcontext
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    losses, times = [], []
    for i in range(cfg["steps"]):
        x, y = data[i % len(data)]
        x = x.contiguous(memory_format=fmt)
        sync()
        t0 = time.perf_counter()
        with autocast():
            loss = loss_fn(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
        losses.append(float(loss.detach()))
        if progress and (i + 1) % max(1, cfg["steps"] // 5) == 0:
            log(f"  {impl:13} {layout:13} {precision:8} step {i + 1}/{cfg['steps']}: loss {losses[-1]:.4f}, "
                f"{statistics.median(times[1:] or times):.2f} ms/step")
    timed = times[min(5, len(times) - 1):]  # the first steps compile, warm caches and autotune
    q = statistics.quantiles(timed, n=10) if len(timed) > 1 else [timed[0]] * 9
    tail = losses[-max(1, len(losses) // 10):]
    return dict(impl=impl, layout=layout, precision=precision, steps=cfg["steps"],
                step_ms_median=statistics.median(timed), step_ms_p20=q[1], step_ms_p80=q[7],
                first_step_ms=times[0], final_loss=sum(tail) / len(tail), losses=losses)


def loss_match(final_loss, reference, precision):
    """Whether a final loss equals the reference (torch eager's) within TOLERANCE."""
    rel_tol, abs_tol = TOLERANCE[precision]
    return abs(final_loss - reference) <= rel_tol * abs(reference) + abs_tol


def unavailable(impl, device):
    """Why `impl` cannot run on `device`, or None."""
    if impl == "bnkit-triton":
        import torch

        from ..nn import triton_unavailable

        return triton_unavailable(torch.empty(1, device="meta" if device == "cpu" else device))
    return None


def environment(device):
    import torch

    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                python=platform.python_version(), torch=torch.__version__, device=device)
    if device.startswith("cuda"):
        meta.update(device_name=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), cudnn_enabled=torch.backends.cudnn.enabled)
    else:
        meta.update(device_name=platform.processor() or platform.machine(),
                    triton_interpreter=os.environ.get("TRITON_INTERPRET") == "1")
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    return meta


def run(device="cpu", quick=False, impls=IMPLS, layouts=LAYOUTS, precisions=PRECISIONS, steps=None,
        progress=True, checkpoint=None, config=None):
    """Train every variant; return dict(meta, config, results, all_losses_match).
    checkpoint(report), if given, is called after every variant; config
    overrides entries of QUICK or FULL (channels, batch, image, ...)."""
    import torch

    cfg = dict(QUICK if quick else FULL, **(config or {}))
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        cfg["steps"] = steps
    for name, given, known in (("impl", impls, IMPLS), ("layout", layouts, LAYOUTS),
                               ("precision", precisions, PRECISIONS)):
        bad = [g for g in given if g not in known]
        if bad:
            raise ValueError(f"unknown {name} {bad[0]!r}: choose from {', '.join(known)}")
    todo = []
    skipped = {}
    for impl in impls:
        reason = unavailable(impl, device)
        if reason:
            log(f"skipping {impl}: {reason}")
            skipped[impl] = reason
        else:
            todo.append(impl)
    torch.manual_seed(0)
    init_state = make_model(cfg["channels"], cfg["classes"], torch.nn.BatchNorm2d).state_dict()
    data = make_data(cfg, device)
    report = dict(meta=environment(device), config=dict(cfg, channels=list(cfg["channels"]), quick=quick),
                  skipped=skipped, results=[], all_losses_match=None)
    total = len(todo) * len(layouts) * len(precisions)
    k = 0
    for layout in layouts:
        for precision in precisions:
            ref = None
            for impl in todo:
                k += 1
                log(f"[{k}/{total}] {impl} {layout} {precision}: {cfg['steps']} steps ...")
                r = train(impl, layout, precision, cfg, device, init_state, data, progress)
                if impl == "torch":
                    ref = r["final_loss"]
                r["reference_final_loss"] = ref
                r["tolerance"] = dict(zip(("relative", "absolute"), TOLERANCE[precision]))
                r["loss_match"] = None if ref is None else loss_match(r["final_loss"], ref, precision)
                report["results"].append(r)
                if checkpoint:
                    checkpoint(report)
    checks = [r["loss_match"] for r in report["results"] if r["loss_match"] is not None]
    report["all_losses_match"] = all(checks) if checks else None
    return report


def table(report):
    lines = [f"{'impl':13} {'layout':13} {'precision':9} {'ms/step':>9} {'vs torch':>8} {'final loss':>10} match"]
    base = {(r["layout"], r["precision"]): r["step_ms_median"] for r in report["results"] if r["impl"] == "torch"}
    for r in report["results"]:
        ref = base.get((r["layout"], r["precision"]))
        speed = f"{ref / r['step_ms_median']:.2f}x" if ref else "-"
        lines.append(f"{r['impl']:13} {r['layout']:13} {r['precision']:9} {r['step_ms_median']:9.2f} {speed:>8} "
                     f"{r['final_loss']:10.4f} {r['loss_match']}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bnkit.experiments.train_step", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny network, few steps (a CPU smoke run)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--json", metavar="PATH", help="write the figures, losses and environment as JSON")
    p.add_argument("--steps", type=int, help="training steps per variant (default 300, --quick 10)")
    p.add_argument("--impl", action="append", choices=IMPLS, help="only this implementation (repeatable)")
    p.add_argument("--layout", action="append", choices=LAYOUTS, help="only this layout (repeatable)")
    p.add_argument("--precision", action="append", choices=PRECISIONS, help="only this precision (repeatable)")
    p.add_argument("--no-compile", action="store_true", help="skip torch-compile (the default on the CPU)")
    args = p.parse_args(argv)
    device = args.device
    if device in ("auto", "cpu") and "triton" not in sys.modules:
        import torch

        if device == "cpu" or not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")  # the kernels on the CPU, before triton is imported
            device = "cpu"
    if device == "auto":
        device = "cuda"
    impls = args.impl or [i for i in IMPLS if i != "torch-compile" or (device == "cuda" and not args.no_compile)]
    if "torch" not in impls:
        impls = ["torch"] + impls  # the reference every loss is compared with

    def checkpoint(report):  # partial figures survive an interrupted run
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)

    report = run(device, args.quick, impls, args.layout or LAYOUTS, args.precision or PRECISIONS, args.steps,
                 checkpoint=checkpoint)
    checkpoint(report)
    print(table(report))
    if args.json:
        log(f"wrote {args.json}")
    if report["all_losses_match"] is False:
        log("the final losses differ beyond the tolerance: see loss_match in the JSON")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
