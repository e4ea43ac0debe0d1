"""Chapter 8: batch norm in practice, measured.

- `batch_size_sweep`: BN against group norm as the batch shrinks (after Wu
  & He 2018, Table 2), on a small CNN.
- `gamma_beta_only`: train only BN's gamma and beta of a frozen random
  network (after Frankle et al. 2021).
- `placement`: BN before or after the activation.
- `forgot_eval`: what leaving a BN network in train mode does at test time.
- `fold_linear_bn`, `fold_conv_bn`, `folding_check`: fold BN into the
  preceding layer for inference, checked numerically against torch and bnkit.
- `variance_shift`: dropout before BN (Li et al. 2019).
"""
import copy

import numpy as np
import torch
from torch import nn

from .. import fast
from .common import accuracy, evaluate, load_digits, mlp, setup, train


def small_cnn(norm="bn", width=16, groups=4):
    """conv3x3(1->w) -> norm -> ReLU -> conv3x3(w->2w) -> norm -> ReLU ->
    maxpool 2 -> linear(2w*4*4 -> 10), for 1x8x8 digits. norm is 'bn'
    (BatchNorm2d), 'gn' (GroupNorm with `groups` groups) or None."""
    def norm_layer(c):
        if norm == "bn":
            return nn.BatchNorm2d(c)
        if norm == "gn":
            return nn.GroupNorm(groups, c)
        if norm is None:
            return nn.Identity()
        raise ValueError(f"norm must be 'bn', 'gn' or None, got {norm!r}")

    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=norm is None), norm_layer(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=norm is None), norm_layer(2 * width), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * width * 16, 10),
    )


def norm_mlp(norm="bn", hidden=128, depth=3, groups=8):
    """Linear -> norm -> ReLU, `depth` times, then a linear read-out, for
    flattened digits. norm is 'bn' (BatchNorm1d: statistics over the batch
    only, nothing else) or 'gn' (GroupNorm over groups of features)."""
    layers, d = [], 64
    for _ in range(depth):
        layers.append(nn.Linear(d, hidden, bias=False))
        if norm == "bn":
            layers.append(nn.BatchNorm1d(hidden))
        elif norm == "gn":
            layers.append(nn.GroupNorm(groups, hidden))
        else:
            raise ValueError(f"norm must be 'bn' or 'gn', got {norm!r}")
        layers.append(nn.ReLU())
        d = hidden
    layers.append(nn.Linear(d, 10))
    return nn.Sequential(*layers)


def batch_size_sweep(arch="cnn", batch_sizes=(32, 16, 8, 4, 2), norms=("bn", "gn"), epochs=3, base_lr=0.05,
                     seeds=(0,), progress=False):
    """Final test accuracy for each norm and batch size, with `arch` 'cnn'
    (`small_cnn`: BN's statistics per channel over the batch and 8x8
    positions) or 'mlp' (`norm_mlp`: over the batch alone).

    Like Wu & He, every run sees the same number of epochs and the learning
    rate scales linearly with the batch, lr = base_lr * B / 32 (SGD,
    momentum 0.9). BN is evaluated with its running statistics, as deployed.
    Returns {'batch_sizes': [...], norm: array (len(seeds), len(batch_sizes))}.
    """
    if arch not in ("cnn", "mlp"):
        raise ValueError(f"arch must be 'cnn' or 'mlp', got {arch!r}")
    data = load_digits(images=arch == "cnn")
    make = small_cnn if arch == "cnn" else norm_mlp
    out = {"batch_sizes": list(batch_sizes)}
    for norm in norms:
        accs = np.zeros((len(seeds), len(batch_sizes)))
        for i, seed in enumerate(seeds):
            for j, B in enumerate(batch_sizes):
                setup(seed)
                steps = epochs * (len(data.x_train) // B)
                hist = train(make(norm), data, steps=steps, lr=base_lr * B / 32, batch_size=B,
                             momentum=0.9, eval_every=steps, seed=seed, progress=progress,
                             label=f"batch sweep {arch} {norm} B={B} seed={seed}")
                accs[i, j] = hist["test_acc"][-1]
        out[norm] = accs
    return out


def bn_params(model):
    """gamma and beta of every BN layer in `model`."""
    return [p for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()]


def gammas(model):
    """All BN gammas of `model`, as one numpy vector."""
    return torch.cat([m.weight.detach().flatten() for m in model.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm)]).numpy()


def gamma_beta_only(depth=4, hidden=256, steps=2000, lr=0.1, batch_size=60, momentum=0.9, seed=0,
                    progress=False):
    """A ReLU MLP with BN, trained three ways from the same random init:
    'all' parameters; 'bn_only' (every weight, the output layer's included,
    frozen at its random value; only gamma and beta learn); and, as a
    baseline with a similar number of parameters, 'output_only' (only the
    final linear layer learns: a linear classifier on random features).

    Returns {'init_acc', 'all', 'bn_only', 'output_only', 'n_trainable': {..}, 'gammas': {..}}
    with the final test accuracies, the trainable parameter counts and each
    run's final gammas.
    """
    data = load_digits()
    out = {"n_trainable": {}, "gammas": {}}
    for name in ("all", "bn_only", "output_only"):
        setup(seed)
        model = mlp(hidden=hidden, depth=depth, bn=True, act=nn.ReLU)
        out["init_acc"] = evaluate(model, data)
        params = {"all": list(model.parameters()), "bn_only": bn_params(model),
                  "output_only": list(model[-1].parameters())}[name]
        for p in model.parameters():
            p.requires_grad_(any(p is q for q in params))
        out["n_trainable"][name] = sum(p.numel() for p in params)
        hist = train(model, data, steps=steps, lr=lr, batch_size=batch_size, momentum=momentum,
                     params=params, eval_every=max(steps // 10, 1), seed=seed, progress=progress,
                     label=f"gamma-beta {name}")
        out[name] = hist["test_acc"][-1]
        out["gammas"][name] = gammas(model)
    out["n_total"] = sum(p.numel() for p in model.parameters())
    return out


def placement(seeds=(0, 1, 2), steps=1500, lr=0.1, batch_size=60, depth=3, hidden=100, progress=False):
    """ReLU MLP with BN before the activation (Linear -> BN -> ReLU, as in
    Ioffe & Szegedy) or after it (Linear -> ReLU -> BN), same seeds.
    Returns {'before': array (len(seeds),), 'after': array} of final test
    accuracies, and the learning curves {'curves': {where: [hist, ...]}}."""
    data = load_digits()
    out = {"curves": {}}
    for where, after in (("before", False), ("after", True)):
        accs, curves = [], []
        for seed in seeds:
            setup(seed)
            model = mlp(hidden=hidden, depth=depth, bn=True, act=nn.ReLU, bn_after_act=after)
            hist = train(model, data, steps=steps, lr=lr, batch_size=batch_size, eval_every=steps // 15,
                         seed=seed, progress=progress, label=f"placement {where} seed={seed}")
            accs.append(hist["test_acc"][-1])
            curves.append(hist)
        out[where] = np.array(accs)
        out["curves"][where] = curves
    return out


def forgot_eval(steps=600, lr=0.05, batch_size=32, test_batch_sizes=(450, 32, 8, 1), seed=0, progress=False):
    """Train `small_cnn('bn')`, then test it properly (eval mode) and as if
    someone forgot `model.eval()` (train mode, test set fed in batches of
    each size in `test_batch_sizes`).

    Returns {'eval_acc', 'train_mode_acc': {B: acc}, 'changed': {B: fraction
    of test predictions that differ from eval mode's}, 'running_mean_drift':
    relative change of the first BN layer's running_mean caused by the
    forgotten-eval pass, 'mlp_eval_acc' and 'mlp_train_mode_acc': {B: acc}
    the same for a BatchNorm1d MLP (`norm_mlp('bn')`) at test batches of
    450, 8 and 2, and 'mlp_error': the message torch raises when it sees a
    batch of one in train mode}.
    """
    data = load_digits(images=True)
    setup(seed)
    model = small_cnn("bn")
    train(model, data, steps=steps, lr=lr, batch_size=batch_size, momentum=0.9, eval_every=steps,
          seed=seed, progress=progress, label="forgot-eval")
    model.eval()
    with torch.no_grad():
        pred_eval = model(data.x_test).argmax(1)
    out = {"eval_acc": (pred_eval == data.y_test).float().mean().item(), "train_mode_acc": {}, "changed": {}}
    for B in test_batch_sizes:
        m = copy.deepcopy(model).train()  # the bug: still in train mode
        with torch.no_grad():
            pred = torch.cat([m(data.x_test[i:i + B]).argmax(1) for i in range(0, len(data.x_test), B)])
        out["train_mode_acc"][B] = (pred == data.y_test).float().mean().item()
        out["changed"][B] = (pred != pred_eval).float().mean().item()
        if B == 1:
            bn0_before, bn0_after = model[1].running_mean, m[1].running_mean
            out["running_mean_drift"] = ((bn0_after - bn0_before).norm() / bn0_before.norm()).item()
    flat = load_digits()
    setup(seed)
    net = norm_mlp("bn")
    train(net, flat, steps=steps, lr=lr, batch_size=batch_size, momentum=0.9, eval_every=steps, seed=seed,
          progress=progress, label="forgot-eval mlp")
    out["mlp_eval_acc"] = evaluate(net, flat)
    net.train()  # the bug
    out["mlp_train_mode_acc"] = {B: accuracy(copy.deepcopy(net), flat.x_test, flat.y_test, batch_size=B)
                                 for B in (450, 8, 2)}
    try:
        net(flat.x_test[:1])
        out["mlp_error"] = None
    except ValueError as e:
        out["mlp_error"] = str(e)
    return out


# --- folding BN into the previous layer ----------------------------------------

def bn_affine(bn):
    """BN in eval mode is a per-channel affine map y = scale * x + shift.
    Read scale and shift off bnkit's eval-mode forward (at x = 0 and x = 1),
    so no BN formula is written out again here. Returns numpy (C,) arrays."""
    C = bn.num_features
    bn_param = {"mode": "eval", "eps": bn.eps,
                "running_mean": bn.running_mean.detach().numpy(), "running_var": bn.running_var.detach().numpy()}
    gamma, beta = bn.weight.detach().numpy(), bn.bias.detach().numpy()
    dtype = gamma.dtype
    shift, _ = fast.batchnorm_forward(np.zeros((1, C), dtype), gamma, beta, bn_param)
    at_one, _ = fast.batchnorm_forward(np.ones((1, C), dtype), gamma, beta, bn_param)
    return at_one[0] - shift[0], shift[0]


def fold_linear_bn(linear, bn):
    """A Linear layer equal to bn(linear(x)) in eval mode:
    W' = scale[:, None] * W, b' = scale * b + shift."""
    scale, shift = (torch.as_tensor(a) for a in bn_affine(bn))
    b = linear.bias.detach() if linear.bias is not None else torch.zeros_like(scale)
    folded = nn.Linear(linear.in_features, linear.out_features, dtype=linear.weight.dtype)
    with torch.no_grad():
        folded.weight.copy_(scale[:, None] * linear.weight)
        folded.bias.copy_(scale * b + shift)
    return folded


def fold_conv_bn(conv, bn):
    """A Conv2d equal to bn(conv(x)) in eval mode: each output channel's
    filter is multiplied by scale, and its bias becomes scale * b + shift."""
    scale, shift = (torch.as_tensor(a) for a in bn_affine(bn))
    b = conv.bias.detach() if conv.bias is not None else torch.zeros_like(scale)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True, dtype=conv.weight.dtype)
    with torch.no_grad():
        folded.weight.copy_(scale[:, None, None, None] * conv.weight)
        folded.bias.copy_(scale * b + shift)
    return folded


def _randomise_bn(bn, g):
    """Give BN non-trivial parameters and running statistics (as after training)."""
    with torch.no_grad():
        C = bn.num_features
        bn.weight.copy_(torch.rand(C, generator=g, dtype=bn.weight.dtype) * 2 - 0.5)
        bn.bias.copy_(torch.randn(C, generator=g, dtype=bn.bias.dtype))
        bn.running_mean.copy_(torch.randn(C, generator=g, dtype=bn.running_mean.dtype) * 3)
        bn.running_var.copy_(torch.rand(C, generator=g, dtype=bn.running_var.dtype) * 5 + 0.01)


def folding_check(seed=0, dtype=torch.float64):
    """Fold Linear+BatchNorm1d and Conv2d+BatchNorm2d with random weights
    and statistics; return the max abs difference between the folded layer
    and (a) torch's eval-mode BN after the layer, (b) bnkit's eval-mode
    forward after the layer, for each pair: {'linear': (a, b), 'conv': (a, b)}.
    """
    setup(seed)
    g = torch.Generator().manual_seed(seed)
    out = {}
    pairs = {
        "linear": (nn.Linear(64, 32, dtype=dtype), nn.BatchNorm1d(32, dtype=dtype), torch.randn(50, 64, dtype=dtype)),
        "conv": (nn.Conv2d(3, 8, 3, padding=1, dtype=dtype), nn.BatchNorm2d(8, dtype=dtype),
                 torch.randn(10, 3, 8, 8, dtype=dtype)),
    }
    for name, (layer, bn, x) in pairs.items():
        _randomise_bn(bn, g)
        bn.eval()
        folded = (fold_linear_bn if name == "linear" else fold_conv_bn)(layer, bn)
        with torch.no_grad():
            z = layer(x)
            y_torch = bn(z)
            y_folded = folded(x)
        bn_param = {"mode": "eval", "eps": bn.eps, "running_mean": bn.running_mean.numpy(),
                    "running_var": bn.running_var.numpy()}
        y_bnkit, _ = fast.batchnorm_forward(z.numpy(), bn.weight.detach().numpy(), bn.bias.detach().numpy(), bn_param)
        out[name] = ((y_folded - y_torch).abs().max().item(), np.abs(y_folded.numpy() - y_bnkit).max())
    return out


def variance_shift(p=0.5, n_hidden=256, seed=0):
    """Li et al. (2019) in one measurement: Dropout(p) before BatchNorm1d.

    Features: a random ReLU layer on the digits' training set. Passing them
    through dropout then BN in train mode (one pass, momentum=None so
    running_var is the plain average) gives the variance BN will use at
    test time; at test time dropout is off and the features' true variance
    is smaller. Returns the per-unit ratio running_var / test-time variance
    (mean, median, min, max) over the units that are ever active ('units' of
    them), and 1 / (1 - p), the ratio for features with zero mean."""
    setup(seed)
    data = load_digits()
    feat = nn.Sequential(nn.Linear(64, n_hidden), nn.ReLU())
    drop, bn = nn.Dropout(p), nn.BatchNorm1d(n_hidden, momentum=None)
    with torch.no_grad():
        h_train = feat(data.x_train)
        for i in range(0, len(h_train) - 59, 60):
            bn(drop(h_train[i:i + 60]))
        test_var = feat(data.x_test).var(0)
    alive = test_var > 1e-8  # units the ReLU never switches on have no variance to compare
    ratio = (bn.running_var[alive] / test_var[alive]).numpy()
    return {"units": int(alive.sum()), "mean": float(ratio.mean()), "median": float(np.median(ratio)),
            "min": float(ratio.min()), "max": float(ratio.max()), "inverse_keep": 1 / (1 - p)}
