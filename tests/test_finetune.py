"""Fine-tuning strategies freeze exactly what they say, and a fine-tuned checkpoint works with eval and predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import resnetkit
from resnetkit.cli.main import main
from resnetkit.engine.finetune import apply_strategy

from conftest import confusion_from_predictions, pin_precision, shared_data

TINY = ["--no-progress", "--batch-size", "32", "--train-subset", "64", "--max-steps", "3", "--threads", "2"]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("RESNETKIT_OFFLINE", "1")
    monkeypatch.setenv("RESNETKIT_HOME", str(pin_precision(tmp_path / "home")))


def _trainable(strategy: str, stages: int = 1) -> set[str]:
    model = resnetkit.create_model("resnet20", weights="resnet20.rk_cifar10", num_classes=2)
    apply_strategy(model, strategy, stages)
    return {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}


def test_strategies_set_requires_grad() -> None:
    assert _trainable("linear") == {"fc"}
    assert _trainable("last", 1) == {"fc", "layer3"}
    assert _trainable("last", 2) == {"fc", "layer2", "layer3"}
    assert _trainable("full") == {"conv1", "bn1", "layer1", "layer2", "layer3", "fc"}


@pytest.mark.parametrize(
    ("strategy", "frozen"), [("linear", ("conv1", "bn1", "layer")), ("last", ("conv1", "bn1", "layer1", "layer2"))]
)
def test_frozen_weights_and_statistics_stay_unchanged_after_steps(tmp_path: Path, capsys, strategy, frozen) -> None:
    data = shared_data("cats_vs_dogs")
    run = tmp_path / "ft"
    code = main(
        [
            "-q",
            "finetune",
            "--weights",
            "resnet20.rk_cifar10",
            "--data-dir",
            str(data),
            "--strategy",
            strategy,
            "--out",
            str(run),
            *TINY,
        ]
    )
    assert code == 0, capsys.readouterr().err
    pretrained = resnetkit.create_model("resnet20", weights="resnet20.rk_cifar10").state_dict()
    tuned = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key, value in tuned.items():
        if key.startswith("fc."):
            assert value.shape[0] == 2
        elif key.startswith(frozen):  # weights and BatchNorm running statistics of frozen layers
            assert torch.equal(value, pretrained[key]), key
        elif key.endswith(("weight", "bias")):
            assert not torch.equal(value, pretrained[key]) or value.abs().sum() == 0, key


def test_full_finetuning_uses_a_lower_backbone_lr_and_round_trips(tmp_path: Path, capsys) -> None:
    data = shared_data("cats_vs_dogs")
    run = tmp_path / "ft"
    assert (
        main(
            [
                "-q",
                "finetune",
                "--weights",
                "resnet20.rk_cifar10",
                "--data-dir",
                str(data),
                "--out",
                str(run),
                "--backbone-lr-mult",
                "0.1",
                "--freeze-bn",
                *TINY,
                "--train-subset",
                "256",
                "--max-steps",
                "30",
            ]
        )
        == 0
    )
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    lrs = [g["initial_lr"] for g in ckpt["optimizer"]["param_groups"]]
    assert lrs == [pytest.approx(0.01), pytest.approx(0.001)]  # head, backbone
    assert ckpt["classes"] == ["cat", "dog"] and ckpt["config"]["weights"] == "resnet20.rk_cifar10"
    pretrained = resnetkit.create_model("resnet20", weights="resnet20.rk_cifar10").state_dict()
    assert torch.equal(ckpt["model"]["bn1.running_mean"], pretrained["bn1.running_mean"])  # --freeze-bn
    capsys.readouterr()
    assert (
        main(
            [
                "-q",
                "eval",
                "--checkpoint",
                str(run),
                "--data",
                "folder",
                "--data-dir",
                str(data),
                "--split",
                "val",
                "--json",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 1000 and len(res["confusion_matrix"]) == 2
    # CIFAR-10 features and 30 steps beat chance (0.5 +- 0.016) clearly: 0.80-0.86 for seeds 0-2 (after 3 or 10
    # steps the fresh head still decides: 0.32-0.62, which a 3-step version of this test met only by its seed's luck)
    assert res["top1"] > 0.7
    # predict's top-1 is eval's argmax on the same images: 40 held-out photos copied to a folder of their own
    sub = tmp_path / "sub"
    for name in ("cat", "dog"):
        (sub / name).mkdir(parents=True)
        for image in sorted((data / "val" / name).glob("*.jpg"))[:20]:
            shutil.copy(image, sub / name / image.name)
    assert (
        main(
            [
                "-q",
                "eval",
                "--checkpoint",
                str(run),
                "--data",
                "folder",
                "--data-dir",
                str(sub),
                "--split",
                "all",
                "--json",
                "--no-compile",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 40 and res["classes"] == ["cat", "dog"]
    assert main(["-q", "predict", "--checkpoint", str(run), str(sub), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert len(preds) == 40 and confusion_from_predictions(preds, ["cat", "dog"]) == res["confusion_matrix"]


def test_finetune_bad_input(tmp_path: Path, capsys) -> None:
    from PIL import Image

    one = tmp_path / "one" / "only"
    one.mkdir(parents=True)
    Image.new("RGB", (40, 40), "red").save(one / "a.png")
    code = main(["-q", "finetune", "--weights", "resnet20.rk_cifar10", "--data-dir", str(tmp_path / "one"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "at least 2 classes" in err and err.count("\n") == 1
    code = main(["-q", "train", "--set", "finetune=linear", *TINY])
    assert code == 2 and "needs --weights" in capsys.readouterr().err
