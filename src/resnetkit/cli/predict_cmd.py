"""`resnetkit predict`: the top-k classes with probabilities for image files or folders."""

from __future__ import annotations

import argparse
import json

from resnetkit.cli import add_runtime_argument


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("predict", help="classify image files or folders with a checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    add_runtime_argument(p)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON list (an unreadable file: path and error)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable file (exit 2)")


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every file was predicted, 3 when some could not be read (a warning line each), 2 on --strict."""
    from resnetkit.cli.exit_codes import warn_file_errors
    from resnetkit.workflows.inference import predict_files

    results = predict_files(args.checkpoint, args.images, topk=args.topk, strict=args.strict, runtime=args.runtime)
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            if "error" not in r:
                top = "  ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in r["top"])
                print(f"{r['path']}: {top}")
    return warn_file_errors(results)
