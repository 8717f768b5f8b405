"""Shortcut connections of the ResNet paper (He et al., 2015, section 3.3 and Table 3).

Option A: identity, with zero-padding for the extra channels and spatial subsampling where the shape changes
(parameter-free; the paper's CIFAR networks). Option B: projection only where the shape changes.
Option C: projection on every shortcut. "none": no shortcut at all, the paper's plain networks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SHORTCUT_OPTIONS = ("A", "B", "C", "none")


def option_a_shortcut(x: torch.Tensor, out_channels: int, stride: int) -> torch.Tensor:
    """Subsample x[:, :, ::s, ::s] and zero-pad the new channels equally before and after the old ones.

    This is the layout of the widely used public CIFAR ResNet checkpoints (e.g. planes // 4 on each side
    when the width doubles), so their weights give the same outputs here.
    """
    if stride > 1:
        x = x[:, :, ::stride, ::stride]
    extra = out_channels - x.shape[1]
    if extra <= 0:
        return x
    before = extra // 2
    return F.pad(x, (0, 0, 0, 0, before, extra - before))


class OptionAShortcut(nn.Module):
    """Module form of `option_a_shortcut` (no parameters, so state dict keys are unaffected)."""

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return option_a_shortcut(x, self.out_channels, self.stride)

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, stride={self.stride}"
