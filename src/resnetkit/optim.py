"""Optimizer and learning-rate schedules, all stepped per iteration."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from resnetkit.config import OPTIMIZERS


def param_groups(model: nn.Module, weight_decay: float, no_decay_bn_bias: bool) -> list[dict]:
    """One group, or two with BatchNorm parameters and biases (all 1-d tensors) excluded from weight decay."""
    if not no_decay_bn_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_sgd(
    model: nn.Module, lr: float, momentum: float, weight_decay: float, nesterov: bool, no_decay_bn_bias: bool
) -> torch.optim.SGD:
    groups = param_groups(model, weight_decay, no_decay_bn_bias)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)


def build_optimizer(
    name: str, groups: list[dict], lr: float, momentum: float = 0.9, nesterov: bool = False
) -> torch.optim.Optimizer:
    """SGD with momentum (the papers') or AdamW (decoupled weight decay, Loshchilov & Hutter; `momentum` is its
    beta1) over parameter `groups` that carry their own weight decay."""
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    if name != "sgd":
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)


def lr_factor(
    schedule: str,
    total_steps: int,
    warmup_steps: int = 0,
    milestones: Sequence[float] = (0.5, 0.75),
    warmup_constant_factor: float | None = None,
) -> Callable[[int], float]:
    """The multiplier of the base learning rate at each step.

    paper: divided by 10 at each milestone (fractions of all steps: 32k and 48k of 64k in the paper), with an
    optional constant warm-up (0.1 x lr for ResNet-110, section 4.2). cosine: linear warm-up, then cosine to 0.
    onecycle: linear warm-up, then linear decay to 0. constant: warm-up, then 1.
    """
    total = max(total_steps, 1)
    bounds = [int(round(m * total)) for m in milestones]

    def factor(step: int) -> float:
        if step < warmup_steps:
            if warmup_constant_factor is not None:
                return warmup_constant_factor
            return (step + 1) / warmup_steps
        if schedule == "paper":
            return 0.1 ** sum(step >= b for b in bounds)
        progress = (step - warmup_steps) / max(total - warmup_steps, 1)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        if schedule == "onecycle":
            return max(1.0 - progress, 0.0)
        return 1.0

    return factor


def build_schedule(optimizer: torch.optim.Optimizer, factor: Callable[[int], float]) -> LambdaLR:
    return LambdaLR(optimizer, factor)
