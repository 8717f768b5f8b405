"""`resnetkit prune`: prune a trained ResNet's channels to a MACs target, then fine-tune it (train's flags)."""

from __future__ import annotations

import argparse
import time

from resnetkit.cli import train_cmd
from resnetkit.config import ConfigError, TrainConfig

# Fine-tuning a pruned network: a tenth of a from-scratch learning rate, cosine to zero (train's flags override).
DEFAULTS = {"lr": 0.01, "epochs": 10, "schedule": "cosine"}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from resnetkit.compress.prune import DEFAULT_ROUND_TO, METHODS

    p = sub.add_parser("prune", help="prune a trained ResNet to a MACs target and fine-tune it")
    p.add_argument("--checkpoint", required=True, help="run folder, checkpoint, weights file or registered name")
    p.add_argument("--target-macs", type=float, required=True, help="fraction of the original MACs to keep, e.g. 0.5")
    p.add_argument("--method", choices=METHODS, default="l1", help="which channels go (default: l1 norm)")
    p.add_argument(
        "--round-to",
        type=int,
        default=DEFAULT_ROUND_TO,
        metavar="N",
        help=f"kept inner widths are multiples of N, which the int8 and fp32 kernels run faster (default "
        f"{DEFAULT_ROUND_TO}; 1: any width)",
    )
    train_cmd.add_run_arguments(p)


def run(args: argparse.Namespace) -> int:
    from resnetkit.distributed import launched_rank
    from resnetkit.workflows.pruning import prune_and_finetune

    if args.resume:
        raise ConfigError(f"a pruning run continues as a training run: resnetkit train --resume {args.resume}")
    cfg = TrainConfig.merged(args.config, DEFAULTS, train_cmd.collect_overrides(args))
    t0 = time.perf_counter()
    pruned, result = prune_and_finetune(
        args.checkpoint, args.target_macs, args.method, cfg, seed=cfg.seed, round_to=args.round_to
    )
    if launched_rank() != 0:
        return 0
    print(
        f"pruned {args.checkpoint} to {100 * pruned.macs_ratio:.1f}% of its MACs ({pruned.macs_after / 1e6:.1f}M), "
        f"{pruned.params_after / 1e6:.3f}M parameters ({pruned.params_before / 1e6:.3f}M before)"
    )
    train_cmd.report(result, (time.perf_counter() - t0) / 60)
    return 0
