"""Registry entries: every named architecture, as data (block, stage depths, options, preprocessing)."""

from __future__ import annotations

from functools import partial
from typing import Any

from resnetkit.constants import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
from resnetkit.model_registry import register_model
from resnetkit.models.blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, ResidualBlock
from resnetkit.models.resnet import ResNet
from resnetkit.transforms import DataConfig

IMAGENET_CFG = DataConfig(input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=0.875)
CIFAR_CFG = DataConfig(input_size=(3, 32, 32), mean=CIFAR10_MEAN, std=CIFAR10_STD, crop_pct=1.0, preset="cifar")

_IMAGENET_DEPTHS: dict[int, tuple[type[ResidualBlock], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
_PREACT = {BasicBlock: PreActBasicBlock, Bottleneck: PreActBottleneck}


def _register_imagenet(name: str, depth: int, description: str, *, preact: bool = False, **options: Any) -> None:
    block, layers = _IMAGENET_DEPTHS[depth]
    if preact:
        block = _PREACT[block]
    builder = partial(ResNet, block, layers, stem="imagenet", default_cfg=IMAGENET_CFG, **options)
    register_model(name, builder, family=_family("imagenet", options, preact), description=description)


def _register_cifar(name: str, block: type[ResidualBlock], n: int, description: str, **options: Any) -> None:
    builder = partial(
        ResNet, block, (n, n, n), widths=(16, 32, 64), stem="cifar", num_classes=10, default_cfg=CIFAR_CFG, **options
    )
    register_model(name, builder, family=_family("cifar", options, block.preact), description=description)


def _family(style: str, options: dict[str, Any], preact: bool) -> str:
    """The row group of `resnetkit models`: imagenet, imagenet-plain, cifar-preact, ..."""
    if preact:
        return f"{style}-preact"
    if options.get("shortcut") == "none":
        return f"{style}-plain"
    if options.get("groups", 1) > 1:
        return f"{style}-resnext"
    if options.get("width_per_group", 64) > 64:
        return f"{style}-wide"
    return style


def _register_all() -> None:
    for depth in _IMAGENET_DEPTHS:
        _register_imagenet(f"resnet{depth}", depth, f"ResNet-{depth}, ImageNet style, v1.5 (He et al., 2015)")
        _register_imagenet(f"plain{depth}", depth, f"plain {depth}-layer twin of resnet{depth}", shortcut="none")
        _register_imagenet(
            f"preact_resnet{depth}", depth, f"pre-activation ResNet-{depth} (He et al., 2016)", preact=True
        )
    for depth in (50, 101):
        _register_imagenet(f"wide_resnet{depth}_2", depth, "Wide ResNet, 2x bottleneck width", width_per_group=128)
    for depth, groups, width in ((50, 32, 4), (101, 32, 8), (101, 64, 4)):
        desc = f"ResNeXt-{depth} {groups}x{width}d (Xie et al., 2017)"
        _register_imagenet(f"resnext{depth}_{groups}x{width}d", depth, desc, groups=groups, width_per_group=width)
    for depth in (20, 32, 44, 56, 110, 1202):
        n = (depth - 2) // 6
        desc = f"the paper's CIFAR ResNet-{depth} (6n+2, n={n}), option A shortcuts"
        _register_cifar(f"resnet{depth}", BasicBlock, n, desc, shortcut="A")
        if depth != 1202:
            _register_cifar(
                f"plain{depth}", BasicBlock, n, f"plain {depth}-layer twin of CIFAR resnet{depth}", shortcut="none"
            )
    _register_cifar("preact_resnet110", PreActBasicBlock, 18, "pre-activation CIFAR ResNet-110 (He et al., 2016)")
    for depth in (164, 1001):
        n = (depth - 2) // 9
        desc = f"pre-activation bottleneck CIFAR ResNet-{depth} (9n+2, n={n}, He et al., 2016)"
        _register_cifar(f"preact_resnet{depth}", PreActBottleneck, n, desc)


_register_all()
