"""`resnetkit eval`: a checkpoint's accuracy, loss, per-class accuracy / precision / recall / F1, calibration
(ECE) and confusion matrix on a dataset."""

from __future__ import annotations

import argparse
import json

from resnetkit.cli import add_runtime_argument
from resnetkit.config import DATA_CHOICES, DATA_MODES


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("eval", help="evaluate a checkpoint on a dataset")
    add_evaluation_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_evaluation_arguments(p: argparse.ArgumentParser) -> None:
    """What to evaluate on which data, and how: shared by `eval` and `report`."""
    p.add_argument("--checkpoint", required=True, help="checkpoint file, run folder or registered weights name")
    add_runtime_argument(p)
    p.add_argument("--data", default="sample", choices=DATA_CHOICES)
    p.add_argument("--data-dir")
    p.add_argument(
        "--split",
        default="test",
        help="test (= val): CIFAR test set; image folders: the held-out part "
        "of the checkpoint's own training folder, every image of another folder of class sub-folders, "
        "val/ of a train/ + val/ folder | val (CIFAR: the run's --val-size split) | train | all (image "
        "folders: every image)",
    )
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--compile", dest="compile", action="store_true", default=None, help="default: auto")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--tta-flip", action="store_true", help="average with the mirrored image")
    p.add_argument("--download", action="store_true")
    p.add_argument(
        "--data-mode",
        default="auto",
        choices=DATA_MODES,
        help="image folders: stream reads the files "
        "batch by batch instead of decoding the split into memory first; auto (default) streams when the "
        "decoded split would exceed 4 GB",
    )
    p.add_argument("--workers", type=int, help="decoding processes when streaming (default: one per core, up to 8)")


def run(args: argparse.Namespace) -> int:
    from resnetkit.workflows.inference import evaluate_checkpoint

    res = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        args.data_dir,
        split=args.split,
        batch_size=args.batch_size,
        tta_flip=args.tta_flip,
        download=args.download,
        progress=not args.json,
        compile=args.compile,
        data_mode=args.data_mode,
        workers=args.workers,
        runtime=args.runtime,
    )
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"scored {res['n']} images: {res['scored']}")
    print(
        f"{res['data']} {res['split']}: top1 {100 * res['top1']:.2f}%  top5 {100 * res['top5']:.2f}%  "
        f"loss {res['loss']:.4f}  n {res['n']}"
    )
    if "single_view_top1" in res:
        print(f"flip TTA: top1 {100 * res['top1']:.2f}% (the image alone: {100 * res['single_view_top1']:.2f}%)")
    print(f"macro F1 {percent(res['macro_f1'])}  ECE {percent(res['ece'])} ({res['ece_bins']} bins)")
    width = max(len(c) for c in res["classes"])
    print(f"  {'class':<{width}}  {'acc':>6}  {'prec':>6}  {'F1':>6}")
    for name, acc in res["per_class_accuracy"].items():
        prec, f1 = res["per_class_precision"][name], res["per_class_f1"][name]
        print(f"  {name:<{width}}  {percent(acc, 1):>6}  {percent(prec, 1):>6}  {percent(f1, 1):>6}")
    return 0


def percent(value: float | None, digits: int = 2) -> str:
    """A fraction as a percentage for the terminal; '-' for an undefined metric."""
    return "-" if value is None else f"{100 * value:.{digits}f}%"
