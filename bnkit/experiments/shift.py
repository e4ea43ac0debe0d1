"""Chapter 1: internal covariate shift in miniature (Ioffe & Szegedy 2015).

Their Fig. 1: an MLP with 3 hidden layers of 100 sigmoid units, minibatches
of 60, trained with and without BN; (a) test accuracy over training, (b, c)
the 15th/50th/85th percentiles of one sigmoid's input in the last hidden
layer. Ours is the same network on 8x8 digits instead of MNIST. Then the
learning-rate sweep behind their section 3.3 (BN permits higher rates).
"""
import numpy as np
import torch
from torch import nn

from .common import load_digits, mlp, setup, train

PERCENTILES = (15, 50, 85)


def last_sigmoid(model):
    """The last hidden layer's activation module (its input is what Fig. 1 plots)."""
    return [m for m in model if isinstance(m, nn.Sigmoid)][-1]


def sigmoid_input_percentiles(model, x, unit=0):
    """15th/50th/85th percentiles, over the inputs x, of the value fed into
    sigmoid `unit` of the last hidden layer (in eval mode, like any test)."""
    seen = {}
    handle = last_sigmoid(model).register_forward_hook(lambda m, inp, out: seen.update(z=inp[0]))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(x)
    model.train(was_training)
    handle.remove()
    return np.percentile(seen["z"][:, unit].numpy(), PERCENTILES)


def init_normal(model, std):
    """Re-draw every Linear weight from N(0, std^2) (PyTorch's default is
    uniform with std 1/sqrt(3 fan_in), about 0.07 for 64 inputs)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
    return model


def covariate_shift(steps=3000, lr=0.5, batch_size=60, eval_every=50, seed=0, unit=0, init_std=None,
                    progress=False):
    """Train the Fig. 1 network with and without BN from the same seed
    (PyTorch's default initialisation, or N(0, init_std^2) weights).

    Returns {'plain': hist, 'bn': hist}; each hist is `common.train`'s dict
    whose 'extra' holds, per evaluation, the (15, 50, 85)th percentiles of
    sigmoid `unit`'s input in the last hidden layer over the test set.
    """
    data = load_digits()
    out = {}
    for name, bn in (("plain", False), ("bn", True)):
        setup(seed)
        model = mlp(bn=bn) if init_std is None else init_normal(mlp(bn=bn), init_std)
        out[name] = train(model, data, steps=steps, lr=lr, batch_size=batch_size, eval_every=eval_every,
                          seed=seed, on_eval=lambda m: sigmoid_input_percentiles(m, data.x_test, unit),
                          progress=progress, label=f"fig1 {name}")
        out[name]["extra"] = np.array(out[name]["extra"])
    return out


def lr_sweep(lrs=(0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0), steps=600, batch_size=60, seed=0, act=nn.Sigmoid,
             progress=False):
    """Final test accuracy after `steps` SGD steps for each learning rate,
    with and without BN, same seed for every run.

    Returns {'lrs': [...], 'plain': [acc, ...], 'bn': [acc, ...],
    'plain_diverged': [bool, ...], 'bn_diverged': [bool, ...]}.
    """
    data = load_digits()
    out = {"lrs": list(lrs), "plain": [], "bn": [], "plain_diverged": [], "bn_diverged": []}
    for name, bn in (("plain", False), ("bn", True)):
        for lr in lrs:
            setup(seed)
            hist = train(mlp(bn=bn, act=act), data, steps=steps, lr=lr, batch_size=batch_size,
                         eval_every=steps, seed=seed, progress=progress, label=f"lr sweep {name} lr={lr:g}")
            out[name].append(hist["test_acc"][-1])
            out[f"{name}_diverged"].append(hist["diverged"])
    return out
