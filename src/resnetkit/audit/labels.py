"""Label issues by confident learning (Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty in
Dataset Labels", JAIR 70, 2021), from out-of-sample predicted probabilities.

1. Per-class thresholds: t_j, the mean probability of class j over the images labelled j (the model's average
   self-confidence for that class).
2. The confident joint C[i][j]: images labelled i whose probability of class j reaches t_j (the likeliest such class
   when several do), counted; then calibrated so each row sums to the number of images labelled i and the whole to
   the number of images (the estimated joint of given and true labels, times n).
3. Pruning by noise rate (the paper's method 3): for each off-diagonal cell (given i, true j), the C[i][j] images
   labelled i with the largest margin p_j - p_i are flagged. Images whose most probable class is their given label are
   never flagged.

The flagged images are ranked by self-confidence (the probability of the given label), lowest first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from resnetkit.audit.options import METHODS


@dataclass
class LabelIssues:
    """The flagged images (positions into the probabilities' rows, ranked) and the statistics behind them."""

    ranked: torch.Tensor  # positions, lowest self-confidence first
    self_confidence: torch.Tensor  # per row: probability of the given label
    suggested: torch.Tensor  # per row: most probable class
    suggested_confidence: torch.Tensor
    thresholds: torch.Tensor  # (C,)
    confident_joint: torch.Tensor  # (C, C) raw counts, rows = given label, columns = true label
    calibrated_joint: torch.Tensor  # (C, C), sums to the number of scored images
    scored: int  # rows with probabilities (unreadable images have none)

    @property
    def estimated_issues(self) -> int:
        """The calibrated joint's off-diagonal mass: how many labels the data itself says are wrong."""
        joint = self.calibrated_joint
        return int(round(float(joint.sum() - joint.diagonal().sum())))


def confident_thresholds(labels: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """t_j = mean probability of class j over the images labelled j (a class without images: threshold 1)."""
    k = probs.shape[1]
    sums = torch.zeros(k, dtype=probs.dtype).index_add_(0, labels, probs[torch.arange(len(labels)), labels])
    counts = torch.bincount(labels, minlength=k).to(probs.dtype)
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.ones_like(sums))


def confident_joint(labels: torch.Tensor, probs: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """C[i][j]: images labelled i confidently in class j (probability >= t_j; the likeliest of several), with at
    least 1 on the diagonal of every class that has images."""
    k = probs.shape[1]
    confident = probs >= thresholds - 1e-6
    masked = torch.where(confident, probs, torch.full_like(probs, -1.0))
    guess = masked.argmax(dim=1)
    counted = confident.any(dim=1)
    joint = torch.zeros(k * k, dtype=torch.float64)
    joint.index_add_(0, labels[counted] * k + guess[counted], torch.ones(int(counted.sum()), dtype=torch.float64))
    joint = joint.view(k, k)
    present = torch.bincount(labels, minlength=k) > 0
    diag = joint.diagonal()
    diag[present] = diag[present].clamp(min=1)
    return joint


def calibrate(joint: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Rows rescaled to the number of images with that given label, then the whole to the number of images; rounded
    with each row's total kept (largest remainders)."""
    k = joint.shape[0]
    counts = torch.bincount(labels, minlength=k).to(torch.float64)
    rows = joint.sum(dim=1, keepdim=True).clamp(min=1e-12)
    scaled = joint / rows * counts[:, None]
    scaled = scaled / scaled.sum().clamp(min=1e-12) * counts.sum()
    return _round_keeping_rows(scaled)


def _round_keeping_rows(matrix: torch.Tensor) -> torch.Tensor:
    floor = matrix.floor()
    out = floor.clone()
    for i in range(matrix.shape[0]):
        missing = int(round(float(matrix[i].sum() - floor[i].sum())))
        if missing > 0:
            order = (matrix[i] - floor[i]).argsort(descending=True)[:missing]
            out[i, order] += 1
    return out


def find_label_issues(labels: torch.Tensor, probs: torch.Tensor, method: str = "prune_by_noise_rate") -> LabelIssues:
    """Confident learning on (N,) given labels and (N, C) out-of-sample probabilities; rows of NaN (unscored
    images) are never flagged. `method`: "prune_by_noise_rate" (the paper's 3rd method, cleanlab's default) or
    "confident_joint" (the off-diagonal images of the confident joint, its 2nd)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    probs = probs.double()
    scored = ~probs.isnan().any(dim=1)
    pos = torch.nonzero(scored).flatten()
    y, p = labels[pos], probs[pos]
    thresholds = confident_thresholds(y, p)
    joint = confident_joint(y, p, thresholds)
    calibrated = calibrate(joint, y)
    self_conf = p[torch.arange(len(y)), y]
    best_conf, best = p.max(dim=1)
    if method == "prune_by_noise_rate":
        flagged = _prune_by_noise_rate(y, p, calibrated)
    else:
        flagged = _off_diagonal(y, p, thresholds)
    flagged &= best != y
    order = torch.argsort(self_conf[flagged], stable=True)
    ranked = pos[torch.nonzero(flagged).flatten()[order]]
    n = len(labels)
    full_self = torch.full((n,), float("nan"), dtype=torch.float64)
    full_best = torch.full((n,), -1, dtype=torch.int64)
    full_best_conf = torch.full((n,), float("nan"), dtype=torch.float64)
    full_self[pos], full_best[pos], full_best_conf[pos] = self_conf, best, best_conf
    return LabelIssues(ranked, full_self, full_best, full_best_conf, thresholds, joint, calibrated, len(pos))


def _prune_by_noise_rate(y: torch.Tensor, p: torch.Tensor, calibrated: torch.Tensor) -> torch.Tensor:
    """For each (given i, true j != i) the calibrated_joint[i][j] images labelled i with the largest p_j - p_i."""
    flagged = torch.zeros(len(y), dtype=torch.bool)
    k = p.shape[1]
    for i in range(k):
        members = torch.nonzero(y == i).flatten()
        if len(members) <= 1:
            continue
        for j in range(k):
            count = min(int(calibrated[i, j]), len(members))
            if j == i or count <= 0:
                continue
            margin = p[members, j] - p[members, i]
            flagged[members[margin.topk(count).indices]] = True
    return flagged


def _off_diagonal(y: torch.Tensor, p: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    confident = p >= thresholds - 1e-6
    guess = torch.where(confident, p, torch.full_like(p, -1.0)).argmax(dim=1)
    return confident.any(dim=1) & (guess != y)
