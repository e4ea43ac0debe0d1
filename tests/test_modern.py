"""bnkit.experiments.modern: the pieces chapters 10 and 11 build on.

Fast (no training beyond a few steps): shapes, exact identities, and the
simulated devices against torch's own BatchNorm2d.
"""
import pytest
import torch
from torch import nn

from bnkit.experiments import common, modern


@pytest.fixture(autouse=True)
def _seeded():
    common.setup(0)


def test_cnn_shapes_and_bias_only_without_bn():
    x = torch.randn(5, 1, 8, 8)
    for bn in (True, False):
        model = modern.cnn(bn=bn)
        assert model(x).shape == (5, 10)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == 3
        assert all((c.bias is None) == bn for c in convs)
        assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == (3 if bn else 0)


def test_init_weights_sets_the_scale_and_leaves_bn_alone():
    model = modern.init_weights(modern.cnn(bn=True, width=32), 0.01)
    conv = model[3]
    assert isinstance(conv, nn.Conv2d)
    assert 0.008 < conv.weight.std().item() < 0.012  # 9216 draws of N(0, 0.01^2)
    bn = model[1]
    assert torch.equal(bn.weight, torch.ones(32)) and torch.equal(bn.bias, torch.zeros(32))
    plain = modern.init_weights(modern.cnn(bn=False), 0.5)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in plain.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_shifted_digits_are_the_digits_transformed():
    base = common.load_digits(images=True)
    clean = modern.shifted_digits(n_train=50, contrast=0.5, brightness=0.3, noise=0.0)
    assert clean.x_train.shape == (50, 1, 8, 8) and clean.x_test.shape == base.x_test.shape
    assert torch.allclose(clean.x_test, 0.5 * base.x_test + 0.3)
    assert torch.equal(clean.y_train, base.y_train[:50])
    noisy = modern.shifted_digits(n_train=50, noise=0.1, seed=1)
    residual = noisy.x_test - (0.5 * base.x_test + 0.3)
    assert 0.09 < residual.std().item() < 0.11
    assert torch.equal(noisy.x_test, modern.shifted_digits(n_train=50, noise=0.1, seed=1).x_test)


def test_one_device_ghost_bn_is_batchnorm2d():
    x = torch.randn(16, 4, 5, 5) * 2 + 1
    ref = nn.BatchNorm2d(4)
    ghost = modern.GhostBatchNorm2d(4, devices=1)
    assert torch.equal(ghost(x), ref(x))
    assert torch.equal(ghost.running_mean, ref.running_mean)


def test_ghost_bn_normalises_each_device_on_its_own_and_tracks_device_0():
    x = torch.randn(12, 3, 4, 4) * 3 + torch.arange(12.0).view(12, 1, 1, 1)  # devices differ in mean
    ghost = modern.GhostBatchNorm2d(3, devices=4)
    y = ghost(x)
    for k, (xk, yk) in enumerate(zip(x.chunk(4), y.chunk(4))):
        alone = nn.BatchNorm2d(3)
        assert torch.allclose(yk, alone(xk), atol=1e-6)
        if k == 0:
            assert torch.allclose(ghost.running_mean, alone.running_mean)
            assert torch.allclose(ghost.running_var, alone.running_var)
    assert not torch.allclose(y, nn.BatchNorm2d(3)(x), atol=1e-2)  # not the whole batch's statistics
    assert ghost.num_batches_tracked.item() == 1
    ghost.eval()
    plain = nn.BatchNorm2d(3).eval()
    plain.load_state_dict(ghost.state_dict())
    assert torch.equal(ghost(x[:1]), plain(x[:1]))  # eval: running statistics, any batch size
    with pytest.raises(ValueError, match="does not split"):
        ghost.train()(x[:10])


def test_ghost_bn_replaces_every_batchnorm_and_keeps_its_state():
    model = modern.cnn(bn=True)
    with torch.no_grad():
        model[1].weight.fill_(2.0)
    modern.ghost_bn(model, devices=4)
    ghosts = [m for m in model.modules() if isinstance(m, modern.GhostBatchNorm2d)]
    assert len(ghosts) == 3 and all(g.devices == 4 for g in ghosts)
    assert torch.equal(ghosts[0].weight, torch.full((16,), 2.0))
    assert model(torch.randn(8, 1, 8, 8)).shape == (8, 10)


def test_merged_device_statistics_are_the_whole_batch_statistics():
    offsets = torch.linspace(-3, 3, 20, dtype=torch.float64).view(20, 1, 1, 1)  # devices differ in mean
    x = torch.randn(20, 3, 4, 4, dtype=torch.float64) * 5 + offsets
    for devices in (1, 2, 4, 7):  # 7: unequal chunks (3, 3, ..., 2)
        counts, means, variances = modern.device_stats(x, devices)
        assert counts.sum().item() == 20 * 16
        mean, var = modern.merge_stats(counts, means, variances)
        assert torch.allclose(mean, x.mean((0, 2, 3)), atol=1e-12)
        assert torch.allclose(var, x.var((0, 2, 3), unbiased=False), atol=1e-12)


def test_zero_gamma_blocks_start_as_the_identity():
    x = torch.relu(torch.randn(6, 8, 8, 8))  # a block's input comes after a ReLU
    block = modern.ResidualBlock(8, zero_gamma=True)
    assert torch.equal(block(x), x)
    assert not torch.allclose(modern.ResidualBlock(8)(x), x)
    net = modern.resnet(blocks=3, width=8, zero_gamma=True)
    assert net(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    assert sum(torch.count_nonzero(b.bn2.weight).item() for b in net if isinstance(b, modern.ResidualBlock)) == 0
