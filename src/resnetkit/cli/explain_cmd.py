"""`resnetkit explain`: Grad-CAM and Grad-CAM++ heat maps of a checkpoint's predictions on image files."""

from __future__ import annotations

import argparse
import json

METHOD_CHOICES = {"both": ("gradcam", "gradcam++"), "gradcam": ("gradcam",), "gradcam++": ("gradcam++",)}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("explain", help="Grad-CAM / Grad-CAM++ heat-map overlays for image files")
    p.add_argument("--checkpoint", required=True, help="checkpoint file, run folder or registered weights name")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--out", required=True, help="folder for the PNG overlays")
    p.add_argument("--layer", help="layer to explain (default: the last stage); an unknown name lists the valid ones")
    p.add_argument("--method", default="both", choices=list(METHOD_CHOICES))
    p.add_argument("--class", dest="target_class", help="explain this class instead of the predicted one")
    p.add_argument("--json", action="store_true", help="print one JSON list (an unusable file: path and error)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable or refused file (exit 2)")


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every file was explained, 3 when some were unreadable or refused (a warning line each), 2 on
    --strict."""
    from resnetkit.cli.exit_codes import warn_file_errors
    from resnetkit.explain.images import explain_files
    from resnetkit.workflows.inference import load_for_inference

    model, pre, classes = load_for_inference(args.checkpoint, exported_ok=False)  # Grad-CAM needs gradients
    records = explain_files(
        model,
        pre,
        classes,
        args.images,
        args.out,
        layer=args.layer,
        methods=METHOD_CHOICES[args.method],
        target_class=args.target_class,
        strict=args.strict,
    )
    if args.json:
        print(json.dumps(records))
    else:
        for r in records:
            if "error" not in r:
                print(f"{r['path']}: {r['class']} {100 * r['prob']:.1f}% -> {r['out']}")
    return warn_file_errors(records)
