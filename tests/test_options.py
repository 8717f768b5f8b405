"""The timm-style options: zero_init_residual, drop_path_rate, in_chans, norm_layer, shortcuts, features_only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import resnetkit
from resnetkit.layers import DropPath, FrozenBatchNorm2d, OptionAShortcut
from resnetkit.models import ResidualBlock


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet20", "preact_resnet110", "preact_resnet50"])
def test_zero_init_residual_makes_every_block_start_as_identity(name: str) -> None:
    model = resnetkit.create_model(name, zero_init_residual=True).eval()
    blocks = [m for m in model.modules() if isinstance(m, ResidualBlock) and m.downsample is None]
    x = torch.rand(1, blocks[0].conv1.in_channels, 8, 8)
    for block in blocks[:2]:
        expected = x if block.preact else torch.relu(x)
        assert torch.equal(block(x), expected)


def test_zero_init_residual_needs_shortcuts() -> None:
    with pytest.raises(ValueError, match="needs shortcuts"):
        resnetkit.create_model("plain20", zero_init_residual=True)


def test_drop_path_rate_grows_linearly_and_only_acts_in_training() -> None:
    model = resnetkit.create_model("resnet20", drop_path_rate=0.2)
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert len(rates) == 8 and rates[-1] == pytest.approx(0.2)  # the first of 9 blocks has rate 0: Identity
    assert rates == sorted(rates)
    x = torch.randn(8, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        torch.manual_seed(0)
        a = model(x)
        torch.manual_seed(1)
        assert not torch.equal(a, model(x))
    assert not any(isinstance(m, DropPath) for m in resnetkit.create_model("plain20", drop_path_rate=0.2).modules())


@pytest.mark.parametrize("in_chans", [1, 4])
def test_in_chans(in_chans: int) -> None:
    model = resnetkit.create_model("resnet18", in_chans=in_chans, num_classes=5)
    assert model.conv1.in_channels == in_chans
    assert model(torch.randn(2, in_chans, 64, 64)).shape == (2, 5)
    assert model.default_cfg.input_size[0] == in_chans == len(model.default_cfg.std)


def test_in_chans_adaptation_of_pretrained_weights_for_four_channels() -> None:
    from resnetkit.weights import adapt_input_conv

    w = torch.randn(64, 3, 7, 7)
    four = adapt_input_conv(w, 4)
    assert four.shape == (64, 4, 7, 7)
    # RGB repeated (R, G, B, R) and scaled by 3/4, so an input with equal channels keeps its response scale.
    torch.testing.assert_close(four, torch.cat([w, w[:, :1]], dim=1) * 0.75)
    assert adapt_input_conv(w, 1).shape == (64, 1, 7, 7)


@pytest.mark.parametrize(
    ("norm", "cls"),
    [
        ("groupnorm", nn.GroupNorm),
        ("frozen_batchnorm", FrozenBatchNorm2d),
        (lambda c: nn.InstanceNorm2d(c, affine=True), nn.InstanceNorm2d),
    ],
)
def test_norm_layer(norm, cls) -> None:
    model = resnetkit.create_model("resnet20", norm_layer=norm)
    assert isinstance(model.bn1, cls) and isinstance(model.layer3[2].bn2, cls)
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()


def test_norm_layer_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown norm_layer 'layernorm'; choose one of batchnorm"):
        resnetkit.create_model("resnet20", norm_layer="layernorm")


def test_shortcut_options() -> None:
    def downsamples(model: nn.Module) -> list:
        return [m.downsample for m in model.modules() if isinstance(m, ResidualBlock)]

    a = downsamples(resnetkit.create_model("resnet20"))
    assert sum(isinstance(d, OptionAShortcut) for d in a) == 2 and a.count(None) == 7
    b = downsamples(resnetkit.create_model("resnet20", shortcut="B"))
    assert sum(isinstance(d, nn.Sequential) for d in b) == 2 and b.count(None) == 7
    c = downsamples(resnetkit.create_model("resnet20", shortcut="C"))
    assert all(isinstance(d, nn.Sequential) for d in c)
    with pytest.raises(ValueError, match="unknown shortcut option 'D'"):
        resnetkit.create_model("resnet20", shortcut="D")


@pytest.mark.parametrize(
    ("name", "channels", "reductions", "side"),
    [
        ("resnet50", [64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32], 224),
        ("resnet18", [64, 64, 128, 256, 512], [2, 4, 8, 16, 32], 96),
        ("resnet20", [16, 16, 32, 64], [1, 1, 2, 4], 32),
        ("preact_resnet164", [16, 64, 128, 256], [1, 1, 2, 4], 32),
        ("preact_resnet18", [64, 64, 128, 256, 512], [2, 4, 8, 16, 32], 64),
    ],
)
def test_features_only_shapes(name: str, channels: list[int], reductions: list[int], side: int) -> None:
    fx = resnetkit.create_model(name, features_only=True).eval()
    assert fx.feature_info.channels() == channels and fx.feature_info.reduction() == reductions
    with torch.no_grad():
        maps = fx(torch.randn(1, 3, side, side))
    assert [tuple(m.shape) for m in maps] == [
        (1, c, side // r, side // r) for c, r in zip(channels, reductions, strict=True)
    ]


def test_features_only_out_indices_and_checkpoint_names() -> None:
    full = resnetkit.create_model("resnet50").eval()
    fx = resnetkit.create_model("resnet50", features_only=True, out_indices=(2, 4)).eval()
    assert fx.feature_info.channels() == [512, 2048] and fx.feature_info.module_name() == ["layer2", "layer4"]
    assert set(fx.state_dict()) == {k for k in full.state_dict() if not k.startswith("fc.")}
    fx.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fx(x)[-1], full.forward_features(x))
    short = resnetkit.create_model("resnet50", features_only=True, out_indices=(1,))
    assert not hasattr(short, "layer2")  # stops at the deepest requested stage
    with pytest.raises(ValueError, match=r"out_indices \[5\] out of range; valid indices are 0\.\.4"):
        resnetkit.create_model("resnet50", features_only=True, out_indices=(5,))


def test_frozen_batchnorm_matches_eval_batchnorm_and_loads_its_checkpoint() -> None:
    import torchvision

    bn = nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_()
        bn.bias.normal_()
    frozen = FrozenBatchNorm2d(8)
    frozen.load_state_dict(bn.state_dict())
    reference = torchvision.ops.FrozenBatchNorm2d(8)
    reference.load_state_dict(bn.state_dict())
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(frozen(x), bn.eval()(x))
    torch.testing.assert_close(frozen(x), reference(x))
    assert not any(p.requires_grad for p in frozen.parameters())
