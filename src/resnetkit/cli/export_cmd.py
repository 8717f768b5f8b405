"""`resnetkit export`: a checkpoint as a deployable ONNX (fp32 or int8) or torch.export `.pt2` file."""

from __future__ import annotations

import argparse
from pathlib import Path

from resnetkit.config import DATA_CHOICES


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("export", help="export a checkpoint to ONNX, OpenVINO, ExecuTorch (fp32 / int8) or .pt2")
    p.add_argument("--checkpoint", help="run folder, checkpoint, weights file (with --model) or registered name")
    p.add_argument("--model", help="architecture: untrained alone, or the one a plain weights file is for")
    p.add_argument(
        "--format",
        default="onnx",
        help="onnx | pt2 | openvino (IR: NAME.xml + NAME.bin) | executorch (.pte) | triton (a Triton model "
        "repository entry); default onnx",
    )
    p.add_argument("--out", required=True, help="the file to write (triton: the model repository folder)")
    p.add_argument("--name", help="triton: the model's name in the repository (default: its architecture)")
    p.add_argument("--max-batch", type=int, default=64, help="triton: max_batch_size (the dynamic batch)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="static int8 (onnx: ONNX Runtime; openvino: NNCF; executorch: XNNPACK's quantizer), calibrated on --data",
    )
    p.add_argument("--data", choices=DATA_CHOICES, help="int8: calibration images (their training split)")
    p.add_argument("--data-dir")
    p.add_argument("--calib-size", type=int, default=512, help="int8: calibration images (default 512)")
    p.add_argument("--seed", type=int, default=0, help="int8: which calibration images are drawn")
    p.add_argument("--download", action="store_true")
    p.add_argument(
        "--with-preprocessing",
        action="store_true",
        help="onnx/triton: the graph takes uint8 [N, H, W, 3] pixels at the input size and normalises them itself",
    )
    p.add_argument(
        "--test-data",
        type=int,
        default=0,
        metavar="N",
        help="onnx: also write test_data_set_0/ (N real images, logits)",
    )


def run(args: argparse.Namespace) -> int:
    from resnetkit.workflows.deploy import export_checkpoint, export_triton, written_files

    options = dict(model=args.model, int8=args.int8, data=args.data, data_dir=args.data_dir)
    options |= dict(calib_size=args.calib_size, seed=args.seed, download=args.download)
    options |= dict(with_preprocessing=args.with_preprocessing)
    if args.format == "triton":
        entry, meta, check = export_triton(
            args.checkpoint, args.out, name=args.name, max_batch_size=args.max_batch, **options
        )
        print(
            f"wrote {entry}: config.pbtxt, labels.txt, 1/model.onnx ({meta.precision}, {meta.architecture}, "
            f"{len(meta.classes)} classes, max_batch_size {args.max_batch}); {check}"
        )
        return 0
    meta, check = export_checkpoint(args.checkpoint, args.format, args.out, test_data=args.test_data, **options)
    size = sum(f.stat().st_size for f in written_files(Path(args.out), meta.format) if f.is_file()) / 1e6
    calib = f", calibrated on {meta.calibration['images']} images" if meta.calibration else ""
    print(
        f"wrote {args.out}: {meta.format} {meta.precision}, {meta.architecture}, {len(meta.classes)} classes, "
        f"{size:.2f} MB{calib}; {check}"
    )
    if args.test_data:
        print(f"wrote {Path(args.out).parent / 'test_data_set_0'}: input_0.pb, output_0.pb ({args.test_data} images)")
    return 0
