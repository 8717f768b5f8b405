"""Detectors on resnetkit backbones: torchvision's Faster R-CNN (v1, v2), RetinaNet (v1, v2), Mask R-CNN (v1, v2)
and Keypoint R-CNN, built exactly as torchvision builds its ResNet-50 ones, with any registered ImageNet-style
resnetkit network as the backbone. Nothing is re-implemented: the FPN, heads, anchors and losses are
torchvision's; resnetkit supplies the network (same module names, so torchvision's state dicts load key for key).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, RPNHead, _default_anchorgen
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.retinanet import _default_anchorgen as _retinanet_anchorgen
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from resnetkit.errors import ModelArgumentError
from resnetkit.models import create_model, get_model_entry

DETECTORS = ("fasterrcnn", "fasterrcnn_v2", "retinanet", "retinanet_v2", "maskrcnn", "maskrcnn_v2", "keypointrcnn")
FPN_CHANNELS = 256
_TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


def resnet_fpn_backbone(
    backbone: str = "resnet50",
    *,
    weights: str | None = None,
    trainable_layers: int | None = None,
    trained: bool | None = None,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    extra_blocks: ExtraFPNBlock | None = None,
    norm_layer: str | None = None,
    fpn_norm_layer: type[nn.Module] | None = None,
) -> BackboneWithFPN:
    """A resnetkit network under torchvision's feature pyramid. As torchvision does: with `weights` (a registered
    name, file or checkpoint's weights) the BatchNorm statistics are frozen and the last `trainable_layers` (default
    3) of conv1, layer1..4 train; without, plain BatchNorm and everything trains (5). `trained` says the same
    without `weights`: weights for the whole detector will be loaded over it."""
    entry = get_model_entry(backbone)
    if not entry.family.startswith("imagenet"):
        raise ModelArgumentError(f"{backbone} is a CIFAR network; detection backbones are ImageNet-style (resnet50...)")
    trained = weights is not None if trained is None else trained
    layers = _trainable_layers(trained, trainable_layers)
    norm = norm_layer or ("frozen_batchnorm" if trained else "batchnorm")
    body = create_model(backbone, weights=weights, norm_layer=norm)
    for name, parameter in body.named_parameters():
        if not any(name.startswith(layer) for layer in (*_TRAINABLE_ORDER[:layers], *(["bn1"] if layers == 5 else []))):
            parameter.requires_grad_(False)
    channels = {f"layer{i}": info["num_chs"] for i, info in enumerate(body.feature_info)}
    return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned_layers)}
    return BackboneWithFPN(
        body,
        return_layers,
        [channels[name] for name in return_layers],
        FPN_CHANNELS,
        extra_blocks=extra_blocks or LastLevelMaxPool(),
        norm_layer=fpn_norm_layer,
    )


def _trainable_layers(trained: bool, asked: int | None) -> int:
    if asked is not None and not 0 <= asked <= 5:
        raise ModelArgumentError(f"trainable_layers must be 0 to 5 (of conv1, layer1..layer4), got {asked}")
    if not trained:
        return 5  # random backbone weights: nothing to keep (torchvision ignores the argument too)
    return 3 if asked is None else asked


def create_detector(
    kind: str,
    backbone: str = "resnet50",
    *,
    num_classes: int | None = None,
    weights_backbone: str | None = None,
    trainable_layers: int | None = None,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """`kind` (one of DETECTORS) on `backbone`; `kwargs` go to torchvision's detector (min_size, box_score_thresh...).
    The defaults are torchvision's: 91 COCO classes (2 and 17 keypoints for Keypoint R-CNN). `pretrained`: whole-
    detector weights will be loaded (tasks.pretrained), so the backbone is built as for trained weights (frozen
    BatchNorm in v1, 3 trainable layers), as torchvision's builders do when given COCO weights.

    The detector records how it was built (`model_name`, `model_kwargs`, `task`), as create_model's networks do,
    so that a checkpoint rebuilds it."""
    if kind not in DETECTORS:
        raise ModelArgumentError(f"unknown detector {kind!r}; choose one of {', '.join(DETECTORS)}")
    record = {
        "backbone": backbone,
        "num_classes": num_classes,
        "trainable_layers": trainable_layers,
        "pretrained": pretrained or weights_backbone is not None,
        **kwargs,
    }
    model = _build_detector(kind, backbone, num_classes, weights_backbone, trainable_layers, pretrained, kwargs)
    model.model_name, model.model_kwargs, model.task = kind, record, "detection"
    return model


def set_score_threshold(detector: nn.Module, threshold: float) -> None:
    """The least score a detection keeps, set inside the model (RetinaNet's `score_thresh`, the R-CNNs' box head's),
    so that a threshold below torchvision's default 0.05 keeps those boxes too."""
    if isinstance(detector, RetinaNet):
        detector.score_thresh = threshold
    else:
        detector.roi_heads.score_thresh = threshold


def _build_detector(
    kind: str,
    backbone: str,
    num_classes: int | None,
    weights_backbone: str | None,
    trainable_layers: int | None,
    pretrained: bool,
    kwargs: dict[str, Any],
) -> nn.Module:
    opts = dict(weights=weights_backbone, trainable_layers=trainable_layers, trained=pretrained or None)
    kwargs = dict(kwargs)
    if kind.startswith("retinanet"):
        return _retinanet(kind, backbone, num_classes or 91, opts, kwargs)
    v2 = kind.endswith("_v2")
    fpn = resnet_fpn_backbone(
        backbone, **opts, **({"norm_layer": "batchnorm", "fpn_norm_layer": nn.BatchNorm2d} if v2 else {})
    )
    if kind == "keypointrcnn":
        return KeypointRCNN(fpn, num_classes or 2, num_keypoints=kwargs.pop("num_keypoints", 17), **kwargs)
    if v2:
        kwargs |= _v2_heads(fpn.out_channels, mask=kind == "maskrcnn_v2")
    return (MaskRCNN if kind.startswith("maskrcnn") else FasterRCNN)(fpn, num_classes=num_classes or 91, **kwargs)


def _v2_heads(channels: int, mask: bool) -> dict[str, nn.Module]:
    """The heads of torchvision's "v2" R-CNNs (Li et al., "Benchmarking Detection Transfer Learning with ViTs")."""
    anchors = _default_anchorgen()
    heads: dict[str, Any] = {
        "rpn_anchor_generator": anchors,
        "rpn_head": RPNHead(channels, anchors.num_anchors_per_location()[0], conv_depth=2),
        "box_head": FastRCNNConvFCHead((channels, 7, 7), [256, 256, 256, 256], [1024], norm_layer=nn.BatchNorm2d),
    }
    if mask:
        heads["mask_head"] = MaskRCNNHeads(channels, [256, 256, 256, 256], 1, norm_layer=nn.BatchNorm2d)
    return heads


def _retinanet(kind: str, backbone: str, num_classes: int, opts: dict[str, Any], kwargs: dict[str, Any]) -> RetinaNet:
    """RetinaNet skips P2 (too many anchors) and adds P6/P7: from P5 (v1) or from C5 (v2, with GroupNorm heads and
    the GIoU box loss)."""
    if kind == "retinanet":
        fpn = resnet_fpn_backbone(backbone, returned_layers=(2, 3, 4), extra_blocks=LastLevelP6P7(256, 256), **opts)
        return RetinaNet(fpn, num_classes, **kwargs)
    with torch.device("meta"):  # the last stage's channels (2048 for ResNet-50), read from the architecture
        last = create_model(backbone).feature_info[-1]["num_chs"]
    fpn = resnet_fpn_backbone(
        backbone, returned_layers=(2, 3, 4), extra_blocks=LastLevelP6P7(last, 256), norm_layer="batchnorm", **opts
    )
    anchors = _retinanet_anchorgen()
    head = RetinaNetHead(
        fpn.out_channels, anchors.num_anchors_per_location()[0], num_classes, norm_layer=partial(nn.GroupNorm, 32)
    )
    head.regression_head._loss_type = "giou"
    return RetinaNet(fpn, num_classes, anchor_generator=anchors, head=head, **kwargs)
