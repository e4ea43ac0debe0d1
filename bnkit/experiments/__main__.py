"""Run a chapter's experiments by hand, with progress on stderr.

    python -m bnkit.experiments 1      # chapter 1: Fig. 1 miniature, learning-rate sweep
    python -m bnkit.experiments 2      # chapter 2: noisy BN, ICS measure, landscape probe
    python -m bnkit.experiments 8      # chapter 8: batch size, gamma/beta only, placement, eval(), folding
    python -m bnkit.experiments all

Budgets are the book's; each chapter takes about a minute on one core.
"""
import argparse

import numpy as np
from torch import nn

from . import critique, practice, shift


def chapter_1():
    r = shift.covariate_shift(steps=5000, lr=1.0, eval_every=100, progress=True)
    for name, h in r.items():
        print(f"fig 1 {name:5s}: final test accuracy {h['test_acc'][-1]:.3f}")
    s = shift.lr_sweep(lrs=(0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0), steps=2000, progress=True)
    for lr, p, b in zip(s["lrs"], s["plain"], s["bn"]):
        print(f"lr {lr:6g}: without BN {p:.3f}  with BN {b:.3f}")


def chapter_2():
    r = critique.noisy_bn(steps=3000, lr=1.0, progress=True)
    for name, h in r.items():
        print(f"noisy-BN experiment, {name:8s}: final test accuracy {h['test_acc'][-1]:.3f}")
    ics = critique.ics_deep_linear(progress=True)
    for name, v in ics.items():
        a = v["ics"][1:]
        print(f"ICS {name:5s}: mean ||G-G'|| {a[..., 0].mean():.3f}  mean cos {a[..., 2].mean():.3f}")
    for act, lr in ((nn.Sigmoid, 1.0), (nn.ReLU, 0.1)):
        land = critique.landscape(steps=2000, lr=lr, act=act, progress=True)
        for name, v in land.items():
            med = {q: float(np.median(v[q])) for q in ("loss_range", "grad_change", "beta")}
            print(f"landscape {act.__name__} {name:5s}: {med}")


def chapter_8():
    for arch, seeds in (("cnn", (0,)), ("mlp", (0, 1, 2))):
        r = practice.batch_size_sweep(arch, seeds=seeds, progress=True)
        for norm in ("bn", "gn"):
            print(f"{arch} {norm} accuracy by batch {r['batch_sizes']}: {np.round(r[norm].mean(0), 3)}")
    gb = practice.gamma_beta_only(progress=True)
    print(f"gamma/beta only {gb['bn_only']:.3f}, output only {gb['output_only']:.3f}, all {gb['all']:.3f}")
    pl = practice.placement(progress=True)
    print(f"BN before ReLU {pl['before']}, after {pl['after']}")
    fe = practice.forgot_eval(progress=True)
    print(f"forgot eval: {fe['train_mode_acc']} (eval mode {fe['eval_acc']:.3f})")
    print(f"folding: {practice.folding_check()}")
    print(f"variance shift: {practice.variance_shift()}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bnkit.experiments", description=__doc__.splitlines()[0])
    parser.add_argument("chapter", choices=["1", "2", "8", "all"])
    args = parser.parse_args(argv)
    runs = {"1": [chapter_1], "2": [chapter_2], "8": [chapter_8], "all": [chapter_1, chapter_2, chapter_8]}
    for run in runs[args.chapter]:
        run()


if __name__ == "__main__":
    main()
