"""Per-image predictions over a dataset: the logits behind every aggregate metric, kept for reports."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from resnetkit.engine.loop import EvalResult
from resnetkit.metrics import confusion_matrix, precision_recall_f1, reliability, topk_correct

ECE_BINS = 15  # Guo et al. (2017) report ECE with 15 equal-width bins


@dataclass
class Predictions:
    """The logits of a model on one split, with the labels, class names and what identifies each image.

    `ids` name the images as a group CSV does: the file path relative to the data folder for image folders,
    the index in the split for CIFAR. `images`: uint8, as the model sees them (the evaluation crop), for figures.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    ids: list[str]
    images: torch.Tensor | None = None
    info: dict[str, str] = field(default_factory=dict)
    single_view_preds: torch.Tensor | None = None  # flip TTA: the unflipped image's class, for the TTA gain

    def __len__(self) -> int:
        return self.labels.shape[0]

    def probs(self, temperature: float = 1.0) -> torch.Tensor:
        return (self.logits.double() / temperature).softmax(dim=1)

    @property
    def preds(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)

    @property
    def correct(self) -> torch.Tensor:
        return self.preds.eq(self.labels)

    def subset(self, index: torch.Tensor, with_images: bool = True) -> Predictions:
        """The predictions at `index` (a tensor of positions), e.g. one half for temperature fitting."""
        images = self.images[index] if self.images is not None and with_images else None
        ids = [self.ids[i] for i in index.tolist()]
        single = self.single_view_preds[index] if self.single_view_preds is not None else None
        return Predictions(self.logits[index], self.labels[index], self.classes, ids, images, dict(self.info), single)

    def to_eval_result(self) -> EvalResult:
        """The aggregate metrics `engine.loop.evaluate` reports, computed from the kept logits."""
        n = len(self)
        if n == 0:
            raise ValueError("no predictions")
        logits = self.logits.float()
        loss = float(torch.nn.functional.cross_entropy(logits.double(), self.labels, reduction="sum")) / n
        top1, top5 = (float(c) / n for c in topk_correct(logits, self.labels, (1, 5)))
        return EvalResult(loss, top1, top5, n, confusion_matrix(self.preds, self.labels, len(self.classes)))

    def quality(self, n_bins: int = ECE_BINS, temperature: float = 1.0) -> dict[str, Any]:
        """Per-class precision, recall and F1 (None where undefined), their macro averages over the classes with
        samples (an undefined precision counting as 0, as scikit-learn's zero_division=0), and the ECE."""
        confusion = confusion_matrix(self.preds, self.labels, len(self.classes))
        precision, recall, f1 = precision_recall_f1(confusion)
        confidence = self.probs(temperature).max(dim=1).values
        per_class = {"precision": precision, "recall": recall, "f1": f1}
        out: dict[str, Any] = {
            f"per_class_{k}": dict(zip(self.classes, _none_for_nan(v), strict=True)) for k, v in per_class.items()
        }
        has_samples = confusion.sum(dim=1) > 0
        out.update({f"macro_{k}": _macro(v, has_samples) for k, v in per_class.items()})
        out.update(ece=reliability(confidence, self.correct, n_bins).ece, ece_bins=n_bins)
        return out


def _none_for_nan(values: torch.Tensor) -> list[float | None]:
    return [None if v != v else v for v in values.tolist()]


def _macro(values: torch.Tensor, has_samples: torch.Tensor) -> float | None:
    """Mean over the classes that have samples, an undefined value (a class never predicted) counting as 0."""
    return float(values[has_samples].nan_to_num(0.0).mean()) if bool(has_samples.any()) else None


@torch.no_grad()
def collect_logits(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, tta_flip: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(logits float32 (N, C), labels (N,), single-view classes (N,) or None) on the CPU for every batch, in order,
    with the model in eval mode. With `tta_flip` the logits are the mean of the image's and its mirror's, and the
    third item is the class the image alone gives (one pass yields both the TTA and the single-view accuracy)."""
    was_training = model.training
    model.eval()
    outs, labels, single = [], [], []
    for x, y in batches:
        logits = model(x).float()
        if tta_flip:
            single.append(logits.argmax(1).cpu())
            logits = (logits + model(x.flip(-1)).float()) / 2
        outs.append(logits.cpu())
        labels.append(y.cpu())
    model.train(was_training)
    if not outs:
        raise ValueError("evaluation saw no images")
    return torch.cat(outs), torch.cat(labels), torch.cat(single) if single else None
