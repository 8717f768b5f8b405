"""A model report on disk: report.html (or report.md), its PNG figures and report.json, in one folder."""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from resnetkit.engine.predictions import ECE_BINS, Predictions
from resnetkit.metrics import reliability
from resnetkit.plots import plot_confusion, plot_image_grid, plot_reliability
from resnetkit.report.groups import GROUP_COLUMN, IMAGE_COLUMN, GroupAssignment, ReportError, read_groups
from resnetkit.report.numbers import Calibration, calibration_by_halves, report_numbers

FORMATS = ("html", "markdown")


def report_from(
    predict: Callable[[str], Predictions],
    out: str | Path,
    *,
    split: str = "test",
    calibrate: str | None = None,
    groups_csv: str | Path | None = None,
    image_column: str = IMAGE_COLUMN,
    group_column: str = GROUP_COLUMN,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """The report of `predict(split)` (a model's predictions on a split, with images kept).

    `calibrate`: "half" fits the temperature on a seeded half of the split and compares on the other half;
    another split name fits it on that split. `groups_csv` adds the fairness table. `options` go to write_report.
    """
    if calibrate == split:
        raise ReportError(f"--calibrate {split} would fit the temperature on the images it is judged on; use half")
    _check_options(**options)
    fit = predict(calibrate) if calibrate and calibrate != "half" else None  # a split without images fails first
    preds = predict(split)
    groups = None
    if groups_csv:
        groups = read_groups(groups_csv, preds.ids, image_column=image_column, group_column=group_column)
    calibration = None
    if calibrate == "half":
        calibration = calibration_by_halves(preds, seed)
    elif fit is not None:
        calibration = Calibration(fit, preds, f"the {calibrate} split")
    return write_report(preds, out, calibration=calibration, groups=groups, **options)


def _check_options(n_bins: int = ECE_BINS, mistakes: int = 16, fmt: str = "html", **_: Any) -> None:
    """The settings' mistakes, before any image is evaluated."""
    if n_bins < 1:
        raise ReportError(f"--bins must be at least 1, got {n_bins}")
    if mistakes < 0:
        raise ReportError(f"--mistakes must be 0 or more, got {mistakes}")
    if fmt not in FORMATS:
        raise ReportError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")


def write_report(
    preds: Predictions,
    out: str | Path,
    *,
    calibration: Calibration | None = None,
    groups: GroupAssignment | None = None,
    n_bins: int = ECE_BINS,
    mistakes: int = 16,
    fmt: str = "html",
    title: str = "",
) -> dict[str, Any]:
    """Compute the numbers, draw the figures and write the report; returns the numbers with `files` added."""
    _check_options(n_bins, mistakes, fmt)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    numbers = report_numbers(preds, calibration=calibration, groups=groups, n_bins=n_bins, mistakes=mistakes)
    numbers["title"] = title or f"{preds.info.get('data', 'data')} {preds.info.get('split', '')}".strip()
    figures = _figures(preds, numbers, out, calibration, n_bins)
    page = out / ("report.html" if fmt == "html" else "report.md")
    page.write_text(_render(numbers, figures, fmt))
    numbers["files"] = [str(p) for p in (page, *figures.values(), out / "report.json")]
    (out / "report.json").write_text(json.dumps(numbers, indent=2))
    return numbers


def _figures(
    preds: Predictions, numbers: dict[str, Any], out: Path, cal: Calibration | None, n_bins: int
) -> dict[str, Path]:
    figures = {
        "confusion": plot_confusion(torch.tensor(numbers["confusion_matrix"]), preds.classes, out / "confusion.png")
    }
    if cal is None:
        curves = {"model": reliability(preds.probs().max(dim=1).values, preds.correct, n_bins)}
    else:
        t, ev = numbers["calibration"]["temperature"], cal.evaluated
        curves = {
            "before": reliability(ev.probs().max(dim=1).values, ev.correct, n_bins),
            f"after (T = {t:.2f})": reliability(ev.probs(t).max(dim=1).values, ev.correct, n_bins),
        }
    figures["reliability"] = plot_reliability(curves, out / "reliability.png")
    rows = numbers["mistakes"]
    if rows and preds.images is not None:
        images = preds.images[[r["position"] for r in rows]]
        captions = [f"{r['pred']} {100 * r['prob']:.0f}%\n(true {r['true']})" for r in rows]
        figures["mistakes"] = plot_image_grid(images, captions, out / "mistakes.png")
    return figures


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _render(numbers: dict[str, Any], figures: dict[str, Path], fmt: str) -> str:
    sections = [_summary(numbers), _per_class(numbers), _calibration(numbers), _groups(numbers), _mistakes(numbers)]
    return (
        _html(numbers["title"], sections, figures) if fmt == "html" else _markdown(numbers["title"], sections, figures)
    )


Section = tuple[str, str, list[str], list[list[str]], str | None]  # heading, text, table header, rows, figure


def _summary(n: dict[str, Any]) -> Section:
    text = f"{n['n']} images of {len(n['classes'])} classes ({n.get('data', '')} {n.get('split', '')})."
    rows = [
        ["top-1 accuracy", _pct(n["top1"])],
        ["top-5 accuracy", _pct(n["top5"])],
        ["loss", f"{n['loss']:.4f}"],
        ["macro precision", _pct(n["macro_precision"])],
        ["macro recall", _pct(n["macro_recall"])],
        ["macro F1", _pct(n["macro_f1"])],
        [f"ECE ({n['ece_bins']} bins)", _pct(n["ece"])],
    ]
    return "Summary", text, ["metric", "value"], rows, None


def _per_class(n: dict[str, Any]) -> Section:
    rows = [[r["class"], str(r["n"]), _pct(r["precision"]), _pct(r["recall"]), _pct(r["f1"])] for r in n["per_class"]]
    text = "Rows of the confusion matrix are true classes, columns predicted ones (each row scaled to 1)."
    return "Per class", text, ["class", "images", "precision", "recall", "F1"], rows, "confusion"


def _calibration(n: dict[str, Any]) -> Section:
    cal = n["calibration"]
    text = (
        f"Expected calibration error: the gap between confidence and accuracy, averaged over {n['ece_bins']} "
        "equal-width confidence bins (Guo et al., 2017)."
    )
    if cal is None:
        return "Calibration", text + " No temperature was fitted (pass --calibrate).", [], [], "reliability"
    text += (
        f" Temperature scaling fitted T = {cal['temperature']:.3f} on {cal['fitted_on']}; before and after are "
        f"compared on {cal['n_evaluated']} other images."
    )
    rows = [
        ["ECE", _pct(cal["ece_before"]), _pct(cal["ece_after"])],
        ["NLL", f"{cal['nll_before']:.4f}", f"{cal['nll_after']:.4f}"],
    ]
    return "Calibration", text, ["", "before", "after"], rows, "reliability"


def _groups(n: dict[str, Any]) -> Section | None:
    g = n["groups"]
    if g is None:
        return None
    ratio = "–" if g["error_rate_ratio"] is None else f"{g['error_rate_ratio']:.2f}"
    text = (
        f"By the group column {g['column']!r}: the largest accuracy gap between two groups is "
        f"{100 * g['accuracy_gap']:.2f} points; the worst group's error rate is {ratio}x the best's."
    )
    rows = [
        [r["group"], str(r["n"]), _pct(r["accuracy"]), _pct(r["error_rate"]), f"{100 * r['gap']:+.2f}", _pct(r["ece"])]
        for r in g["rows"]
    ]
    return (
        "Fairness across groups",
        text,
        ["group", "images", "accuracy", "error rate", "gap (points)", "ECE"],
        rows,
        None,
    )


def _mistakes(n: dict[str, Any]) -> Section:
    rows = [[r["id"], r["true"], r["pred"], _pct(r["prob"])] for r in n["mistakes"]]
    text = "The wrong predictions made with the highest confidence." if rows else "No mistakes."
    return "Most confident mistakes", text, ["image", "true", "predicted", "confidence"], rows, "mistakes"


def _html(title: str, sections: Sequence[Section | None], figures: dict[str, Path]) -> str:
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
        "body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    for section in filter(None, sections):
        heading, text, header, rows, figure = section
        parts += [f"<h2>{e(heading)}</h2>", f"<p>{e(text)}</p>"]
        if rows:
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</table>")
        if figure in figures:
            parts.append(f"<p><img src='{e(figures[figure].name)}' alt='{e(figure)}'></p>")
    return "\n".join(parts + ["</body></html>"]) + "\n"


def _markdown(title: str, sections: Sequence[Section | None], figures: dict[str, Path]) -> str:
    parts = [f"# {title}"]
    for section in filter(None, sections):
        heading, text, header, rows, figure = section
        parts += [f"## {heading}", text]
        if rows:
            cells = [header, ["---"] * len(header), *rows]
            parts.append("\n".join("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells))
        if figure in figures:
            parts.append(f"![{figure}]({figures[figure].name})")
    return "\n\n".join(parts) + "\n"
