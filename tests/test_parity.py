"""Parity with the references: torchvision and timm state dicts load with strict=True and give the same outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

import resnetkit
from resnetkit.layers import option_a_shortcut

from conftest import randomize_norm_stats, require_module

TORCHVISION = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
]
SLOW = {"resnet152", "wide_resnet101_2", "resnext101_32x8d", "resnext101_64x4d"}


def _assert_same_outputs(reference: torch.nn.Module, name: str, side: int = 64) -> None:
    randomize_norm_stats(reference)
    ours = resnetkit.create_model(name)
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.eval()
    ours.eval()
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in TORCHVISION])
def test_torchvision_parity(name: str) -> None:
    torch.manual_seed(0)
    _assert_same_outputs(getattr(torchvision.models, name)(), name)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_timm_parity(name: str) -> None:
    timm = require_module("timm")
    torch.manual_seed(0)
    _assert_same_outputs(timm.create_model(name, pretrained=False), name)


def test_torchvision_keys_and_shapes_identical_for_every_shared_model() -> None:
    for name in TORCHVISION:
        with torch.device("meta"):
            ref = getattr(torchvision.models, name)()
            ours = resnetkit.create_model(name)
        ref_shapes = {k: v.shape for k, v in ref.state_dict().items()}
        assert {k: v.shape for k, v in ours.state_dict().items()} == ref_shapes, name


def test_option_a_is_the_public_cifar_layout() -> None:
    # The widely used public CIFAR ResNet code: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)).
    x = torch.randn(2, 16, 32, 32)
    ref = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 32 // 4, 32 // 4), "constant", 0)
    assert torch.equal(option_a_shortcut(x, 32, 2), ref)
    block = resnetkit.create_model("resnet20").layer2[0]
    assert block.downsample.out_channels == 32 and block.downsample.stride == 2


def test_public_cifar_checkpoint_layout_loads(tmp_path) -> None:
    # Same keys as the public CIFAR ResNet checkpoints: DataParallel prefix, classifier named `linear`.
    src = randomize_norm_stats(resnetkit.create_model("resnet20")).eval()
    state = {"state_dict": {"module." + k.replace("fc.", "linear."): v for k, v in src.state_dict().items()}}
    path = tmp_path / "resnet20-12fca82f.th"
    torch.save(state, path)
    loaded = resnetkit.create_model("resnet20", weights=path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), src(x))


def test_paper_stride_placement_flag() -> None:
    v15 = resnetkit.create_model("resnet50")
    v1 = resnetkit.create_model("resnet50", stride_in_1x1=True)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    assert v1(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
