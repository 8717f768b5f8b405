"""Normalisation layer choice: a callable taking the channel count, or one of a few names (for YAML)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

NormLayer = Callable[[int], nn.Module]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, all buffers (detection backbones' choice).

    Same buffer names as nn.BatchNorm2d, so BatchNorm checkpoints load; written here rather than imported from
    torchvision.ops, whose import alone costs seconds at every CLI start.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        state_dict.pop(prefix + "num_batches_tracked", None)  # BatchNorm's counter has no meaning here
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


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
