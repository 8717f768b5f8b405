"""Issue 20, item 1: `output_stride` 8 / 16 / 32 (dilated last stages) for the ImageNet-style families, equal to
torchvision's `replace_stride_with_dilation` and timm's `output_stride` with the same weights, on a real photo."""

from __future__ import annotations

import pytest
import torch
import torchvision

from resnetkit.cli.main import main
from resnetkit.errors import ModelArgumentError
from resnetkit.models import create_model

from conftest import require_module, shared_data

DILATE = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}


def _photo() -> torch.Tensor:
    from resnetkit.data.images import read_image

    path = sorted((shared_data("cats_vs_dogs") / "val" / "dog").glob("*.jpg"))[0]
    return ((read_image(path, size=160).float() / 255 - 0.45) / 0.225).unsqueeze(0)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_resnet50_features_equal_torchvision_dilated(output_stride: int) -> None:
    tv = torchvision.models.resnet50(replace_stride_with_dilation=DILATE[output_stride]).eval()
    ours = create_model("resnet50", output_stride=output_stride, features_only=True).eval()
    ours.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    x = _photo()
    with torch.no_grad():
        maps = ours(x)
        t = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        expected = [tv.layer1(t)]
        for layer in (tv.layer2, tv.layer3, tv.layer4):
            expected.append(layer(expected[-1]))
    for got, want in zip(maps[1:], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert maps[-1].shape[-1] == 160 // output_stride
    assert [f["reduction"] for f in ours.feature_info] == [2, 4, 8, min(16, output_stride), output_stride]


@pytest.mark.parametrize("output_stride", [8, 16])
def test_basic_block_networks_dilate_as_timm_does(output_stride: int) -> None:
    timm = require_module("timm")
    ref = timm.create_model("resnet18", output_stride=output_stride, pretrained=False).eval()
    ours = create_model("resnet18", output_stride=output_stride).eval()
    ours.load_state_dict(ref.state_dict())
    x = _photo()
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("name", "output_stride"), [("resnet50", 4), ("resnet50", 12), ("resnet20", 16)])
def test_impossible_output_strides_are_refused(name: str, output_stride: int, tmp_path, capsys) -> None:
    with pytest.raises(ModelArgumentError, match=f"output_stride {output_stride} is not possible"):
        create_model(name, output_stride=output_stride)
    args = [
        "-q",
        "train",
        "--model",
        name,
        "--set",
        f"model_kwargs={{output_stride: {output_stride}}}",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot build {name}: output_stride" in err
    assert not (tmp_path / "run").exists()
