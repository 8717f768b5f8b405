"""The training step, one epoch, and evaluation. No architecture names, no printing."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from resnetkit.compress.distill import Distillation
from resnetkit.distributed import all_reduce_sum
from resnetkit.metrics import confusion_matrix, per_class_accuracy, topk_correct


@dataclass
class Mixing:
    """Mixup (Zhang et al., 2018) / CutMix (Yun et al., 2019) strengths; 0 disables each."""

    mixup: float = 0.0
    cutmix: float = 0.0

    def apply(
        self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """Mixed inputs, both label sets and the weight of the first; a no-op when both strengths are 0."""
        if not (self.mixup or self.cutmix):
            return x, y, y, 1.0
        perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
        use_cutmix = self.cutmix > 0 and (self.mixup == 0 or torch.rand(1, generator=gen).item() < 0.5)
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = _beta(alpha, gen)
        if not use_cutmix:
            return lam * x + (1 - lam) * x[perm], y, y[perm], lam
        h, w = x.shape[-2:]
        ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
        cy, cx = int(torch.randint(h, (1,), generator=gen)), int(torch.randint(w, (1,), generator=gen))
        y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        return x, y, y[perm], 1 - (y1 - y0) * (x1 - x0) / (h * w)


# A disabled scaler passes every call through (scale returns the loss, step calls optimizer.step): one code path.
_NO_SCALING = torch.amp.GradScaler("cpu", enabled=False)


def _beta(alpha: float, gen: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw from `gen`, the batch's own generator: every process of a torchrun job and every
    resumed run mixes a batch with the same weight (torch.distributions would draw from each process's global RNG)."""
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=gen))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    label_smoothing: float = 0.0,
    mixing: Mixing | None = None,
    gen: torch.Generator | None = None,
    grad_clip: float | None = None,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    distill: Distillation | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step. Returns (loss, number correct) as tensors: no host synchronisation here.

    With `distill`, the teacher's soft targets on the same (mixed) batch join the loss (compress.distill).
    With an (enabled) `scaler`, fp16 autocast's loss is scaled before the backward pass, the gradients are
    unscaled before clipping, and a step whose gradients overflowed is skipped (torch.amp.GradScaler)."""
    ya, yb, lam = y, y, 1.0
    if mixing is not None and gen is not None:
        x, ya, yb, lam = mixing.apply(x, y, gen)
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        logits = model(x)
        loss = F.cross_entropy(logits, ya, label_smoothing=label_smoothing)
        if lam < 1.0:
            loss = lam * loss + (1 - lam) * F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
        if distill is not None:
            loss = distill.combine(loss, logits, x)
    scaler = scaler or _NO_SCALING
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), (logits.detach().argmax(1) == y).sum()


@dataclass
class EvalResult:
    """Aggregate metrics of one pass over a dataset."""

    loss: float
    top1: float
    top5: float
    n: int
    confusion: torch.Tensor

    def to_dict(self, classes: list[str] | None = None) -> dict:
        names = classes or [str(i) for i in range(self.confusion.shape[0])]
        per_class = per_class_accuracy(self.confusion).tolist()
        return {
            "top1": self.top1,
            "top5": self.top5,
            "loss": self.loss,
            "n": self.n,
            "per_class_accuracy": {c: (None if a != a else a) for c, a in zip(names, per_class, strict=True)},
            "classes": names,
            "confusion_matrix": self.confusion.tolist(),
        }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    *,
    tta_flip: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    """Loss, top-1/top-5 accuracy and the confusion matrix (optionally averaging logits with the mirror image).

    Under torchrun each process passes its own shard of the set; the sums are all-reduced, so every process
    returns the metrics of the whole set, each image counted once.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros(2, dtype=torch.int64)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    n = 0
    for x, y in batches:
        logits = model(x).float()
        if tta_flip:
            logits = (logits + model(x.flip(-1)).float()) / 2
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double().cpu()
        correct += topk_correct(logits, y, (1, 5)).cpu()
        confusion += confusion_matrix(logits.argmax(1), y, num_classes).cpu()
        n += y.shape[0]
        if on_batch:
            on_batch(y.shape[0])
    model.train(was_training)
    count = torch.tensor([float(n)], dtype=torch.float64)
    sums = all_reduce_sum(torch.cat([loss_sum.view(1), correct.double(), count]))
    confusion = all_reduce_sum(confusion)
    loss_total, n = float(sums[0]), int(sums[3])
    if n == 0:
        raise ValueError("evaluation saw no images")
    return EvalResult(loss_total / n, float(sums[1]) / n, float(sums[2]) / n, n, confusion)
