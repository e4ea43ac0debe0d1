"""The book's experiments (bnkit.experiments) on a reduced budget.

Each test asserts the qualitative outcome a chapter reports, with the
seeds the functions use by default; the thresholds are well inside what
these seeds measured (see the comments), so they fail when the effect is
gone, not when a digit moves. No timing is asserted here.
"""
import numpy as np
import pytest
import torch

from bnkit.experiments import common, critique, practice, shift


# --- common --------------------------------------------------------------------

def test_digits_split_is_offline_stratified_and_scaled():
    data = common.load_digits()
    assert data.x_train.shape == (1347, 64) and data.x_test.shape == (450, 64)
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert np.bincount(data.y_test.numpy()).min() >= 40  # stratified: 43 to 46 per class
    assert common.load_digits(images=True).x_train.shape == (1347, 1, 8, 8)


def test_training_is_reproducible():
    data = common.load_digits()
    runs = []
    for _ in range(2):
        common.setup(3)
        runs.append(common.train(common.mlp(bn=True), data, steps=30, lr=0.5, eval_every=10, seed=3)["train_loss"][1:])
    assert runs[0] == runs[1] and np.all(np.isfinite(runs[0]))


# --- chapter 1 -----------------------------------------------------------------

def test_bn_net_learns_faster_and_its_sigmoid_inputs_settle():
    r = shift.covariate_shift(steps=600, eval_every=100)
    plain, bn = r["plain"], r["bn"]
    assert plain["step"] == bn["step"] == [0, 100, 200, 300, 400, 500, 600]
    # measured: BN 0.96-0.97 from step 100 on; plain at chance (0.10) up to step 600
    assert min(bn["test_acc"][1:]) > 0.85
    assert max(plain["test_acc"]) < 0.5
    p = bn["extra"]
    assert p.shape == (7, 3) and np.all(p[:, 0] <= p[:, 1]) and np.all(p[:, 1] <= p[:, 2])
    # with BN the 15th..85th range stays where BN put it (measured 2.9-3.1 wide)
    assert np.all(p[1:, 2] - p[1:, 0] > 1.0)


def test_bn_trains_over_a_wider_range_of_learning_rates():
    r = shift.lr_sweep(lrs=(0.1, 10.0), steps=300)
    # measured: BN 0.97 / 0.97; plain 0.10 / 0.10
    assert min(r["bn"]) > 0.85
    assert max(r["plain"]) < 0.5


# --- chapter 2 -----------------------------------------------------------------

def test_noisy_bn_still_trains():
    r = critique.noisy_bn(steps=400, eval_every=200)
    # measured: noisy BN 0.96, BN 0.97, plain 0.10 (chance)
    assert r["noisy_bn"]["test_acc"][-1] > 0.85
    assert r["noisy_bn"]["test_acc"][-1] > r["plain"]["test_acc"][-1] + 0.3


def test_noise_module_follows_algorithm_1_and_is_off_in_eval():
    torch.manual_seed(0)
    layer = critique.NoisyBatchNorm1d(4)
    x = torch.randn(5000, 4) * 3 + 1
    y = layer(x)
    # per unit: mean ~ mu in [-0.5, 0.5], std ~ sigma in [1, 1.25] (+ the jitter)
    assert torch.all(y.mean(0).abs() < 0.6)
    assert torch.all((y.std(0) > 0.95) & (y.std(0) < 1.35))
    layer.eval()
    plain = torch.nn.BatchNorm1d(4).eval()
    plain.load_state_dict(layer.state_dict())
    assert torch.equal(layer(x), plain(x))


def test_ics_measure_on_the_deep_linear_network():
    r = critique.ics_deep_linear(steps=200, measure_every=100)
    for name in ("plain", "bn"):
        ics = r[name]["ics"]
        assert ics.shape == (3, 3, 3) and np.all(np.isfinite(ics))
        assert np.all(np.abs(ics[..., 2]) <= 1 + 1e-6)
    # measured: BN's ||G - G'|| is the larger one (mean 0.84 vs 0.16), as Santurkar et al. report
    assert r["bn"]["ics"][..., 0].mean() > r["plain"]["ics"][..., 0].mean()


def test_ics_direction_depends_on_the_learning_rate():
    rows = critique.ics_lr_sweep(lrs=(1e-3, 1e-1), steps=200, measure_every=20)
    by = {(r["lr"], r["net"]): r for r in rows}
    assert len(by) == 4
    for r in rows:
        assert r["n_measurements"] == 30 and not r["diverged"]
        assert -1 - 1e-6 <= r["cos_min"] <= r["cos_mean"] <= 1 + 1e-6
    # measured: at lr 1e-3 mean cos 1.000 without BN, 0.89 with (the paper's direction);
    # at lr 1e-1 0.19 without BN, 0.60 with (the opposite)
    assert by[1e-3, "plain"]["cos_mean"] > by[1e-3, "bn"]["cos_mean"] + 0.05
    assert by[1e-1, "bn"]["cos_mean"] > by[1e-1, "plain"]["cos_mean"] + 0.2


def test_book_style_sets_legible_defaults():
    import matplotlib.pyplot as plt

    common.book_style()
    assert plt.rcParams["font.size"] >= 11 and plt.rcParams["figure.figsize"][0] == common.FIGURE_WIDTH


def test_ics_measure_restores_the_model():
    model = critique.deep_linear(depth=5, width=4, bn=True)
    x, y = torch.randn(16, 4), torch.randn(16, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    critique.ics_measure(model, torch.nn.MSELoss(), x, y, lr=0.1, layers=(2, 4))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bn_loss_changes_less_along_the_gradient():
    # the chapter's budget: early in training the probes scatter too much to compare
    r = critique.landscape(steps=2000, probe_every=50)
    # measured (seeds 0, 1, 2): median loss range 0.003 with BN, 0.07-0.09 without;
    # median gradient change 0.07-0.13 with BN, 0.14-0.22 without
    assert np.median(r["bn"]["loss_range"]) < 0.2 * np.median(r["plain"]["loss_range"])
    assert np.median(r["bn"]["grad_change"]) < np.median(r["plain"]["grad_change"])


# --- chapter 8 -----------------------------------------------------------------

def test_small_batches_hurt_bn_more_than_gn_in_an_mlp():
    r = practice.batch_size_sweep("mlp", batch_sizes=(32, 2), epochs=2)
    bn_drop = r["bn"][0, 0] - r["bn"][0, 1]
    gn_drop = r["gn"][0, 0] - r["gn"][0, 1]
    # measured: BN 0.95 -> 0.42, GN 0.84 -> 0.94
    assert bn_drop > 0.3 and bn_drop > gn_drop + 0.3


def test_gamma_and_beta_alone_train_a_frozen_random_network():
    r = practice.gamma_beta_only(depth=2, steps=400)
    # measured: init 0.09, BN-only 0.86, all 0.99
    assert r["init_acc"] < 0.2
    assert r["bn_only"] > 0.6  # well above chance (0.1)
    assert r["n_trainable"]["bn_only"] < 0.02 * r["n_total"]
    assert r["gammas"]["bn_only"].shape == (512,)


def test_placement_both_train():
    r = practice.placement(seeds=(0,), steps=300)
    assert r["before"][0] > 0.9 and r["after"][0] > 0.9


def test_forgetting_eval_changes_predictions_on_tiny_batches():
    r = practice.forgot_eval(steps=300)
    assert r["changed"][450] <= r["changed"][1]
    assert r["changed"][1] > 0  # measured: 1.8% of predictions flip
    # measured: MLP 0.98 in eval mode, 0.54 in train mode on pairs
    assert r["mlp_train_mode_acc"][2] < r["mlp_eval_acc"] - 0.2
    assert "more than 1 value per channel" in r["mlp_error"]
    assert r["running_mean_drift"] > 0


def test_folding_preserves_outputs_in_float64():
    r = practice.folding_check()
    for name in ("linear", "conv"):
        vs_torch, vs_bnkit = r[name]
        assert vs_torch < 1e-10 and vs_bnkit < 1e-10


def test_folding_catches_a_wrong_fold():
    torch.manual_seed(0)
    lin, bn = torch.nn.Linear(6, 3, dtype=torch.float64), torch.nn.BatchNorm1d(3, dtype=torch.float64)
    with torch.no_grad():
        bn.running_var.fill_(4.0)
    bn.eval()
    x = torch.randn(7, 6, dtype=torch.float64)
    folded = practice.fold_linear_bn(lin, bn)
    assert torch.allclose(folded(x), bn(lin(x)), atol=1e-12, rtol=0)
    bn.eps = 0.5  # a different BN now: the old fold must no longer match
    assert not torch.allclose(folded(x), bn(lin(x)), atol=1e-6, rtol=0)


def test_dropout_before_bn_inflates_running_var():
    r = practice.variance_shift()
    assert r["units"] > 100
    assert r["median"] > 1.5  # measured 2.9: train-time variance well above test-time


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="norm must be"):
        practice.small_cnn("batch")
    with pytest.raises(ValueError, match="arch must be"):
        practice.batch_size_sweep("resnet")
    with pytest.raises(ValueError, match="norm must be"):
        practice.norm_mlp("ln")


def test_init_normal_sets_the_weight_scale():
    common.setup(0)
    model = shift.init_normal(common.mlp(hidden=400), 2.0)
    w = model[2].weight.detach()
    assert abs(w.std().item() - 2.0) < 0.05


def test_command_line_rejects_an_unknown_chapter():
    from bnkit.experiments.__main__ import main
    with pytest.raises(SystemExit):
        main(["5"])


def test_deep_linear_losses_report_divergence():
    # measured: seed 0's plain network learns at lr 0.1 and diverges at 0.15
    # (loss 1.4 -> 0.73 in 300 steps; inf within them)
    ok = critique.deep_linear_losses(0.1, steps=300, seed=0)
    bad = critique.deep_linear_losses(0.15, steps=300, seed=0)
    assert len(ok) == 300 and np.isfinite(ok).all() and ok[-20:].mean() < ok[:20].mean()
    assert not np.isfinite(bad[-1]) and len(bad) < 300
