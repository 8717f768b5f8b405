"""Preprocessing presets. `DataConfig` is the single record of how a model wants its input prepared."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class DataConfig:
    """What a data pipeline needs to feed a model: read from `model.default_cfg`, never retyped.

    `crop_pct` follows timm: evaluation resizes the short side to size / crop_pct, then center-crops `size`.
    """

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    def with_channels(self, in_chans: int) -> DataConfig:
        """The same config for an input with `in_chans` channels (mean/std averaged when they no longer fit)."""
        if in_chans == len(self.mean):
            return self
        mean = (sum(self.mean) / len(self.mean),) * in_chans
        std = (sum(self.std) / len(self.std),) * in_chans
        return replace(self, input_size=(in_chans, *self.input_size[1:]), mean=mean, std=std)

    def to_dict(self) -> dict[str, Any]:
        """Plain types, for JSON and checkpoints."""
        return asdict(self)
