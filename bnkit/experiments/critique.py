"""Chapter 2: the critique of Santurkar et al. (2018), in miniature.

- `noisy_bn`: their Alg. 1. After every BN layer, noise with a non-zero
  mean and a non-unit variance, redrawn every step, makes the layer inputs'
  distribution shift on purpose; the network still trains.
- `ics_deep_linear`: their measure of internal covariate shift, the change
  of one layer's gradient when the earlier layers take their step, on a
  deep linear network (25 layers of 10x10).
- `landscape`: their loss-landscape probe: step along the gradient by 1/2
  to 4 times the learning rate; record the loss range, the gradient change
  and the effective smoothness K (their beta-smoothness; the key is "beta").
"""
import copy

import numpy as np
import torch
from torch import nn

from .common import Progress, batches, evaluate, load_digits, mlp, setup, train


class NoisyBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d followed, in training, by Santurkar et al.'s Alg. 1 noise.

    Every forward pass (one training step) draws, per unit j,
        mu_j ~ U(-mean_range, mean_range),  sigma_j ~ U(1, sigma_max),
    and then, per activation (i, j),
        m_ij ~ U(mu_j - jitter, mu_j + jitter),  s_ij ~ N(sigma_j, jitter),
    and returns s * bn(x) + m. In eval it is plain BatchNorm1d.
    """

    def __init__(self, num_features, mean_range=0.5, sigma_max=1.25, jitter=0.1, **kw):
        super().__init__(num_features, **kw)
        self.mean_range, self.sigma_max, self.jitter = mean_range, sigma_max, jitter

    def forward(self, x):
        a = super().forward(x)
        if not self.training:
            return a
        C = a.shape[1]
        mu = torch.empty(C).uniform_(-self.mean_range, self.mean_range)
        sigma = torch.empty(C).uniform_(1.0, self.sigma_max)
        m = mu + torch.empty_like(a).uniform_(-self.jitter, self.jitter)
        s = sigma + self.jitter * torch.randn_like(a)
        return s * a + m


def noisy_mlp(hidden=100, depth=3, n_in=64, n_out=10):
    """Chapter 1's sigmoid MLP with every BatchNorm1d made noisy."""
    model = mlp(n_in=n_in, hidden=hidden, depth=depth, n_out=n_out, bn=True)
    for i, m in enumerate(model):
        if isinstance(m, nn.BatchNorm1d):
            model[i] = NoisyBatchNorm1d(m.num_features)
    return model


class LastSigmoidInput:
    """Keeps the input of the last sigmoid from the latest *training* batch,
    noise included, so the distribution the layer actually sees is recorded."""

    def __init__(self, model, unit=0):
        self.unit, self.z = unit, None
        sig = [m for m in model if isinstance(m, nn.Sigmoid)][-1]
        sig.register_forward_hook(self._hook)

    def _hook(self, module, inp, out):
        if module.training:
            self.z = inp[0].detach()[:, self.unit]

    def percentiles(self, _model=None):
        if self.z is None:
            return np.full(3, np.nan)
        return np.percentile(self.z.numpy(), (15, 50, 85))


def noisy_bn(steps=3000, lr=1.0, batch_size=60, eval_every=100, seed=0, progress=False):
    """Train chapter 1's network three ways from the same seed: plain, with
    BN, and with noisy BN. Returns {name: hist} for 'plain', 'bn', 'noisy_bn';
    hist['extra'] holds the (15, 50, 85)th percentiles of one last-layer
    sigmoid input over the latest training batch (noise included)."""
    data = load_digits()
    makers = {"plain": lambda: mlp(bn=False), "bn": lambda: mlp(bn=True), "noisy_bn": noisy_mlp}
    out = {}
    for name, make in makers.items():
        setup(seed)
        model = make()
        probe = LastSigmoidInput(model)
        hist = train(model, data, steps=steps, lr=lr, batch_size=batch_size, eval_every=eval_every,
                     seed=seed, on_eval=probe.percentiles, progress=progress, label=f"noisy-bn {name}")
        hist["extra"] = np.array(hist["extra"])
        out[name] = hist
    return out


# --- the ICS measure on a deep linear network --------------------------------

def deep_linear(depth=25, width=10, bn=False):
    """`depth` bias-free Linear(width, width) layers, each followed by
    BatchNorm1d when bn=True, no activations. Weights ~ N(0, 1/width), which
    keeps the signal's scale through the product of 25 matrices."""
    layers = []
    for _ in range(depth):
        lin = nn.Linear(width, width, bias=False)
        nn.init.normal_(lin.weight, 0.0, width ** -0.5)
        layers.append(lin)
        if bn:
            layers.append(nn.BatchNorm1d(width))
    return nn.Sequential(*layers)


def gaussian_regression(n=1000, width=10, seed=0):
    """Synthetic data for the deep linear network: x ~ N(0, I), y = A x + noise
    with a fixed random A (entries N(0, 1/width)) and noise std 0.1."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(width, width, generator=g) * width ** -0.5
    x = torch.randn(n, width, generator=g)
    return x, x @ A.T + 0.1 * torch.randn(n, width, generator=g)


def _linears(model):
    return [m for m in model if isinstance(m, nn.Linear)]


def _layer_grads(model, loss_fn, xb, yb):
    """Gradient of the loss w.r.t. each Linear's weight (train mode)."""
    model.zero_grad()
    loss_fn(model(xb), yb).backward()
    return [lin.weight.grad.clone() for lin in _linears(model)]


def ics_measure(model, loss_fn, xb, yb, lr, layers):
    """Santurkar et al.'s internal covariate shift of each layer in `layers`.

    G: the layer's gradient now. G': its gradient on the same batch after
    every earlier layer has taken its SGD step (lr times its gradient), the
    layer itself unchanged. Returns a list of (||G - G'||, ||G - G'|| / ||G||,
    cos(G, G')), one per layer. The model (weights and BN's buffers) is left
    as it was.
    """
    state = copy.deepcopy(model.state_dict())
    G = _layer_grads(model, loss_fn, xb, yb)
    out = []
    for i in layers:
        with torch.no_grad():
            for lin, g in zip(_linears(model)[:i], G[:i]):
                lin.weight -= lr * g
        G2 = _layer_grads(model, loss_fn, xb, yb)[i]
        model.load_state_dict(state)
        diff = (G[i] - G2).norm().item()
        cos = nn.functional.cosine_similarity(G[i].flatten(), G2.flatten(), dim=0).item()
        out.append((diff, diff / (G[i].norm().item() + 1e-30), cos))
    model.zero_grad()
    return out


def sgd_with_probes(model, loss_fn, x, y, *, steps, lr, batch_size, probe_every, seed, probe):
    """Plain minibatch SGD for `steps` steps; every `probe_every` steps (and at
    step 0), before the update, `probe(step, xb, yb)` measures the model on
    the batch it is about to train on."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step, idx in zip(range(steps + 1), batches(len(x), batch_size, seed)):
        xb, yb = x[idx], y[idx]
        if step % probe_every == 0:
            probe(step, xb, yb)
        if step == steps:
            break
        opt.zero_grad()
        loss_fn(model(xb), yb).backward()
        opt.step()


def ics_deep_linear(steps=1000, lr=0.01, batch_size=100, measure_every=100, depth=25, width=10,
                    layers=(5, 12, 20), seed=0, progress=False):
    """Train the deep linear network with and without BN (MSE, SGD, same seed)
    and measure ICS at `layers` every `measure_every` steps.

    Returns {'plain': r, 'bn': r} with r = dict(step=[...], loss=[...] (mean
    training loss at each measurement), ics=array (n_measurements, len(layers),
    3) of (||G - G'||, relative, cos)).
    """
    x, y = gaussian_regression(width=width, seed=seed)
    loss_fn = nn.MSELoss()
    out = {}
    for name, bn in (("plain", False), ("bn", True)):
        setup(seed)
        model = deep_linear(depth, width, bn)
        say = Progress(progress, f"ics {name}")
        r = dict(step=[], loss=[], ics=[])

        def measure(step, xb, yb):
            r["step"].append(step)
            r["ics"].append(ics_measure(model, loss_fn, xb, yb, lr, layers))
            with torch.no_grad():
                r["loss"].append(loss_fn(model(xb), yb).item())
            say(f"step {step:5d}  loss {r['loss'][-1]:.4f}  cos(G, G') {np.mean([c for *_, c in r['ics'][-1]]):.3f}")

        sgd_with_probes(model, loss_fn, x, y, steps=steps, lr=lr, batch_size=batch_size,
                        probe_every=measure_every, seed=seed, probe=measure)
        r["ics"] = np.array(r["ics"])
        out[name] = r
    return out


# --- the loss-landscape probe ------------------------------------------------

def _flat_grad(model, loss_fn, xb, yb):
    model.zero_grad()
    loss = loss_fn(model(xb), yb)
    loss.backward()
    g = torch.cat([p.grad.flatten() for p in model.parameters()])
    return loss.item(), g


def probe_along_gradient(model, loss_fn, xb, yb, lr, factors):
    """Move the parameters to w - f * lr * g for each f in `factors` (g the
    gradient at w, same batch) and return (losses, gradient changes
    ||grad(w') - g||, effective beta = max ||grad(w') - g|| / ||w' - w||).
    The model (weights and BN's buffers) is restored afterwards."""
    state = copy.deepcopy(model.state_dict())
    params = list(model.parameters())
    _, g = _flat_grad(model, loss_fn, xb, yb)
    w = nn.utils.parameters_to_vector(params).detach().clone()
    losses, changes, betas = [], [], []
    for f in factors:
        step = f * lr * g
        with torch.no_grad():
            nn.utils.vector_to_parameters(w - step, params)
        loss, g2 = _flat_grad(model, loss_fn, xb, yb)
        change = (g2 - g).norm().item()
        losses.append(loss)
        changes.append(change)
        betas.append(change / (step.norm().item() + 1e-30))
        model.load_state_dict(state)
    model.zero_grad()
    return np.array(losses), np.array(changes), max(betas)


def landscape(steps=2000, lr=1.0, batch_size=60, probe_every=50, factors=(0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4),
              act=nn.Sigmoid, seed=0, progress=False):
    """Train chapter 1's network (activation `act`) with and without BN (same seed and lr) and,
    every `probe_every` steps, probe the loss along the gradient.

    Returns {'plain': r, 'bn': r} with r = dict(step, loss_range (max - min
    of the loss over the probe), grad_change (max ||grad(w') - grad(w)||),
    beta (effective smoothness K, their beta-smoothness), test_acc (final)), arrays over probes.
    """
    data = load_digits()
    loss_fn = nn.CrossEntropyLoss()
    out = {}
    for name, bn in (("plain", False), ("bn", True)):
        setup(seed)
        model = mlp(bn=bn, act=act)
        say = Progress(progress, f"landscape {name}")
        r = dict(step=[], loss_range=[], grad_change=[], beta=[])

        def probe(step, xb, yb):
            losses, changes, beta = probe_along_gradient(model, loss_fn, xb, yb, lr, factors)
            r["step"].append(step)
            r["loss_range"].append(losses.max() - losses.min())
            r["grad_change"].append(changes.max())
            r["beta"].append(beta)
            say(f"step {step:5d}  loss range {r['loss_range'][-1]:.3f}  beta {beta:.3f}")

        sgd_with_probes(model, loss_fn, data.x_train, data.y_train, steps=steps, lr=lr,
                        batch_size=batch_size, probe_every=probe_every, seed=seed, probe=probe)
        out[name] = {k: np.array(v) for k, v in r.items()}
        out[name]["test_acc"] = evaluate(model, data)
    return out


def ics_lr_sweep(lrs=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1), steps=500, measure_every=10, batch_size=100,
                 depth=25, width=10, layers=(5, 12, 20), seed=0, progress=False):
    """The ICS measure of `ics_deep_linear` at several learning rates.

    For each rate, both networks (with and without BN, same seed and batches)
    train for `steps` SGD steps and are measured every `measure_every` steps
    (step 0, the random start, excluded from the statistics). Returns a list
    of dicts, one per (lr, network), with keys lr, net ('plain' or 'bn'),
    cos_mean, cos_min (over layers and measurements), l2_mean, rel_mean,
    loss_start, loss_end (training loss on the batches measured), diverged
    (the loss became inf/nan; the statistics then cover the steps before) and
    seed. `seed` sets the data, the initialisation and the batches: call once
    per seed to see the spread.
    """
    x, y = gaussian_regression(width=width, seed=seed)
    loss_fn = nn.MSELoss()
    rows = []
    for lr in lrs:
        for name, bn in (("plain", False), ("bn", True)):
            setup(seed)
            model = deep_linear(depth, width, bn)
            say = Progress(progress, f"ics sweep lr={lr:g} {name}")
            ics, losses = [], []
            diverged = False

            def measure(step, xb, yb):
                with torch.no_grad():
                    losses.append(loss_fn(model(xb), yb).item())
                if step > 0 and np.isfinite(losses[-1]):
                    ics.append(ics_measure(model, loss_fn, xb, yb, lr, layers))
                if step % (10 * measure_every) == 0:
                    say(f"step {step:5d}  loss {losses[-1]:.4g}")

            try:
                sgd_with_probes(model, loss_fn, x, y, steps=steps, lr=lr, batch_size=batch_size,
                                probe_every=measure_every, seed=seed, probe=measure)
            except FloatingPointError:
                pass
            a = np.array(ics, dtype=float).reshape(-1, len(layers), 3)
            finite = np.all(np.isfinite(a), axis=(1, 2))
            diverged = not np.isfinite(losses[-1]) or not finite.all()
            a = a[finite]
            rows.append(dict(lr=lr, net=name, seed=seed, cos_mean=float(a[..., 2].mean()),
                             cos_min=float(a[..., 2].min()), l2_mean=float(a[..., 0].mean()),
                             rel_mean=float(a[..., 1].mean()),
                             loss_start=losses[0], loss_end=losses[-1], diverged=diverged,
                             n_measurements=int(a.shape[0] * a.shape[1])))
    return rows


def deep_linear_losses(lr, steps=300, batch_size=100, depth=25, width=10, bn=False, seed=0):
    """Train the deep linear network of `ics_lr_sweep` (same data, seed and
    batches), without measuring anything; returns the training loss of each
    step's batch, before its update, as a numpy array. If the loss becomes
    inf or nan, training stops there and the array ends with that value:
    `np.isfinite(losses[-1])` says whether the run diverged."""
    x, y = gaussian_regression(width=width, seed=seed)
    loss_fn = nn.MSELoss()
    setup(seed)
    model = deep_linear(depth, width, bn)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _, idx in zip(range(steps), batches(len(x), batch_size, seed)):
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        losses.append(loss.item())
        if not np.isfinite(losses[-1]):
            break
        loss.backward()
        opt.step()
    return np.array(losses)
