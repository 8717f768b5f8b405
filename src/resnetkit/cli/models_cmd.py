"""`resnetkit models`: every registered model with its parameters, MACs and default input size."""

from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

from resnetkit.models.summary import ModelSummary, sorted_names, summarize_model


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("models", help="list the models with parameters and MACs")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'resnet*'")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON list of objects")
    fmt.add_argument("--markdown", action="store_true", help="a Markdown table (the README's)")
    p.add_argument("--weights", action="store_true", help="list the pretrained weights instead")


def run(args: argparse.Namespace) -> int:
    if args.weights:
        return _list_weights(args)
    names = sorted_names(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    bar = tqdm(names, desc="counting", unit="model", leave=False, disable=None)
    rows = [summarize_model(n) for n in bar]
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
    elif args.markdown:
        print(markdown_table(rows))
    else:
        print(plain_table(rows))
    return 0


def _cells(r: ModelSummary) -> list[str]:
    size = "x".join(str(s) for s in r.input_size[1:])
    return [r.name, r.family, f"{r.params / 1e6:.2f}", f"{r.macs / 1e9:.3f}", size]


_HEADER = ["model", "family", "params (M)", "GMACs", "input"]


def markdown_table(rows: list[ModelSummary]) -> str:
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + "|".join(["---", "---", "---:", "---:", "---"]) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def plain_table(rows: list[ModelSummary]) -> str:
    table = [_HEADER] + [_cells(r) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(_HEADER))]
    return "\n".join(
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in table
    )


def _list_weights(args: argparse.Namespace) -> int:
    from resnetkit.weights.registry import list_weights

    entries = list_weights(args.pattern)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return 0
    for e in entries:
        headline = ("top1", "acc1", "box_map", "miou")  # classification, detection, segmentation
        top1 = next((f"{k} {100 * v:.2f}%" for k, v in e.metrics.items() if any(h in k for h in headline)), "")
        where = "shipped" if e.shipped else "download"
        size = "x".join(map(str, e.data_config.input_size[1:]))
        print(f"{e.name:<36} {e.num_classes:>5} classes  {size:>7}  {where:<8}  {top1}")
    return 0
