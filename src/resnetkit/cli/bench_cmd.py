"""`resnetkit bench train | infer`: the fast path against the standard PyTorch baseline, one JSON line at the end."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bench", help="benchmark the fast path against the standard PyTorch baseline")
    kinds = p.add_subparsers(dest="bench", required=True, metavar="KIND")
    t = kinds.add_parser("train", help="end-to-end training throughput on CIFAR-10 (or the embedded sample)")
    t.add_argument("--data-dir", help="CIFAR-10 folder (default: the embedded sample)")
    t.add_argument("--model", default="resnet20")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--steps", type=int, default=40)
    i = kinds.add_parser("infer", help="inference throughput and latency on synthetic inputs")
    i.add_argument("--model", default="resnet20")
    i.add_argument("--batch-size", type=int, default=8)
    i.add_argument("--seconds", type=float, default=5.0, help="timing window per variant")
    i.add_argument("--no-fold-bn", dest="fold_bn", action="store_false")
    for k in (t, i):
        k.add_argument("--threads", type=int, help="torch threads (default: all cores)")
        k.add_argument("--no-compile", dest="compile", action="store_false")


def run(args: argparse.Namespace) -> int:
    import torch

    from resnetkit.bench.run import bench_infer, bench_train

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.bench == "train":
        from resnetkit.data.cifar import load_cifar, load_sample

        ds = load_cifar(args.data_dir, "cifar10", "train", progress=False) if args.data_dir else load_sample("train")
        result = bench_train(ds.images, ds.labels, model_name=args.model, batch_size=args.batch_size,
                             steps=args.steps, compile=args.compile)  # fmt: skip
    else:
        result = bench_infer(args.model, batch_size=args.batch_size, seconds=args.seconds, compile=args.compile,
                             fold_bn=args.fold_bn)  # fmt: skip
    r = result.to_dict()
    print(f"{'':<12}{'images/s':>10}{'GFLOP/s':>10}" + (f"{'latency ms':>12}" if r["latency_ms"] else ""))
    for who, ips, gf, lat in (("baseline", r["baseline_images_per_sec"], r["baseline_gflops_per_sec"],
                               r["baseline_latency_ms"]), ("resnetkit", r["images_per_sec"], r["gflops_per_sec"],
                                                          r["latency_ms"])):  # fmt: skip
        print(f"{who:<12}{ips:>10.1f}{gf:>10.1f}" + (f"{lat:>12.2f}" if lat else ""))
    print(f"ratio {r['ratio']:.2f}x  (compiled: {r['compiled']}, threads: {r['threads']}"
          + (f", max |diff| {r['max_abs_diff']:.2e})" if r["max_abs_diff"] is not None else ")"))  # fmt: skip
    print(json.dumps(r))
    return 0
