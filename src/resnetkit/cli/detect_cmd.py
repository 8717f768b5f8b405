"""`resnetkit detect` and `resnetkit segment`: run a detector / segmenter on image files; JSON and PNG overlays."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for task, help_text, flag, default, what in (
        (
            "detect",
            "find objects in images: boxes, labels, scores (masks, keypoints)",
            "--score",
            0.5,
            "least score of a detection that is kept",
        ),
        (
            "segment",
            "label every pixel of images (semantic segmentation)",
            "--min-share",
            0.005,
            "least share of the image a class must cover to be listed and drawn",
        ),
    ):
        p = sub.add_parser(task, help=help_text)
        p.add_argument(
            "--checkpoint",
            required=True,
            help="registered weights (e.g. fasterrcnn_resnet50_fpn.tv_coco, deeplabv3_resnet50.tv_coco; "
            "`resnetkit models --weights '*coco*'`) or a checkpoint / run folder",
        )
        p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
        p.add_argument("--out", help="folder for the PNG overlays (none without it)")
        p.add_argument(flag, dest="threshold", type=float, default=default, help=f"{what} (default {default})")
        p.add_argument("--json", action="store_true", help="print one JSON list of records")
        p.add_argument("--strict", action="store_true", help="stop at the first unreadable file (exit 2)")
        p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
        p.set_defaults(task="detection" if task == "detect" else "segmentation")


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every file was processed, 3 when some could not be read (a warning line each), 2 on --strict."""
    import torch

    from resnetkit.cli.exit_codes import warn_file_errors
    from resnetkit.config import ConfigError
    from resnetkit.tasks.predict import run_on_files
    from resnetkit.tasks.pretrained import load_task_model

    if not 0 <= args.threshold <= 1:
        raise ConfigError(f"the threshold must be between 0 and 1, got {args.threshold}")
    if args.threads:
        torch.set_num_threads(args.threads)
    tm = load_task_model(args.checkpoint, args.task)
    records = run_on_files(
        tm, args.images, out=Path(args.out) if args.out else None, threshold=args.threshold, strict=args.strict
    )
    if args.json:
        print(json.dumps(records))
    else:
        for r in records:
            if "error" not in r:
                print(f"{r['path']}: {_summary(r)}" + (f" -> {r['overlay']}" if "overlay" in r else ""))
    return warn_file_errors(records)


def _summary(record: dict) -> str:
    if "detections" in record:
        found = record["detections"]
        return ", ".join(f"{d['label']} {d['score']:.2f}" for d in found) if found else "nothing found"
    return ", ".join(f"{c['label']} {100 * c['share']:.1f}%" for c in record["classes"])
