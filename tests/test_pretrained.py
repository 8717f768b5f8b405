"""The weights registry and resnetkit's shipped CIFAR-10 weights (loadable offline by name)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import resnetkit
from resnetkit.cli.main import main
from resnetkit.weights import sha256_file
from resnetkit.weights.registry import SHIPPED, get_weights, list_weights

from conftest import pin_precision


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("RESNETKIT_OFFLINE", "1")  # no test may reach the internet
    monkeypatch.setenv("RESNETKIT_HOME", str(pin_precision(tmp_path / "home")))


def test_shipped_weights_load_offline_by_name_and_match_their_hash() -> None:
    entry = get_weights("resnet20.rk_cifar10")
    assert entry.shipped and sha256_file(SHIPPED / entry.url) == entry.sha256
    model = resnetkit.create_model("resnet20", weights="resnet20.rk_cifar10")
    assert model.num_classes == 10 and entry.data_config.first_conv is None  # the weights name no modules
    assert model.default_cfg == replace(entry.data_config, first_conv="conv1", classifier="fc")  # the model does
    assert model.pretrained_cfg.classes[3] == "cat"


SHIPPED_NAMES = [e.name for e in list_weights() if e.shipped]


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_shipped_weights_score_their_registered_top1_on_all_test_images(name: str, cifar10_eval) -> None:
    """`resnetkit eval` on the 10,000 CIFAR-10 test images, single view and with flip TTA, gives the numbers the
    registry (and the README) state; the entry says how the weights were made."""
    entry = get_weights(name)
    res = cifar10_eval(name, "--tta-flip")  # one pass: the TTA top-1 and the image alone's
    assert res["n"] == 10_000 and res["tta_flip"] is True
    assert res["top1"] == pytest.approx(entry.metrics["cifar10_test_top1_flip_tta"], abs=2e-4)  # a tie may flip
    assert res["single_view_top1"] == pytest.approx(entry.metrics["cifar10_test_top1"], abs=2e-4)
    assert entry.metrics["cifar10_test_top1_flip_tta"] > entry.metrics["cifar10_test_top1"]
    assert {"recipe", "seed", "command", "cpu", "precision", "minutes"} <= set(entry.training)
    assert f"--config {entry.training['recipe']}" in entry.training["command"]
    assert f"--seed {entry.training['seed']}" in entry.training["command"]


def test_predict_with_a_weights_name(tmp_path, capsys) -> None:
    from resnetkit.data import load_sample
    from resnetkit.data.examples import write_example_images

    folder = write_example_images(load_sample("test"), tmp_path / "ex")
    assert main(["-q", "predict", "--checkpoint", "resnet20.rk_cifar10", str(folder), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    right = sum(p["top"][0]["class"] == p["path"].rsplit("-", 1)[1].removesuffix(".png") for p in preds)
    assert len(preds) == 10 and right >= 7  # an 89% model on one image per class


def test_registry_entries_carry_their_metadata(capsys) -> None:
    names = {e.name for e in list_weights()}
    assert {"resnet20.rk_cifar10", "resnet50.tv_in1k", "resnet50.tv2_in1k", "resnext101_64x4d.tv_in1k"} <= names
    v2 = get_weights("resnet50.tv2_in1k")
    assert v2.url.startswith("https://download.pytorch.org/") and v2.sha256 in v2.url
    assert v2.data_config.input_size == (3, 224, 224) and v2.data_config.crop_pct == pytest.approx(224 / 232)
    assert len(v2.classes) == 1000 and v2.metrics["imagenet_acc1"] == pytest.approx(0.80858)
    a1 = get_weights("resnet50.a1_in1k")  # timm's, checked against the hash in its release file name
    assert a1.sha256 == "14fe96d1" and a1.sha256 in a1.url and a1.data_config.interpolation == "bicubic"
    assert a1.classes == v2.classes and a1.data_config.crop_pct == 0.95
    assert main(["models", "--weights", "resnet20.*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["name"] == "resnet20.rk_cifar10" and rows[0]["metrics"]["cifar10_test_top1"] > 0.88


def test_weights_errors_are_one_line() -> None:
    with pytest.raises(resnetkit.WeightsError, match="are for resnet20, not resnet56"):
        resnetkit.create_model("resnet56", weights="resnet20.rk_cifar10")
    with pytest.raises(resnetkit.WeightsError, match="unknown weights 'resnet20.rk_cifar100'; did you mean"):
        resnetkit.create_model("resnet20", weights="resnet20.rk_cifar100")
    with pytest.raises(
        resnetkit.WeightsError,
        match=r"not cached and RESNETKIT_OFFLINE=1: download https://.*resnet18-.*\.pth to .*weights",
    ):
        resnetkit.create_model("resnet18", weights="resnet18.tv_in1k")


def test_head_can_be_replaced_on_shipped_weights() -> None:
    model = resnetkit.create_model("resnet20", weights="resnet20.rk_cifar10", num_classes=2)
    ref = resnetkit.create_model("resnet20", weights="resnet20.rk_cifar10")
    assert model.fc.out_features == 2 and torch.equal(model.conv1.weight, ref.conv1.weight)
