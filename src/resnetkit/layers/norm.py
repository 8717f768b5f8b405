"""Normalisation layer choice: a callable taking the channel count, or one of a few names (for YAML)."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

NormLayer = Callable[[int], nn.Module]


def _group_norm(num_channels: int) -> nn.Module:
    # 32 groups as in Wu & He (2018), fewer when the layer is narrower (CIFAR's 16-channel stage).
    return nn.GroupNorm(math.gcd(32, num_channels), num_channels)


_NAMED: dict[str, NormLayer] = {
    "batchnorm": nn.BatchNorm2d,
    "frozen_batchnorm": FrozenBatchNorm2d,
    "groupnorm": _group_norm,
}


def resolve_norm_layer(norm_layer: str | NormLayer | None) -> NormLayer:
    """BatchNorm by default; a name from `_NAMED`; or any callable `f(num_channels) -> nn.Module`."""
    if norm_layer is None:
        return nn.BatchNorm2d
    if isinstance(norm_layer, str):
        try:
            return _NAMED[norm_layer]
        except KeyError:
            raise ValueError(f"unknown norm_layer {norm_layer!r}; choose one of {', '.join(_NAMED)}") from None
    return norm_layer
