"""`resnetkit audit`: wrong labels, duplicates, train/test leakage and broken files, before you train."""

from __future__ import annotations

import argparse
import json

from resnetkit.audit.options import DEFAULT_THRESHOLD, EMBEDDINGS, METHODS, TOP_K
from resnetkit.cli.train_cmd import parse_set_pairs


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "audit", help="find wrong labels, duplicates, train/test leakage and broken files (report.html, CSVs)"
    )
    p.add_argument("--data", required=True, help="cifar10, cifar100, folder or sample")
    p.add_argument("--data-dir", help="the data set's folder (image folders: train/ + val/, or class folders)")
    p.add_argument("--out", required=True, help="folder for report.html, audit.json, the CSVs (and the fold runs)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--folds", type=int, metavar="K", help="train K models, each without one fold, for label issues")
    which.add_argument(
        "--checkpoint", help="label issues from this model's probabilities, on the splits it did not train on"
    )
    p.add_argument("--config", help="the recipe the fold models train with (default: the data's usual, shorter)")
    p.add_argument("--epochs", type=int, help="the fold models' epochs (overrides the recipe)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any training key, for the folds")
    p.add_argument(
        "--embed-model",
        help="model whose features find near duplicates (default: the checkpoint, the "
        "first fold's model, else resnet20.rk_cifar10)",
    )
    p.add_argument(
        "--embedding",
        default=EMBEDDINGS[0],
        choices=EMBEDDINGS,
        help="near duplicates by a 16x16 pixel signature (default) or by the model's pooled features",
    )
    p.add_argument(
        "--threshold", type=float, default=DEFAULT_THRESHOLD, help="similarity of a near duplicate (docs/audit.md)"
    )
    p.add_argument("--top-k", type=int, default=TOP_K, help="most similar partners kept per image")
    p.add_argument("--method", default=METHODS[0], choices=METHODS, help="confident learning's way to flag images")
    p.add_argument("--seed", type=int, default=0, help="the folds' and the held-out split's seed")
    p.add_argument("--show", type=int, default=40, help="findings shown with thumbnails per section")
    p.add_argument("--workers", type=int, help="decoding processes for streamed folders")
    p.add_argument("--download", action="store_true", help="fetch CIFAR if the folder is empty")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print audit.json")


def run(args: argparse.Namespace) -> int:
    from resnetkit.audit.options import AuditOptions
    from resnetkit.audit.report import write_report
    from resnetkit.audit.run import run_audit

    overrides = parse_set_pairs(args.set)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    opts = AuditOptions(
        data=args.data,
        out=args.out,
        data_dir=args.data_dir,
        checkpoint=args.checkpoint,
        folds=args.folds,
        recipe=args.config,
        overrides=overrides,
        embed_model=args.embed_model,
        embedding=args.embedding,
        threshold=args.threshold,
        top_k=args.top_k,
        method=args.method,
        seed=args.seed,
        download=args.download,
        progress=args.progress and not args.json,
        workers=args.workers,
        show=args.show,
    )
    numbers = write_report(run_audit(opts))
    if args.json:
        print(json.dumps(numbers))
        return 0
    print(summary(numbers, args.out))
    return 0


def summary(numbers: dict, out: str) -> str:
    """A few lines: what was found, where the report is."""
    d = numbers["duplicates"]
    splits = numbers["splits"]
    lines = [f"audited {splits['train']['n']:,} training and {splits['test']['n']:,} held-out images"]
    if "files" in numbers:
        problems = ", ".join(f"{k} {v}" for k, v in numbers["files"]["problems"].items()) or "none"
        lines.append(f"files: {numbers['files']['checked']:,} checked; problems: {problems}")
    lines.append(
        f"leakage: {d['test_train']['test_images']:,} held-out images pair with a training image "
        f"({d['test_train']['exact']} exact, {d['test_train']['near']} near pairs)"
    )
    lines.append(f"duplicates: {d['train']['pairs']:,} pairs within train, {d['test']['pairs']:,} within held-out")
    for split, n in numbers.get("label_issues", {}).items():
        if isinstance(n, dict) and "flagged" in n:
            lines.append(f"label issues ({split}): {n['flagged']:,} flagged of {n['scored']:,}")
    lines.append(f"report: {out}/report.html (and audit.json, the CSVs)")
    return "\n".join(lines)
