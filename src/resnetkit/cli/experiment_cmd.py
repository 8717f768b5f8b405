"""`resnetkit experiment degradation | gradflow`: the paper's findings, measured on this machine, as PNG + CSV."""

from __future__ import annotations

import argparse

from resnetkit.config import DATA_CHOICES


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("experiment", help="degradation (plain vs residual, Fig. 6) and gradient-flow experiments")
    kinds = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    d = kinds.add_parser("degradation", help="train plain and residual nets of two depths; draw Fig. 6")
    d.add_argument("--models", nargs="+", metavar="MODEL", help="default: plain20 plain56 resnet20 resnet56")
    d.add_argument("--epochs", type=int, help="default: 4 (CPU budget) or the paper's 64k iterations with --full")
    d.add_argument("--train-subset", type=int, help="training images (default 40,000; 0: all 50,000); --full: all")
    d.add_argument("--test-subset", type=int, help="test images scored each epoch (default 2,000; 0: all); --full: all")
    d.add_argument("--full", action="store_true", help="the paper's budget: all 50k images, 64k iterations")
    d.add_argument("--seed", type=int)
    d.add_argument("--device")
    d.add_argument("--threads", type=int)
    d.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    d.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other training key for every model (YAML value), e.g. --set amp=true",
    )
    g = kinds.add_parser("gradflow", help="per-layer gradient norms and activations, plain vs residual")
    g.add_argument("--models", nargs="+", metavar="MODEL", help="default: plain56 resnet56 plain110 resnet110")
    g.add_argument("--steps", default="0,100,500", help="training steps at which to measure (0: initialisation)")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=0.1)
    g.add_argument("--probe-size", type=int, default=128, help="images in the fixed batch every measurement uses")
    g.add_argument("--seed", type=int, default=0)
    for k, default, out in (
        (d, "cifar10", "one run folder per model, degradation.csv and .png"),
        (g, "sample", "gradflow.csv and gradflow.png"),
    ):
        k.add_argument("--data", default=default, choices=DATA_CHOICES)
        k.add_argument("--data-dir")
        k.add_argument("--download", action="store_true", default=None)
        k.add_argument("--out", required=True, help=f"folder for {out}")


def run(args: argparse.Namespace) -> int:
    return _degradation(args) if args.experiment == "degradation" else _gradflow(args)


def _degradation(args: argparse.Namespace) -> int:
    from resnetkit.cli.train_cmd import parse_set_pairs
    from resnetkit.config import ConfigError
    from resnetkit.engine.device import default_amp, resolve_device
    from resnetkit.experiments import DEFAULT_MODELS, degradation_configs, findings, run_degradation, write_degradation

    options = dict(
        epochs=args.epochs,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        data=args.data,
        data_dir=args.data_dir,
        download=args.download,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        progress=args.progress,
    )
    pairs = parse_set_pairs(args.set)
    for key, flag in (("model", "--models"), ("out", "--out"), ("full", "--full")):
        if key in pairs:
            raise ConfigError(f"--set {key}: use {flag} instead")
    options.update(pairs)
    configs = degradation_configs(args.models or DEFAULT_MODELS, out=args.out, full=args.full, **options)
    curves = run_degradation(configs)
    images = f"{configs[0].train_subset:,}" if configs[0].train_subset else "all"
    budget = "paper budget" if args.full else f"{configs[0].epochs} epochs, {images} images"
    amp = configs[0].amp
    if amp is None:  # the runs took the default: the measured rule on a CPU (cached, so this does not re-measure)
        amp = default_amp(resolve_device(configs[0].device), configs[0].dtype)[0]
    budget += ", bf16" if amp else ""
    csv_path, png = write_degradation(curves, args.out, title=f"{configs[0].data}, {budget}")
    for f in findings(curves):
        kind = "plain" if f["plain"] else "residual"
        (tr_s, tr_d), (te_s, te_d) = f["train_error"], f["test_error"]
        verdict = "deeper trains worse" if f["deeper_trains_worse"] else "deeper trains better"
        print(
            f"{kind}: {f['shallow']} train {tr_s:.2f}% test {te_s:.2f}% | {f['deep']} train {tr_d:.2f}% "
            f"test {te_d:.2f}%  ({verdict})"
        )
    print(f"figure: {png}   data: {csv_path}")
    return 0


def _gradflow(args: argparse.Namespace) -> int:
    from resnetkit.config import ConfigError
    from resnetkit.experiments.gradflow import DEFAULT_MODELS, run_gradflow, write_gradflow
    from resnetkit.explain.gradflow import first_to_last_ratio

    try:
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--steps expects comma-separated step numbers, got {args.steps!r}") from None
    if not steps or min(steps) < 0:
        raise ConfigError(f"--steps expects step numbers >= 0, got {args.steps!r}")
    snapshots = run_gradflow(
        args.models or DEFAULT_MODELS,
        data=args.data,
        data_dir=args.data_dir,
        record_at=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        probe_size=args.probe_size,
        seed=args.seed,
        download=bool(args.download),
    )
    csv_path, png = write_gradflow(snapshots, args.out)
    for s in snapshots:
        print(
            f"{s.model:<10} step {s.step:>5}: loss {s.loss:.3f}  |grad| first layer {s.grad_norms[0]:.3g}, "
            f"classifier {s.grad_norms[-1]:.3g} (ratio {first_to_last_ratio(s):.3g})"
        )
    print(f"figure: {png}   data: {csv_path}")
    return 0
