"""Chapters 10 and 11: batch norm with the framework's layer, in small CNNs.

The training loops are on the pages; this module holds what they share and
what tests/test_modern.py checks:

- `cnn`: the small CNN of chapter 10, with or without `nn.BatchNorm2d`, and
  `init_weights` (CS231n's weight-scale sweep: every weight ~ N(0, scale^2)).
- `shifted_digits`: the digits with changed contrast, brightness and noise,
  a small "new domain" for fine-tuning.
- `GhostBatchNorm2d`: batch norm with statistics per micro-batch, as K
  devices without SyncBN compute them (Hoffer et al. 2017's ghost batch norm).
- `device_stats`, `merge_stats`: per-device (count, mean, variance) and the
  merge that `torch.nn.SyncBatchNorm` does after its all-gather.
- `ResidualBlock`, `resnet`: a small ResNet whose blocks can end with a
  zero-initialised gamma (Goyal et al. 2017).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .common import Data, load_digits


def cnn(bn=True, width=16, depth=3):
    """`depth` conv3x3 layers (1 -> width, then width -> width), each
    followed by BatchNorm2d (if bn) and a ReLU, a 2x2 max-pool after the
    second, then a linear read-out of the 4x4 maps, for 1x8x8 digits.
    With bn the convolutions have no bias: BN's beta replaces it."""
    layers, c_in = [], 1
    for i in range(depth):
        layers.append(nn.Conv2d(c_in, width, 3, padding=1, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU())
        if i == 1:
            layers.append(nn.MaxPool2d(2))
        c_in = width
    layers += [nn.Flatten(), nn.Linear(width * 16, 10)]
    return nn.Sequential(*layers)


@torch.no_grad()
def init_weights(model, scale):
    """CS231n's initialisation: every conv and linear weight ~ N(0, scale^2),
    biases zero. BN's gamma and beta keep their 1 and 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.normal_(0.0, scale)
            if m.bias is not None:
                m.bias.zero_()
    return model


def shifted_digits(n_train=100, contrast=0.5, brightness=0.3, noise=0.1, seed=0):
    """A new domain for fine-tuning: each pixel p becomes
    contrast * p + brightness + N(0, noise^2), on the digits' own split.
    Only the first `n_train` training images are kept (a small labelled
    set, the classes about balanced); the 450 test images are all shifted.
    Returns a `Data` of (N, 1, 8, 8) images."""
    base = load_digits(images=True)
    g = torch.Generator().manual_seed(seed)

    def shift(x):
        return contrast * x + brightness + noise * torch.randn(x.shape, generator=g)

    return Data(shift(base.x_train[:n_train]), base.y_train[:n_train], shift(base.x_test), base.y_test)


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are taken per micro-batch: the
    batch is cut into `devices` equal chunks, as data-parallel training on
    that many devices without SyncBN would see it, and each chunk is
    normalised with its own mean and variance (Hoffer et al.'s ghost batch
    norm). The running statistics follow device 0's chunk, as with
    DistributedDataParallel, which broadcasts rank 0's buffers. In eval mode
    it is an ordinary BatchNorm2d."""

    def __init__(self, num_features, devices=1, **kwargs):
        super().__init__(num_features, **kwargs)
        self.devices = devices

    def forward(self, x):
        if not self.training or self.devices == 1:
            return super().forward(x)
        if x.shape[0] % self.devices:
            raise ValueError(f"a batch of {x.shape[0]} does not split over {self.devices} devices")
        self.num_batches_tracked.add_(1)
        chunks = x.chunk(self.devices)
        out = [F.batch_norm(chunk, self.running_mean if k == 0 else None, self.running_var if k == 0 else None,
                            self.weight, self.bias, True, self.momentum, self.eps)
               for k, chunk in enumerate(chunks)]
        return torch.cat(out)


def ghost_bn(model, devices):
    """`model` with every BatchNorm2d replaced by a GhostBatchNorm2d over
    `devices` micro-batches (same parameters and buffers)."""
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, GhostBatchNorm2d):
            ghost = GhostBatchNorm2d(child.num_features, devices, eps=child.eps, momentum=child.momentum)
            ghost.load_state_dict(child.state_dict())
            setattr(model, name, ghost)
        else:
            ghost_bn(child, devices)
    return model


def device_stats(x, devices):
    """Per-device statistics of an (N, C, H, W) batch cut into `devices`
    chunks: counts (K,), means (K, C) and biased variances (K, C), what each
    device computes locally before SyncBN's all-gather."""
    chunks = x.chunk(devices)
    counts = torch.tensor([c.numel() // c.shape[1] for c in chunks], dtype=x.dtype)
    means = torch.stack([c.mean((0, 2, 3)) for c in chunks])
    variances = torch.stack([c.var((0, 2, 3), unbiased=False) for c in chunks])
    return counts, means, variances


def merge_stats(counts, means, variances):
    """The global mean and biased variance from per-device ones (the merge
    SyncBN does after gathering them): the count-weighted mean, and the
    count-weighted mean of each device's variance plus its squared offset
    from the global mean."""
    w = counts[:, None] / counts.sum()
    mean = (w * means).sum(0)
    var = (w * (variances + (means - mean) ** 2)).sum(0)
    return mean, var


class ResidualBlock(nn.Module):
    """x -> ReLU(x + BN2(conv2(ReLU(BN1(conv1(x)))))), width kept. With
    zero_gamma, BN2's gamma starts at 0, so the block starts as the identity
    (Goyal et al. 2017)."""

    def __init__(self, width, zero_gamma=False):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        if zero_gamma:
            nn.init.zeros_(self.bn2.weight)

    def forward(self, x):
        branch = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(x + branch)


def resnet(blocks=8, width=16, zero_gamma=False):
    """A stem (conv3x3 1 -> width, BN, ReLU), `blocks` residual blocks at
    8x8, average pooling to 2x2 and a linear read-out, for 1x8x8 digits."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        *[ResidualBlock(width, zero_gamma) for _ in range(blocks)],
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, 10),
    )
