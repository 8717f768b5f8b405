"""Gradient flow: per-layer gradient norms and per-unit activation statistics of a model, for plain and residual
networks (the vanishing / exploding gradients the paper's shortcuts ease). The experiment that trains models and
measures them along the way is `experiments.gradflow`, beside the degradation experiment.

Every snapshot is measured on one fixed probe batch, in training mode (BatchNorm normalises with the batch's
statistics, as in a training step), without changing the model: BatchNorm's running statistics are restored
and no `.grad` is touched (gradients come from `torch.autograd.grad`). Activation hooks are removed on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnetkit.explain.gradcam import layer_names


@dataclass
class FlowSnapshot:
    """What one probe batch showed at one training step of one model."""

    model: str
    plain: bool
    step: int
    loss: float
    layers: list[str]  # weight layers (convolutions, the classifier) in the order they run
    grad_norms: list[float]
    weight_norms: list[float]
    units: list[str]  # the stem's modules and every block, in the order they run
    act_mean: list[float]
    act_std: list[float]


def units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of `model.feature_groups` with each stage (an nn.Sequential) opened into its blocks."""
    found = []
    for name in layer_names(model):
        module = model.get_submodule(name)
        if isinstance(module, nn.Sequential):
            found += [(f"{name}.{i}", block) for i, block in enumerate(module)]
        else:
            found.append((name, module))
    return found


@contextmanager
def record_activations(model: nn.Module) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Within the block, every unit's forward output leaves its (mean, std) in the yielded dict."""
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str) -> Any:
        def keep(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            out = output.detach().float()
            stats[name] = (out.mean(), out.std())

        return keep

    handles = [module.register_forward_hook(hook(name)) for name, module in units(model)]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def weight_layers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, weight) of every convolution and linear layer, in definition order (the order they run here)."""
    return [(n, m.weight) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def measure_flow(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Loss, per-layer gradient and weight norms, per-unit activation mean and std on (x, y); the model's state
    (running statistics, mode, gradients) is left as it was."""
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    was_training = model.training
    model.train()
    layers = weight_layers(model)
    try:
        with torch.enable_grad(), record_activations(model) as stats:
            loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, [w for _, w in layers])
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
        model.train(was_training)
    return {
        "loss": float(loss.detach()),
        "layers": [n for n, _ in layers],
        "grad_norms": [float(g.norm()) for g in grads],
        "weight_norms": [float(w.detach().norm()) for _, w in layers],
        "units": list(stats),
        "act_mean": [float(m) for m, _ in stats.values()],
        "act_std": [float(s) for _, s in stats.values()],
    }


def first_to_last_ratio(snapshot: FlowSnapshot) -> float:
    """Gradient norm of the first weight layer (the stem's convolution) over that of the last (the classifier):
    far below 1 means the gradient vanishes on its way to the early layers, far above 1 that it explodes."""
    norms = snapshot.grad_norms
    return norms[0] / norms[-1] if norms and norms[-1] > 0 else float("nan")
