"""The training-step script end to end on the CPU (tiny sizes, the Triton
kernels in the interpreter): it runs, writes its JSON, and bnkit's Triton
BN trains to torch's losses. No timing is asserted."""
import json

import pytest

from _triton import DEVICE, torch  # first: skips the module without Triton

from bnkit.experiments import train_step

TINY = dict(channels=(4,), batch=6, image=4, batches=2)


def test_every_layout_and_precision_trains_to_torchs_losses():
    report = train_step.run(DEVICE, quick=True, impls=("torch", "bnkit-triton"), steps=3, progress=False,
                            config=TINY)
    results = report["results"]
    assert [(r["impl"], r["layout"], r["precision"]) for r in results] == [
        (impl, layout, precision) for layout in train_step.LAYOUTS for precision in train_step.PRECISIONS
        for impl in ("torch", "bnkit-triton")]
    for r in results:
        assert len(r["losses"]) == 3 and all(loss > 0 for loss in r["losses"])
        assert r["step_ms_median"] > 0 and r["loss_match"] is True
    for torch_run, ours in zip(results[::2], results[1::2]):
        # the same initial weights and batches: the first step's loss is the same forward
        assert abs(torch_run["losses"][0] - ours["losses"][0]) < (1e-4 if ours["precision"] == "float32" else 5e-2)
    assert report["all_losses_match"] is True


def test_cli_quick_writes_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_step, "QUICK", dict(train_step.QUICK, **TINY))
    path = tmp_path / "ts.json"
    rc = train_step.main(["--quick", "--device", DEVICE, "--steps", "2", "--layout", "channels_last",
                          "--precision", "float32", "--impl", "bnkit-triton", "--no-compile", "--json", str(path)])
    assert rc == 0
    report = json.loads(path.read_text())
    assert report["meta"]["torch"] == torch.__version__ and report["meta"]["device"] == DEVICE
    assert [r["impl"] for r in report["results"]] == ["torch", "bnkit-triton"]  # torch: the reference, always
    assert report["config"]["steps"] == 2 and report["all_losses_match"] is True
    out = capsys.readouterr()
    assert "bnkit-triton  channels_last" in out.out and f"wrote {path}" in out.err


def test_loss_match_and_bad_arguments():
    assert train_step.loss_match(1.0, 1.0, "float32")
    assert train_step.loss_match(1.06, 1.0, "float32")  # 5% + 0.02
    assert not train_step.loss_match(1.08, 1.0, "float32")
    assert train_step.loss_match(1.14, 1.0, "bfloat16") and not train_step.loss_match(1.2, 1.0, "bfloat16")
    with pytest.raises(ValueError, match="unknown layout 'nhwc'"):
        train_step.run(DEVICE, quick=True, layouts=("nhwc",), progress=False)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        train_step.run(DEVICE, quick=True, steps=0, progress=False)
