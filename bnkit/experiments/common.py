"""What every experiment shares: the data, seeding, and the SGD loop."""
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class Data:
    """Digits as tensors: x (N, 64) in [0, 1], or (N, 1, 8, 8) when images=True; y (N,) labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def n_classes(self):
        return 10


# One figure style for the whole book. A figure is drawn FIGURE_WIDTH inches
# wide at DPI, i.e. as wide in pixels as the book's text column (about 690 px
# at a 1280 px window), so it is shown unscaled and 11 pt text in it (17 px)
# is no smaller than the body text (16 px). Multi-panel figures use the same
# width and stack panels rather than shrink them.
FIGURE_WIDTH = 6.3
DPI = 110
BOOK_STYLE = {
    "figure.dpi": DPI,
    "figure.figsize": (FIGURE_WIDTH, 3.6),
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 11,
    "figure.titlesize": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.constrained_layout.use": True,
}


def book_style():
    """Apply the book's matplotlib style (every chapter calls this once)."""
    import matplotlib.pyplot as plt

    plt.rcParams.update(BOOK_STYLE)


def setup(seed):
    """Seed torch and numpy and run single-threaded: tiny networks train
    several times faster on one thread, and results do not depend on how
    many cores the machine has."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    np.random.seed(seed)


def load_digits(images=False, dtype=torch.float32, test_fraction=0.25, seed=0):
    """scikit-learn's 8x8 digits (ships with scikit-learn, no download),
    split stratified into 1,347 training and 450 test images.
    Pixels are scaled from 0..16 to [0, 1]."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x / 16.0, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    shape = (-1, 1, 8, 8) if images else (-1, 64)

    def as_x(a):
        return torch.as_tensor(a, dtype=dtype).reshape(shape)

    def as_y(a):
        return torch.as_tensor(a, dtype=torch.long)

    return Data(as_x(x_tr), as_y(y_tr), as_x(x_te), as_y(y_te))


def batches(n, batch_size, seed):
    """Endless minibatch indices: a fresh shuffle every epoch, and the
    incomplete last batch of each epoch dropped (BN needs full batches)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i:i + batch_size]


@torch.no_grad()
def accuracy(model, x, y, batch_size=None):
    """Fraction classified correctly, in eval mode unless the caller put the
    model in train mode on purpose (then batch statistics are used, in
    chunks of `batch_size`)."""
    if batch_size is None:
        pred = model(x).argmax(1)
    else:
        pred = torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    return (pred == y).float().mean().item()


def evaluate(model, data):
    """Test accuracy in eval mode, restoring the mode the model was in."""
    was_training = model.training
    model.eval()
    acc = accuracy(model, data.x_test, data.y_test)
    model.train(was_training)
    return acc


class Progress:
    """One line per report on stderr when enabled, silent otherwise."""

    def __init__(self, enabled, label):
        self.enabled, self.label, self.t0 = enabled, label, time.perf_counter()

    def __call__(self, msg):
        if self.enabled:
            dt = time.perf_counter() - self.t0
            print(f"[{self.label} {dt:6.1f}s] {msg}", file=sys.stderr, flush=True)


def train(model, data, *, steps, lr, batch_size=60, eval_every=100, seed=0,
          params=None, momentum=0.0, on_eval=None, progress=False, label="train"):
    """Minibatch SGD on the cross-entropy; the loop every chapter shows.

    - params: the tensors to train (default: all of the model's).
    - on_eval(model): called at every evaluation; its return value is kept.
    Returns a dict of lists: 'step', 'test_acc', 'train_loss' (mean since the
    last evaluation), 'extra' (on_eval's returns); and 'diverged' (True if
    the loss became inf or nan, after which training stops and the test
    accuracy is recorded as measured).
    """
    params = list(model.parameters()) if params is None else list(params)
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    say = Progress(progress, label)
    hist = dict(step=[], test_acc=[], train_loss=[], extra=[], diverged=False)
    losses = []

    def record(step):
        hist["step"].append(step)
        hist["test_acc"].append(evaluate(model, data))
        hist["train_loss"].append(float(np.mean(losses)) if losses else float("nan"))
        if on_eval is not None:
            hist["extra"].append(on_eval(model))
        losses.clear()
        loss = hist["train_loss"][-1]
        say(f"step {step:5d}  loss {'  -  ' if np.isnan(loss) else f'{loss:.3f}'}  test acc {hist['test_acc'][-1]:.3f}")

    model.train()
    record(0)
    for step, idx in zip(range(1, steps + 1), batches(len(data.x_train), batch_size, seed)):
        xb, yb = data.x_train[idx], data.y_train[idx]
        loss = loss_fn(model(xb), yb)
        if not torch.isfinite(loss):
            hist["diverged"] = True
            losses.append(float("inf"))
            record(step)
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % eval_every == 0 or step == steps:
            record(step)
    return hist


def mlp(n_in=64, hidden=100, depth=3, n_out=10, bn=False, act=nn.Sigmoid, bn_after_act=False):
    """Linear -> [BatchNorm1d] -> activation, `depth` times, then a linear
    read-out. With BN the linear layers drop their bias (BN's beta replaces
    it). bn_after_act puts BN after the activation instead."""
    layers, d = [], n_in
    for _ in range(depth):
        layers.append(nn.Linear(d, hidden, bias=not bn or bn_after_act))
        if bn and not bn_after_act:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(act())
        if bn and bn_after_act:
            layers.append(nn.BatchNorm1d(hidden))
        d = hidden
    layers.append(nn.Linear(d, n_out))
    return nn.Sequential(*layers)
