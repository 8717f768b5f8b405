"""report.html of an audit: a summary of what each finding would remove, then each finding with thumbnails."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnetkit.audit.run import Findings

Thumb = Callable[[Findings, str, int], str]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; font-size: 0.9em; }
th { background: #f3f3f3; }
td.n { text-align: right; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid #ccc; padding: 6px; font-size: 0.8em; width: 210px; }
.card img { image-rendering: pixelated; margin-right: 4px; }
.none { width: 96px; height: 96px; background: #eee; display: inline-block; text-align: center; line-height: 96px; }
.bad { color: #b00; } .good { color: #070; }
"""


def render(findings: Findings, numbers: dict[str, Any], thumb: Thumb) -> str:
    opts = findings.options
    title = f"Data audit: {html.escape(findings.source)}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{STYLE}</style>"]
    parts.append(f"</head><body><h1>{title}</h1>")
    parts.append(_summary(findings, numbers))
    if findings.files is not None:
        parts.append(_files(findings, numbers, thumb))
    parts.append(_leakage(findings, numbers, thumb))
    for name in ("train", "test"):
        parts.append(_within(findings, numbers, thumb, name))
    parts.append(_labels(findings, numbers, thumb))
    parts.append(_balance(findings, numbers))
    figure = Path(opts.out) / "similarity.png"
    if figure.is_file():
        data = base64.b64encode(figure.read_bytes()).decode()
        parts.append("<h2>Nearest-neighbour similarity</h2><p>Each image's highest cosine similarity to another image ")
        parts.append(f"(dashed: the threshold {opts.threshold}); a second hump near 1 is duplicates.</p>")
        parts.append(f'<img src="data:image/png;base64,{data}" style="max-width: 900px">')
    parts.append("</body></html>")
    return "".join(parts)


def _summary(findings: Findings, numbers: dict[str, Any]) -> str:
    splits = numbers["splits"]
    rows = [
        f"<tr><td>{html.escape(file)}</td><td class='n'>{count}</td></tr>" for file, count in numbers["exclude"].items()
    ]
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in numbers["seconds"].items())
    return (
        f"<p>{splits['train']['n']:,} training and {splits['test']['n']:,} held-out images, "
        f"{len(findings.classes)} classes. Near duplicates: {_embedding(findings)}, similarity &ge; "
        f"{findings.options.threshold}. Time: {seconds}.</p>"
        "<h2>Acting on it</h2><p><code>resnetkit train ... --exclude FILE</code> leaves out of training:</p>"
        f"<table><tr><th>file</th><th>training images left out</th></tr>{''.join(rows)}</table>"
    )


def _embedding(findings: Findings) -> str:
    if findings.options.embedding == "pixels":
        return "pixel signatures (colour layout and structure)"
    return f"pooled features of <code>{html.escape(findings.embed_model)}</code>"


def _cards(cards: list[str]) -> str:
    return f"<div class='grid'>{''.join(cards)}</div>"


def _files(findings: Findings, numbers: dict[str, Any], thumb: Thumb) -> str:
    assert findings.files is not None
    counts = numbers["files"]["problems"]
    rows = "".join(f"<tr><td>{k}</td><td class='n'>{v}</td></tr>" for k, v in counts.items())
    index = {s: {i: p for p, i in enumerate(findings.splits[s].ids)} for s in findings.splits}
    cards = []
    for f in findings.files.findings[: findings.options.show]:
        pos = index.get(f.split, {}).get(f.path)
        image = thumb(findings, f.split, pos) if pos is not None else "<div class='none'>not loaded</div>"
        cards.append(
            f"<div class='card'>{image}<br><b>{f.problem}</b><br>{html.escape(f.path)}<br>{html.escape(f.detail)}</div>"
        )
    checked = numbers["files"]["checked"]
    table = f"<table><tr><th>problem</th><th>files</th></tr>{rows}</table>" if rows else "<p>No problems found.</p>"
    return f"<h2>Files</h2><p>{checked:,} files decoded in full.</p>{table}{_cards(cards)}"


def _pair_cards(findings: Findings, thumb: Thumb, pairs: list[Any], left: str, right: str) -> str:
    cards = []
    ids_l, ids_r = findings.splits[left].ids, findings.splits[right].ids
    labels_l, labels_r = findings.splits[left].labels, findings.splits[right].labels
    for p in pairs[: findings.options.show]:
        cl, cr = findings.classes[int(labels_l[p.a])], findings.classes[int(labels_r[p.b])]
        cards.append(
            f"<div class='card' style='width: 210px'>{thumb(findings, left, p.a)}{thumb(findings, right, p.b)}<br>"
            f"{p.kind} {p.similarity:.3f}<br>{left} {html.escape(ids_l[p.a])} ({cl})<br>"
            f"{right} {html.escape(ids_r[p.b])} ({cr})</div>"
        )
    return _cards(cards)


def _leakage(findings: Findings, numbers: dict[str, Any], thumb: Thumb) -> str:
    n = numbers["duplicates"]["test_train"]
    head = (
        f"<h2>Leakage: held-out images with a copy in the training data</h2><p><b>{n['test_images']:,}</b> held-out "
        f"images pair with {n['train_images']:,} training images ({n['exact']} exact, {n['near']} near pairs; "
        "duplicates_test_train.csv, most similar first). Left: held-out image, right: training image.</p>"
    )
    return head + _pair_cards(findings, thumb, findings.pairs["test_train"], "test", "train")


def _within(findings: Findings, numbers: dict[str, Any], thumb: Thumb, name: str) -> str:
    n = numbers["duplicates"][name]
    head = (
        f"<h2>Duplicates within the {name} split</h2><p>{n['pairs']:,} pairs ({n['exact']} exact, {n['near']} near) "
        f"among {n['images']:,} images (duplicates_{name}.csv).</p>"
    )
    return head + _pair_cards(findings, thumb, findings.pairs[name], name, name)


def _labels(findings: Findings, numbers: dict[str, Any], thumb: Thumb) -> str:
    if findings.oos is None:
        return (
            "<h2>Label issues</h2><p>Not audited: label issues need out-of-sample probabilities "
            "(<code>--folds K</code>, or <code>--checkpoint C</code> of a model that did not train on the images).</p>"
        )
    info = numbers["label_issues"]
    parts = [
        f"<h2>Label issues</h2><p>Confident learning ({info['method']}) on out-of-sample probabilities from "
        f"{html.escape(info['probabilities'])} ({len(info['models'])} model(s)). Ranked by self-confidence, lowest "
        "first (label_issues.csv).</p><table><tr><th>split</th><th>scored</th><th>flagged</th>"
        "<th>estimated wrong labels</th><th>out-of-sample top-1</th></tr>"
    ]
    for name in findings.labels:
        n = info[name]
        parts.append(
            f"<tr><td>{name}</td><td class='n'>{n['scored']:,}</td><td class='n'>{n['flagged']:,}</td>"
            f"<td class='n'>{n['estimated_issues']:,}</td><td class='n'>{100 * n['out_of_sample_top1']:.2f}%</td></tr>"
        )
    parts.append("</table>")
    for name, issues in findings.labels.items():
        split = findings.oos.splits[name]
        index = {i: p for p, i in enumerate(findings.splits[name].ids)}
        cards = []
        for pos in issues.ranked.tolist()[: findings.options.show]:
            given, suggested = findings.classes[int(split.labels[pos])], findings.classes[int(issues.suggested[pos])]
            where = index.get(split.ids[pos])
            image = thumb(findings, name, where) if where is not None else ""
            cards.append(
                f"<div class='card'>{image}<br>{html.escape(split.ids[pos])}<br>given <span class='bad'>{given}</span> "
                f"({float(issues.self_confidence[pos]):.2f})<br>suggested <span class='good'>{suggested}</span> "
                f"({float(issues.suggested_confidence[pos]):.2f})</div>"
            )
        parts.append(f"<h3>{name}</h3>{_cards(cards)}")
    return "".join(parts)


def _balance(findings: Findings, numbers: dict[str, Any]) -> str:
    header = "<tr><th>class</th><th>train</th><th>held out</th><th>label issues</th><th>in duplicate pairs</th>"
    header += "<th>leaked held-out images</th></tr>"
    rows = []
    for name, row in numbers["by_class"].items():
        cells = "".join(f"<td class='n'>{row[k]:,}</td>" for k in ("train", "test", "label_issues", "duplicates"))
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}<td class='n'>{row['leaked_test']:,}</td></tr>")
    return f"<h2>Classes</h2><table>{header}{''.join(rows)}</table>"
