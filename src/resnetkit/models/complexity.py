"""Parameter and multiply-accumulate counts, computed on the meta device (no memory, no arithmetic)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on one image of `input_size` (C, H, W).

    Convolutions and linear layers only, the convention torchvision's and the paper's FLOP figures use
    (ResNet-50: 4.1 G). Runs on the model's own device, so a model built on "meta" costs nothing.
    """
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += m.in_features * m.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total
