"""Semantic segmentation on resnetkit backbones: torchvision's FCN and DeepLabV3 heads on a dilated network
(`output_stride` 8, as torchvision's `fcn_resnet50` / `deeplabv3_resnet50`; 16 is possible too). The heads, the
upsampling and the auxiliary loss are torchvision's; the module names are too, so its state dicts load unchanged."""

from __future__ import annotations

from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCN, FCNHead

from resnetkit.errors import ModelArgumentError
from resnetkit.models import create_model, get_model_entry

SEGMENTERS = ("fcn", "deeplabv3")


def create_segmenter(
    kind: str,
    backbone: str = "resnet50",
    *,
    num_classes: int = 21,
    aux_loss: bool = False,
    weights_backbone: str | None = None,
    output_stride: int = 8,
) -> nn.Module:
    """`kind` (fcn or deeplabv3) on `backbone` at `output_stride`; 21 classes (Pascal VOC's) by default, as
    torchvision's. `aux_loss` adds the FCN head on the third stage that torchvision trains with."""
    if kind not in SEGMENTERS:
        raise ModelArgumentError(f"unknown segmentation model {kind!r}; choose one of {', '.join(SEGMENTERS)}")
    if not get_model_entry(backbone).family.startswith("imagenet"):
        raise ModelArgumentError(f"{backbone} is a CIFAR network; segmentation backbones are ImageNet-style")
    net = create_model(backbone, weights=weights_backbone, output_stride=output_stride)
    return_layers = {"layer4": "out"} | ({"layer3": "aux"} if aux_loss else {})
    channels = {f"layer{i}": info["num_chs"] for i, info in enumerate(net.feature_info)}
    body = IntermediateLayerGetter(net, return_layers=return_layers)
    aux = FCNHead(channels["layer3"], num_classes) if aux_loss else None
    head = (FCNHead if kind == "fcn" else DeepLabHead)(channels["layer4"], num_classes)
    model = (FCN if kind == "fcn" else DeepLabV3)(body, head, aux)
    model.model_name, model.task = kind, "segmentation"  # how to rebuild it, as create_model's networks record
    model.model_kwargs = {
        "backbone": backbone,
        "num_classes": num_classes,
        "aux_loss": aux_loss,
        "output_stride": output_stride,
    }
    return model
