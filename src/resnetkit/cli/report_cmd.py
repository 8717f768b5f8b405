"""`resnetkit report`: per-class quality, calibration, confident mistakes and fairness of a checkpoint, as HTML
or Markdown with PNG figures."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from resnetkit.cli.eval_cmd import add_evaluation_arguments, percent

if TYPE_CHECKING:
    from resnetkit.engine.predictions import Predictions


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("report", help="HTML/Markdown report: per class, calibration, mistakes, fairness")
    add_evaluation_arguments(p)
    p.add_argument("--out", required=True, help="folder for report.html (or .md), its PNGs and report.json")
    p.add_argument("--format", default="html", choices=["html", "markdown"])
    p.add_argument(
        "--calibrate",
        metavar="SPLIT",
        help="fit temperature scaling on `half` of the split, or on "
        "another split (CIFAR `val`: the validation images the run held out with --val-size)",
    )
    p.add_argument("--groups", metavar="CSV", help="fairness table: a CSV mapping each image to a group")
    p.add_argument("--image-column", default="image", help="CSV column naming the image (path or CIFAR index)")
    p.add_argument("--group-column", default="group", help="CSV column holding the group")
    p.add_argument("--bins", type=int, default=15, help="equal-width confidence bins for ECE")
    p.add_argument("--mistakes", type=int, default=16, help="how many confident mistakes to show")
    p.add_argument("--json", action="store_true", help="print the report's numbers as one JSON object")


def run(args: argparse.Namespace) -> int:
    from functools import partial

    from resnetkit.report import report_from
    from resnetkit.workflows.inference import predict_split

    predict = partial(
        predict_split,
        args.checkpoint,
        args.data,
        args.data_dir,
        batch_size=args.batch_size,
        tta_flip=args.tta_flip,
        download=args.download,
        progress=not args.json,
        compile=args.compile,
        keep_images=True,
        data_mode=args.data_mode,
        workers=args.workers,
        runtime=args.runtime,
    )
    scored: dict[str, str] = {}

    def predict_noting_scored(split: str) -> Predictions:
        preds = predict(split=split)
        scored[split] = preds.info.get("scored", "")
        return preds

    numbers = report_from(
        predict_noting_scored,
        args.out,
        split=args.split,
        calibrate=args.calibrate,
        groups_csv=args.groups,
        image_column=args.image_column,
        group_column=args.group_column,
        n_bins=args.bins,
        mistakes=args.mistakes,
        fmt=args.format,
    )
    if args.json:
        print(json.dumps({**numbers, "scored": scored[args.split]}))
        return 0
    print(f"scored {numbers['n']} images: {scored[args.split]}")
    print(
        f"{numbers['title']}: top1 {percent(numbers['top1'])}  macro F1 {percent(numbers['macro_f1'])}  "
        f"ECE {percent(numbers['ece'])}  n {numbers['n']}"
    )
    if numbers["calibration"]:
        c = numbers["calibration"]
        print(f"temperature {c['temperature']:.3f}: ECE {percent(c['ece_before'])} -> {percent(c['ece_after'])}")
    if numbers["groups"]:
        g = numbers["groups"]
        print(f"groups by {g['column']!r}: largest accuracy gap {100 * g['accuracy_gap']:.2f} points")
    print(f"report: {numbers['files'][0]}")
    return 0
