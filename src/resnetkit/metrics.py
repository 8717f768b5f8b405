"""Pure tensor metrics: no I/O, no model knowledge."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """Number of samples whose target is among the top-k logits, for each k (a tensor, no host sync)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(targets.unsqueeze(1))
    return torch.stack([hits[:, : min(k, kmax)].any(dim=1).sum() for k in ks])


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts: rows are true classes, columns predicted ones."""
    index = targets.to(torch.int64) * num_classes + preds.to(torch.int64)
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Recall of each class (NaN for a class with no samples)."""
    totals = confusion.sum(dim=1).double()
    return confusion.diagonal().double() / totals


def precision_recall_f1(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class precision, recall and F1 from a confusion matrix (rows true, columns predicted).

    F1 = 2 TP / (2 TP + FP + FN), which is 0 for a class with samples that is never predicted. Undefined values
    are NaN: precision of a class never predicted, recall of a class with no samples, F1 of a class with neither.
    """
    confusion = confusion.double()
    tp, predicted, actual = confusion.diagonal(), confusion.sum(dim=0), confusion.sum(dim=1)
    return tp / predicted, tp / actual, 2 * tp / (predicted + actual)


@dataclass
class Reliability:
    """Equal-width confidence bins: bin i holds confidences in (i/n, (i+1)/n] (a confidence of 0 goes to bin 0).

    `accuracy` and `confidence` are the bin means (NaN for an empty bin). Guo et al. (2017), section 2.
    """

    edges: torch.Tensor
    counts: torch.Tensor
    accuracy: torch.Tensor
    confidence: torch.Tensor

    @property
    def ece(self) -> float:
        """Expected calibration error: sum over bins of |B|/N * |accuracy(B) - confidence(B)|."""
        total = int(self.counts.sum())
        if total == 0:
            return float("nan")
        gap = (self.accuracy - self.confidence).abs().nan_to_num(0.0)
        return float((self.counts.double() * gap).sum() / total)


def reliability(confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> Reliability:
    """Bin predictions by confidence (the top-class probability) and compare with how often they were right."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    conf = confidences.detach().double().flatten()
    hits = correct.detach().double().flatten()
    index = (conf * n_bins).ceil().long().sub(1).clamp(0, n_bins - 1)
    counts = torch.bincount(index, minlength=n_bins)
    acc_sum = torch.bincount(index, weights=hits, minlength=n_bins)
    conf_sum = torch.bincount(index, weights=conf, minlength=n_bins)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    return Reliability(edges, counts, acc_sum / counts, conf_sum / counts)


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> float:
    """ECE of class probabilities (N, C) against targets (N,), with `n_bins` equal-width confidence bins."""
    confidence, pred = probs.max(dim=1)
    return reliability(confidence, pred.eq(targets), n_bins).ece


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T), fitted by LBFGS on log T.

    Temperature scaling (Guo et al., 2017) rescales confidences without changing any prediction; fit it on
    held-out data, never on the data it is evaluated on.
    """
    logits, targets = logits.detach().double(), targets.detach()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(log_t.detach().exp())


def group_accuracy(
    correct: torch.Tensor, group_ids: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, accuracy) of each group, for predictions marked `correct` and their group index (NaN: empty group)."""
    ids = group_ids.long().flatten()
    counts = torch.bincount(ids, minlength=num_groups)
    hits = torch.bincount(ids, weights=correct.double().flatten(), minlength=num_groups)
    return counts, hits / counts


def spearman_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each row pair of `a` and `b` (N, ...) flattened, ties given their average rank.

    A row that is constant has no ranking: its correlation is 1 if the other row is equal to it, else 0.
    """
    a, b = a.detach().flatten(1).double(), b.detach().flatten(1).double()
    out = []
    for x, y in zip(a, b, strict=True):
        rx, ry = _average_ranks(x), _average_ranks(y)
        rx, ry = rx - rx.mean(), ry - ry.mean()
        denom = rx.norm() * ry.norm()
        out.append((rx * ry).sum() / denom if denom > 0 else torch.tensor(float(torch.equal(x, y)), dtype=x.dtype))
    return torch.stack(out)


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    return (ends - (counts.double() - 1) / 2)[inverse]
