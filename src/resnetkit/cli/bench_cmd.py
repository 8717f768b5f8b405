"""`resnetkit bench train | infer | eval | data`: the fast path against the standard baseline, a JSON line last."""

from __future__ import annotations

import argparse
import json

from resnetkit.cli import add_runtime_argument


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bench", help="benchmark the fast path against the standard PyTorch baseline")
    kinds = p.add_subparsers(dest="bench", required=True, metavar="KIND")
    t = kinds.add_parser("train", help="end-to-end training throughput on CIFAR-10 (or the embedded sample)")
    t.add_argument("--data-dir", help="CIFAR-10 folder (default: the embedded sample)")
    t.add_argument("--model", default="resnet20")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--steps", type=int, default=40)
    t.add_argument("--amp", action="store_true", help="resnetkit's side in bf16 autocast (the baseline stays fp32)")
    i = kinds.add_parser("infer", help="inference throughput and latency on synthetic inputs")
    i.add_argument("--model", default="resnet20")
    i.add_argument("--batch-size", type=int, default=8)
    i.add_argument("--seconds", type=float, default=5.0, help="timing window per variant")
    i.add_argument("--no-fold-bn", dest="fold_bn", action="store_false")
    i.add_argument(
        "--checkpoint",
        help="a checkpoint, registered name or exported file (.onnx, int8, .pt2), run "
        "as deployed; adds batch-1 latency p50/p99",
    )
    for k in (t, i):
        k.add_argument("--no-compile", dest="compile", action="store_false")
    e = kinds.add_parser("eval", help="one whole evaluation of the CIFAR-10 test set (or the sample), end to end")
    e.add_argument("--data-dir", help="CIFAR-10 folder (default: the embedded sample)")
    e.add_argument("--model", default="resnet20", help="architecture at random initialisation (or --checkpoint)")
    e.add_argument("--checkpoint", help="a trained checkpoint, run folder or weights name: top-1 is then compared")
    e.add_argument("--batch-size", type=int, default=250, help="for both sides")
    e.add_argument("--compile", dest="compile", action="store_true", default=None, help="default: as resnetkit eval")
    e.add_argument("--no-compile", dest="compile", action="store_false")
    d = kinds.add_parser("data", help="the training input pipeline alone: streamed folder vs torchvision ImageFolder")
    d.add_argument("--data-dir", required=True, help="an image folder (train/ is used when there is one)")
    d.add_argument("--img-size", type=int, default=224)
    d.add_argument("--workers", type=int, default=2, help="DataLoader worker processes, for both sides")
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--images", type=int, default=1024, help="images per timed round")
    d.add_argument("--rounds", type=int, default=3)
    for k in (t, i, e, d):
        k.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    for k in (i, e):
        add_runtime_argument(k)


def run(args: argparse.Namespace) -> int:
    import torch

    from resnetkit.bench.run import bench_infer, bench_train

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.bench == "train":
        from resnetkit.data.cifar import load_cifar, load_sample

        ds = load_cifar(args.data_dir, "cifar10", "train", progress=False) if args.data_dir else load_sample("train")
        result = bench_train(
            ds.images,
            ds.labels,
            model_name=args.model,
            batch_size=args.batch_size,
            steps=args.steps,
            compile=args.compile,
            amp=args.amp,
        )
    elif args.bench == "eval":
        result = _bench_eval(args)
    elif args.bench == "data":
        from resnetkit.bench.data import bench_data

        result = bench_data(args.data_dir, args.img_size, args.workers, args.batch_size, args.images, args.rounds)
    elif args.checkpoint:
        from resnetkit.bench.deployed import bench_infer_checkpoint

        result = bench_infer_checkpoint(
            args.checkpoint,
            batch_size=args.batch_size,
            seconds=args.seconds,
            compile=args.compile,
            fold_bn=args.fold_bn,
            runtime=args.runtime,
        )
    else:
        result = bench_infer(
            args.model, batch_size=args.batch_size, seconds=args.seconds, compile=args.compile, fold_bn=args.fold_bn
        )
    _print_result(result.to_dict())
    return 0


def _print_result(r: dict) -> None:
    """The baseline-vs-resnetkit table, the ratio line, the bench's own lines, and the JSON record."""
    print(f"{'':<12}{'images/s':>10}{'GFLOP/s':>10}" + (f"{'latency ms':>12}" if r["latency_ms"] else ""))
    for who, ips, gf, lat in (
        ("baseline", r["baseline_images_per_sec"], r["baseline_gflops_per_sec"], r["baseline_latency_ms"]),
        ("resnetkit", r["images_per_sec"], r["gflops_per_sec"], r["latency_ms"]),
    ):
        print(f"{who:<12}{ips:>10.1f}{gf:>10.1f}" + (f"{lat:>12.2f}" if lat else ""))
    amp = ", bf16 autocast" if (r["extra"] or {}).get("amp") else ""
    x = r["extra"] or {}
    if "p50_ms" in x:
        print(
            f"batch 1: p50 {x['p50_ms']:.2f} ms, p99 {x['p99_ms']:.2f} ms (baseline p50 {x['baseline_p50_ms']:.2f} "
            f"ms, p99 {x['baseline_p99_ms']:.2f} ms; {x['baseline_p50_ms'] / x['p50_ms']:.2f}x); {x['runtime']}, "
            f"{x['precision']}"
        )
    print(
        f"ratio {r['ratio']:.2f}x  (compiled: {r['compiled']}{amp}, threads: {r['threads']}"
        + (f", max |diff| {r['max_abs_diff']:.2e})" if r["max_abs_diff"] is not None else ")")
    )
    if r["bench"] == "eval":
        x = r["extra"]
        print(
            f"{x['n']} images: baseline {x['baseline_seconds']:.1f} s, resnetkit {x['seconds']:.1f} s; second pass "
            f"{x['warm_baseline_images_per_sec']:.0f} vs {x['warm_images_per_sec']:.0f} img/s "
            f"({x['warm_ratio']:.2f}x); top-1 {100 * x['baseline_top1']:.2f}% vs {100 * x['top1']:.2f}%"
        )
    print(json.dumps(r))


def _bench_eval(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from resnetkit.bench.run import bench_eval
    from resnetkit.data.cifar import load_cifar, load_sample
    from resnetkit.models import create_model
    from resnetkit.transforms import preprocessing_for

    ds = load_cifar(args.data_dir, "cifar10", "test", progress=False) if args.data_dir else load_sample("test")
    if args.checkpoint:
        from resnetkit.bench.deployed import baseline_for
        from resnetkit.errors import DataError
        from resnetkit.runtime import Predictor

        loaded = Predictor.load(args.checkpoint, runtime=args.runtime)
        pre, classes = loaded.preprocessing, loaded.classes
        if pre.kind != "cifar" or pre.size != 32 or len(classes) != len(ds.classes):
            raise DataError(
                f"{args.checkpoint} is not a 32x32, {len(ds.classes)}-class CIFAR model: bench eval "
                "runs the CIFAR-10 test set"
            )
        if not loaded.supports_gradients:  # an exported file: against the eager model of its architecture
            baseline, _ = baseline_for(loaded)
            return bench_eval(
                ds.images,
                ds.labels,
                loaded.model,
                pre,
                model_name=args.checkpoint,
                batch_size=args.batch_size,
                baseline=baseline,
                deployed=True,
            )
        model, name = loaded.model, args.checkpoint
    else:
        import torch

        torch.manual_seed(0)
        model = create_model(args.model, num_classes=len(ds.classes))
        pre, name = preprocessing_for(model.default_cfg, "cifar"), args.model
    return bench_eval(
        ds.images, ds.labels, model, pre, model_name=name, batch_size=args.batch_size, compile=args.compile
    )
