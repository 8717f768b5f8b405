"""An exponential moving average of a model's weights and BatchNorm statistics (Polyak averaging, as timm's
ModelEmaV3 and torchvision's reference recipes use it), built on PyTorch's `torch.optim.swa_utils.AveragedModel`.
The trainer evaluates and checkpoints it; `eval`, `predict` and export use its weights when a checkpoint has them."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightEma:
    """ema = decay x ema + (1 - decay) x weights, every `every` optimisation steps (the first update copies)."""

    def __init__(self, model: nn.Module, decay: float, every: int = 1) -> None:
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.averaged.requires_grad_(False)
        self.every = every

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the weights after optimisation step `step` (counted from 1) in, on every `every`-th step."""
        if step % self.every == 0:
            self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        weights = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        return {"weights": weights, "n_averaged": int(self.averaged.n_averaged)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["weights"])
        self.averaged.n_averaged.fill_(int(state["n_averaged"]))
