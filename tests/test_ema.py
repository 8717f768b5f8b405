"""Issue 19: the weight EMA — its update is Polyak's average of the weights after each step (computed here by
hand), it is evaluated each epoch, checkpointed, used by `eval`/`predict`, and a resumed run continues it exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resnetkit.checkpoint import load_checkpoint, model_from_checkpoint
from resnetkit.cli.main import main
from resnetkit.config import ConfigError, TrainConfig
from resnetkit.engine import runner
from resnetkit.engine.runner import run_training

import faults

TINY = dict(
    model="resnet20",
    data="sample",
    epochs=2,
    max_steps=6,
    batch_size=32,
    train_subset=96,
    test_subset=64,
    amp=False,
    progress=False,
    threads=1,
    seed=2,
)


def test_the_ema_is_the_running_average_of_the_weights_after_each_step(tmp_path: Path) -> None:
    snapshots: list[dict[str, torch.Tensor]] = []
    grab = lambda info: snapshots.append({k: v.clone() for k, v in model_ref[0].state_dict().items()})  # noqa: E731
    model_ref: list = []
    real_build = runner._build_model

    def build(*a, **kw):
        model_ref.append(real_build(*a, **kw))
        return model_ref[0]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "_build_model", build)
        run_training(TrainConfig(**TINY, ema_decay=0.75, ema_every=2, out=str(tmp_path / "run")), callbacks=[grab])
    expected = None
    for step, weights in enumerate(snapshots, start=1):
        if step % 2 == 0:  # updates after steps 2, 4, 6; the first one copies
            expected = (
                weights
                if expected is None
                else {k: (0.75 * expected[k] + 0.25 * v) if v.is_floating_point() else v for k, v in weights.items()}
            )
    ckpt = load_checkpoint(tmp_path / "run")
    for key in ("conv1.weight", "layer2.1.bn2.running_var", "fc.bias"):
        torch.testing.assert_close(ckpt["ema"]["weights"][key], expected[key], rtol=1e-5, atol=1e-6)
    assert not torch.equal(ckpt["ema"]["weights"]["conv1.weight"], ckpt["model"]["conv1.weight"])
    used = model_from_checkpoint(ckpt).state_dict()  # eval and predict load the EMA
    assert torch.equal(used["conv1.weight"], ckpt["ema"]["weights"]["conv1.weight"])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"ema_test_top1", "test_top1"} <= set(rows[-1])
    assert ckpt["best"]["ema_test_top1"] == max(r["ema_test_top1"] for r in rows)  # best.pt follows the EMA


def test_a_resumed_run_continues_the_ema_exactly(tmp_path: Path, capsys, monkeypatch) -> None:
    args = [
        "train",
        "--data",
        "sample",
        "--model",
        "resnet20",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--train-subset",
        "96",
        "--no-progress",
        "--threads",
        "1",
        "--no-amp",
        "--set",
        "ema_decay=0.9",
    ]
    assert main(["-q", *args, "--out", str(tmp_path / "straight")]) == 0
    with monkeypatch.context() as patch:
        patch.setattr(runner, "run_training", faults.with_callbacks([faults.sigint_at(4)]))
        assert main(["-q", *args, "--out", str(tmp_path / "split"), "--checkpoint-every", "1"]) == 130
    assert main(["-q", "train", "--resume", str(tmp_path / "split"), "--no-progress"]) == 0
    capsys.readouterr()
    a, b = (load_checkpoint(tmp_path / d)["ema"] for d in ("straight", "split"))
    assert a["n_averaged"] == b["n_averaged"] == 6
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])


@pytest.mark.parametrize("values", [{"ema_decay": 1.0}, {"ema_decay": -0.1}, {"ema_every": 0}])
def test_bad_ema_settings_are_config_errors(values) -> None:
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig(**values)
