"""Every registered model builds, runs, trains and exposes the one model API (ARCHITECTURE.md, test 1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import resnetkit
from resnetkit.models import ResidualBlock

ALL = resnetkit.list_models()
HEAVY = {"resnet1202", "preact_resnet1001", "wide_resnet101_2", "resnext101_32x8d", "resnext101_64x4d"}


def _input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    c, h, _ = model.default_cfg.input_size
    side = 64 if h > 32 else 32  # ImageNet-style nets at 64x64 keep the test fast; the stride-32 map is 2x2
    return torch.randn(batch, c, side, side, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in ALL])
def test_every_model_builds_runs_and_trains(name: str) -> None:
    torch.manual_seed(0)
    model = resnetkit.create_model(name, num_classes=7)
    x = _input(model)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    grad = model.conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    feats = model.forward_features(x)
    reduction = model.feature_info[-1]["reduction"]
    assert feats.shape == (2, model.num_features, x.shape[2] // reduction, x.shape[3] // reduction)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)


def test_registry_covers_the_issue_and_refuses_duplicates() -> None:
    wanted = {
        *(f"resnet{d}" for d in (18, 34, 50, 101, 152, 20, 32, 44, 56, 110, 1202)),
        "wide_resnet50_2",
        "wide_resnet101_2",
        "resnext50_32x4d",
        "resnext101_32x8d",
        *(f"plain{d}" for d in (20, 32, 44, 56, 110, 18, 34)),
        *(f"preact_resnet{d}" for d in (110, 164, 1001, 18, 34, 50, 101, 152)),
    }
    assert wanted <= set(ALL)
    assert resnetkit.list_models("resnext*") == ["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"]
    from resnetkit.model_registry import register_model

    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet50", lambda: None, family="x", description="x")


def test_unknown_model_lists_close_matches() -> None:
    with pytest.raises(resnetkit.UnknownModelError, match=r"unknown model 'resnet5'; did you mean: .*resnet56"):
        resnetkit.create_model("resnet5")


@pytest.mark.parametrize(
    ("name", "preset"),
    [
        ("resnet20", "cifar"),
        ("plain56", "cifar"),
        ("preact_resnet110", "cifar"),
        ("resnet18", "imagenet"),
        ("resnext50_32x4d", "imagenet"),
        ("wide_resnet50_2", "imagenet"),
    ],
)
def test_each_family_says_its_preprocessing_preset(name: str, preset: str) -> None:
    """The preset is carried by the model's data config (and its weights'), never guessed from crop_pct."""
    from resnetkit.models import resolve_data_config
    from resnetkit.runtime import Predictor

    assert resnetkit.create_model(name).default_cfg.preset == preset
    assert resolve_data_config(name).preset == preset
    if name == "resnet20":
        assert Predictor.load("resnet20.rk_cifar10").preprocessing.kind == "cifar"


def test_model_api_reset_classifier_and_default_cfg() -> None:
    model = resnetkit.create_model("resnet20")
    assert model.default_cfg.input_size == (3, 32, 32) and model.default_cfg.crop_pct == 1.0
    assert resnetkit.create_model("resnet50").default_cfg.mean == (0.485, 0.456, 0.406)
    model.reset_classifier(3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3) and model.num_classes == 3
    model.reset_classifier(0)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    assert resnetkit.create_model("resnet18", num_classes=0)(torch.randn(1, 3, 64, 64)).shape == (1, 512)


@pytest.mark.parametrize(("name", "blocks"), [("resnet20", 9), ("plain20", 0), ("preact_resnet110", 54)])
def test_plain_nets_have_no_shortcut(name: str, blocks: int) -> None:
    model = resnetkit.create_model(name)
    all_blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    assert sum(b.has_shortcut for b in all_blocks) == blocks
    if blocks == 0:
        assert all(b.downsample is None for b in all_blocks)


def test_plain_net_output_is_not_a_sum_with_the_input() -> None:
    # With all branch weights zero, a residual block passes relu(x) through; a plain block outputs zero.
    x = torch.rand(1, 16, 8, 8)
    for name, expect_identity in (("resnet20", True), ("plain20", False)):
        block = resnetkit.create_model(name).layer1[0].eval()
        nn.init.zeros_(block.bn2.weight)
        nn.init.zeros_(block.bn2.bias)
        out = block(x)
        assert torch.equal(out, x) is expect_identity
