"""The numbers of a model report, from kept predictions: quality per class, calibration, fairness across groups."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from resnetkit.engine.predictions import ECE_BINS, Predictions
from resnetkit.metrics import fit_temperature, group_accuracy, reliability
from resnetkit.report.groups import GroupAssignment


@dataclass
class Calibration:
    """Temperature scaling: fitted on `fit`, compared before and after on `evaluated` (never the same images)."""

    fit: Predictions
    evaluated: Predictions
    fit_label: str


def calibration_by_halves(preds: Predictions, seed: int = 0) -> Calibration:
    """Fit on a seeded random half of `preds`, evaluate on the other half (when no separate split exists)."""
    if len(preds) < 4:
        raise ValueError("temperature fitting on halves needs at least 4 images")
    order = torch.randperm(len(preds), generator=torch.Generator().manual_seed(seed))
    half = len(preds) // 2
    fit, evaluated = (preds.subset(part.sort().values, with_images=False) for part in (order[:half], order[half:]))
    label = f"a seeded random half of the {preds.info.get('split', 'evaluated')} split (seed {seed})"
    return Calibration(fit, evaluated, label)


def quality_numbers(preds: Predictions, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Top-1/top-5, loss, macro and per-class precision / recall / F1 with class sizes, ECE, confusion matrix."""
    quality = preds.quality(n_bins)
    sizes = torch.bincount(preds.labels, minlength=len(preds.classes)).tolist()
    per_class = [
        {"class": c, "n": n, **{k: quality[f"per_class_{k}"][c] for k in ("precision", "recall", "f1")}}
        for c, n in zip(preds.classes, sizes, strict=True)
    ]
    result = preds.to_eval_result()
    return {
        "n": result.n,
        "top1": result.top1,
        "top5": result.top5,
        "loss": result.loss,
        **{k: quality[k] for k in ("macro_precision", "macro_recall", "macro_f1", "ece", "ece_bins")},
        "per_class": per_class,
        "classes": list(preds.classes),
        "confusion_matrix": result.confusion.tolist(),
    }


def calibration_numbers(cal: Calibration, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """The fitted temperature and ECE / NLL before and after scaling, on the evaluation images."""
    temperature = fit_temperature(cal.fit.logits, cal.fit.labels)
    ev = cal.evaluated
    nll = [float(F.cross_entropy(ev.logits.double() / t, ev.labels)) for t in (1.0, temperature)]
    ece = [reliability(ev.probs(t).max(dim=1).values, ev.correct, n_bins).ece for t in (1.0, temperature)]
    return {
        "temperature": temperature,
        "fitted_on": f"{cal.fit_label} (n={len(cal.fit)})",
        "n_evaluated": len(ev),
        "ece_before": ece[0],
        "ece_after": ece[1],
        "nll_before": nll[0],
        "nll_after": nll[1],
    }


def group_numbers(preds: Predictions, groups: GroupAssignment, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Accuracy, error rate, gap to the overall accuracy and ECE of each group; the largest accuracy gap between
    two groups and the ratio of the worst to the best error rate."""
    correct = preds.correct
    counts, accuracy = group_accuracy(correct, groups.index, len(groups.names))
    overall = float(correct.double().mean())
    confidence = preds.probs().max(dim=1).values
    rows = []
    for k, name in enumerate(groups.names):
        members = groups.index == k
        acc = float(accuracy[k])
        ece = reliability(confidence[members], correct[members], n_bins).ece
        rows.append(
            {
                "group": name,
                "n": int(counts[k]),
                "accuracy": acc,
                "error_rate": 1 - acc,
                "gap": acc - overall,
                "ece": ece,
            }
        )
    errors = [r["error_rate"] for r in rows]
    ratio = max(errors) / min(errors) if min(errors) > 0 else (None if max(errors) > 0 else 1.0)
    return {
        "column": groups.column,
        "overall_accuracy": overall,
        "rows": rows,
        "accuracy_gap": max(r["accuracy"] for r in rows) - min(r["accuracy"] for r in rows),
        "error_rate_ratio": ratio,
    }


def confident_mistakes(preds: Predictions, k: int = 16) -> list[dict[str, Any]]:
    """The `k` wrong predictions made with the highest confidence, most confident first."""
    probs = preds.probs()
    confidence, pred = probs.max(dim=1)
    wrong = torch.nonzero(~preds.correct).flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:k]
    return [
        {
            "position": int(i),
            "id": preds.ids[i],
            "true": preds.classes[int(preds.labels[i])],
            "pred": preds.classes[int(pred[i])],
            "prob": float(confidence[i]),
        }
        for i in order.tolist()
    ]


def report_numbers(
    preds: Predictions,
    *,
    calibration: Calibration | None = None,
    groups: GroupAssignment | None = None,
    n_bins: int = ECE_BINS,
    mistakes: int = 16,
) -> dict[str, Any]:
    """Every number of the report, as plain JSON-ready values."""
    numbers = {**preds.info, **quality_numbers(preds, n_bins)}
    numbers["calibration"] = calibration_numbers(calibration, n_bins) if calibration is not None else None
    numbers["groups"] = group_numbers(preds, groups, n_bins) if groups is not None else None
    numbers["mistakes"] = confident_mistakes(preds, mistakes)
    return _finite(numbers)


def _finite(value: Any) -> Any:
    """NaN and infinities as None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
