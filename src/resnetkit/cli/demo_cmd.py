"""`resnetkit demo`: the main job end to end on the embedded CIFAR-10 sample: train, evaluate, predict."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="train, evaluate and predict on the embedded CIFAR-10 sample (offline)")
    p.add_argument("--out", help="run folder (default runs/demo-<time>)")
    p.add_argument("--epochs", type=int, help="override the sample_quick recipe's epochs")


def run(args: argparse.Namespace) -> int:
    from resnetkit.config import TrainConfig
    from resnetkit.data.cifar import load_sample
    from resnetkit.data.examples import write_example_images
    from resnetkit.engine.runner import run_training
    from resnetkit.workflows.inference import evaluate_checkpoint, predict_files

    out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    overrides = {"out": str(out)} | ({"epochs": args.epochs} if args.epochs else {})
    print(f"1/3 train   $ resnetkit train --config sample_quick --out {out}")
    t0 = time.perf_counter()
    result = run_training(TrainConfig.merged("sample_quick", overrides=overrides))
    print(f"    {result.steps} steps in {(time.perf_counter() - t0) / 60:.1f} min -> {out}/checkpoints/last.pt")
    print(f"2/3 eval    $ resnetkit eval --checkpoint {out} --data sample")
    res = evaluate_checkpoint(out, "sample", progress=False)
    print(
        f"    held-out sample test images: top1 {100 * res['top1']:.1f}%  top5 {100 * res['top5']:.1f}%  n {res['n']}"
    )
    examples = write_example_images(load_sample("test"), out / "examples", per_class=1)
    print(f"3/3 predict $ resnetkit predict --checkpoint {out} {out}/examples")
    for r in predict_files(out, [examples], topk=1):
        truth = Path(r["path"]).stem.split("-", 1)[1]
        guess = r["top"][0]
        print(f"    {Path(r['path']).name:<22} -> {guess['class']:<10} {100 * guess['prob']:5.1f}%  (true: {truth})")
    print(f"curves: {out}/curves.png   metrics: {out}/metrics.jsonl")
    return 0
