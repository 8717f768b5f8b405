"""features_only=True: the multi-scale feature maps of a backbone, for detection and segmentation heads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from resnetkit.models.resnet import ResNet


class FeatureInfo(list):
    """timm-compatible description of returned feature maps: one dict (num_chs, reduction, module) each."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self]


class FeatureExtractor(nn.Module):
    """Runs a ResNet up to its deepest requested stage and returns the requested maps, shallow to deep.

    The backbone's modules are registered under their own names, so backbone checkpoints load unchanged
    (without the classifier).
    """

    def __init__(self, model: ResNet, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        count = len(model.feature_groups)
        indices = tuple(range(count)) if out_indices is None else tuple(out_indices)
        bad = [i for i in indices if not -count <= i < count]
        if bad or not indices:
            raise ValueError(f"out_indices {list(indices)} out of range; valid indices are 0..{count - 1}")
        self.out_indices = tuple(sorted({i % count for i in indices}))
        self._groups = model.feature_groups[: self.out_indices[-1] + 1]
        for group in self._groups:
            for name in group:
                self.add_module(name, getattr(model, name))
        self.feature_info = FeatureInfo(model.feature_info[i] for i in self.out_indices)
        self.default_cfg = model.default_cfg
        self.model_name: str | None = getattr(model, "model_name", None)
        self.model_kwargs: dict[str, Any] = dict(getattr(model, "model_kwargs", {}))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for index, group in enumerate(self._groups):
            for name in group:
                x = self._modules[name](x)
            if index in self.out_indices:
                outs.append(x)
        return outs
