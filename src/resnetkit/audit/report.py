"""The audit's files: one CSV per finding, `audit.json` (every number) and `report.html` (thumbnails for every finding
shown, pairs side by side, the given and the suggested label with its confidence)."""

from __future__ import annotations

import base64
import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from resnetkit.audit.run import Findings
from resnetkit.data.exclude import read_exclusions
from resnetkit.data.images import read_image
from resnetkit.errors import DataError
from resnetkit.files import atomic_write

THUMB = 96  # thumbnail side, pixels
CSV_FILES = {
    "label_issues": "label_issues.csv",
    "duplicates_train": "duplicates_train.csv",
    "duplicates_test": "duplicates_test.csv",
    "duplicates_test_train": "duplicates_test_train.csv",
    "odd_files": "odd_files.csv",
}


def write_report(findings: Findings) -> dict[str, Any]:
    """Write every file of the audit into its --out folder; returns audit.json's content."""
    out = Path(findings.options.out)
    written = _write_csvs(findings, out)
    numbers = audit_numbers(findings, written)
    _write_text(out / "audit.json", json.dumps(numbers, indent=2) + "\n")
    _similarity_figure(findings, out / "similarity.png")
    _write_text(out / "report.html", _html(findings, numbers))
    return numbers


# ------------------------------------------------------------------------------------------------- CSV files


def _key(findings: Findings) -> str:
    return "path" if findings.options.data == "folder" else "index"


def _write_csvs(findings: Findings, out: Path) -> dict[str, Path]:
    key, written = _key(findings), {}
    rows = _label_rows(findings)
    if findings.oos is not None:
        header = [key, "split", "given", "suggested", "self_confidence", "suggested_confidence", "rank"]
        written["label_issues"] = _csv(out / CSV_FILES["label_issues"], header, rows)
    for name in ("train", "test"):
        ids = findings.splits[name].ids
        pair_rows = [[name, ids[p.a], ids[p.b], f"{p.similarity:.4f}", p.kind] for p in findings.pairs[name]]
        header = ["split", f"{key}_a", f"{key}_b", "similarity", "kind"]
        written[f"duplicates_{name}"] = _csv(out / CSV_FILES[f"duplicates_{name}"], header, pair_rows)
    test, train = findings.splits["test"].ids, findings.splits["train"].ids
    leak = [[test[p.a], train[p.b], f"{p.similarity:.4f}", p.kind] for p in findings.pairs["test_train"]]
    header = [f"test_{key}", f"train_{key}", "similarity", "kind"]
    written["duplicates_test_train"] = _csv(out / CSV_FILES["duplicates_test_train"], header, leak)
    if findings.files is not None:
        odd = [[f.path, f.split, f.label, f.problem, f.detail] for f in findings.files.findings]
        written["odd_files"] = _csv(out / CSV_FILES["odd_files"], ["path", "split", "label", "problem", "detail"], odd)
    return written


def _label_rows(findings: Findings) -> list[list[Any]]:
    rows: list[list[Any]] = []
    if findings.oos is None:
        return rows
    for name, issues in findings.labels.items():
        split = findings.oos.splits[name]
        for rank, pos in enumerate(issues.ranked.tolist(), start=1):
            given, suggested = findings.classes[int(split.labels[pos])], findings.classes[int(issues.suggested[pos])]
            conf, sconf = float(issues.self_confidence[pos]), float(issues.suggested_confidence[pos])
            rows.append([split.ids[pos], name, given, suggested, f"{conf:.4f}", f"{sconf:.4f}", rank])
    return rows


def _csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return _write_text(path, buffer.getvalue())


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# ------------------------------------------------------------------------------------------------- numbers


def audit_numbers(findings: Findings, written: dict[str, Path]) -> dict[str, Any]:
    """audit.json: the data, each split's class counts, and every finding's counts and settings."""
    opts, classes = findings.options, findings.classes
    numbers: dict[str, Any] = {
        "data": opts.data,
        "source": findings.source,
        "classes": classes,
        "splits": {name: _class_counts(s.labels, classes) for name, s in findings.splits.items()},
        "duplicates": _duplicate_numbers(findings),
        "seconds": {k: round(v, 2) for k, v in findings.seconds.items()},
    }
    if findings.files is not None:
        problems = Counter(f.problem for f in findings.files.findings)
        numbers["files"] = {"checked": findings.files.checked, "problems": dict(sorted(problems.items()))}
    if findings.oos is not None:
        numbers["label_issues"] = _label_numbers(findings)
    numbers["by_class"] = _by_class(findings)
    numbers["exclude"] = _exclude_counts(findings, written)
    return numbers


def _class_counts(labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    return {"n": len(labels), "class_counts": dict(zip(classes, counts, strict=True))}


def _duplicate_numbers(findings: Findings) -> dict[str, Any]:
    opts = findings.options
    result: dict[str, Any] = {"embed_model": findings.embed_model, "threshold": opts.threshold, "top_k": opts.top_k}
    for name, pairs in findings.pairs.items():
        kinds = Counter(p.kind for p in pairs)
        entry = {"pairs": len(pairs), "exact": kinds["exact"], "near": kinds["near"]}
        if name == "test_train":
            entry["test_images"] = len({p.a for p in pairs})
            entry["train_images"] = len({p.b for p in pairs})
        else:
            entry["images"] = len({i for p in pairs for i in (p.a, p.b)})
        best = findings.nearest[name].numpy()
        entry["nearest_similarity_quantiles"] = {
            str(q): round(float(np.quantile(best, q)), 4) for q in (0.5, 0.9, 0.99, 0.999)
        }
        result[name] = entry
    return result


def _label_numbers(findings: Findings) -> dict[str, Any]:
    oos = findings.oos
    assert oos is not None
    result: dict[str, Any] = {"method": findings.options.method, "probabilities": oos.method, "models": oos.models}
    result |= oos.details
    for name, issues in findings.labels.items():
        split = oos.splits[name]
        scored = ~split.probs.isnan().any(dim=1)
        top1 = float((split.probs[scored].argmax(dim=1) == split.labels[scored]).double().mean())
        result[name] = {
            "scored": issues.scored,
            "flagged": len(issues.ranked),
            "estimated_issues": issues.estimated_issues,
            "out_of_sample_top1": round(top1, 4),
            "thresholds": dict(zip(findings.classes, [round(t, 4) for t in issues.thresholds.tolist()], strict=True)),
            "confident_joint": issues.calibrated_joint.int().tolist(),
        }
    return result


def _by_class(findings: Findings) -> dict[str, dict[str, int]]:
    """Per class: images per split, label issues by given label, images in duplicate pairs, leaked test images."""
    columns = ("train", "test", "label_issues", "duplicates", "leaked_test")
    table = {c: dict.fromkeys(columns, 0) for c in findings.classes}
    for name, split in findings.splits.items():
        for label in split.labels.tolist():
            table[findings.classes[label]][name] += 1
    if findings.oos is not None:
        for name, issues in findings.labels.items():
            for pos in issues.ranked.tolist():
                table[findings.classes[int(findings.oos.splits[name].labels[pos])]]["label_issues"] += 1
    for name in ("train", "test"):
        labels = findings.splits[name].labels
        for i in {i for p in findings.pairs[name] for i in (p.a, p.b)}:
            table[findings.classes[int(labels[i])]]["duplicates"] += 1
    test_labels = findings.splits["test"].labels
    for i in {p.a for p in findings.pairs["test_train"]}:
        table[findings.classes[int(test_labels[i])]]["leaked_test"] += 1
    return table


def _exclude_counts(findings: Findings, written: dict[str, Path]) -> dict[str, int]:
    """How many training images `train --exclude CSV` would leave out, per CSV (read back by --exclude's rules)."""
    train_ids = set(findings.splits["train"].ids)
    counts = {}
    for path in written.values():
        try:
            items = read_exclusions(path).items
        except DataError:  # a finding with no rows lists nothing to exclude
            items = ()
        counts[path.name] = len(set(items) & train_ids)
    return counts


# ------------------------------------------------------------------------------------------------- HTML


def _thumb(findings: Findings, split: str, pos: int) -> str:
    """An <img> of image `pos` of `split` (CIFAR: the stored image; folders: the file, read again)."""
    s = findings.splits[split]
    try:
        if findings.options.data == "folder":
            pixels = read_image(Path(str(findings.options.data_dir)) / s.ids[pos], size=THUMB)
        else:
            pixels = s.dataset.images[pos]
    except Exception:  # noqa: BLE001  an unreadable file has no thumbnail
        return '<div class="none">unreadable</div>'
    return _img(pixels)


def _img(pixels: torch.Tensor) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img src="data:image/png;base64,{data}" width="{THUMB}" height="{THUMB}">'


def _similarity_figure(findings: Findings, path: Path) -> None:
    from resnetkit.plots import plot_similarity_histogram

    plot_similarity_histogram(
        {name: v.numpy() for name, v in findings.nearest.items()}, findings.options.threshold, path
    )


def _html(findings: Findings, numbers: dict[str, Any]) -> str:
    from resnetkit.audit.html import render

    return render(findings, numbers, _thumb)
