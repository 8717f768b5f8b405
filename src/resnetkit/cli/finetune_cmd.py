"""`resnetkit finetune`: start from pretrained weights, replace the head for your classes, train a strategy."""

from __future__ import annotations

import argparse

from resnetkit.cli import train_cmd
from resnetkit.config import FINETUNE_STRATEGIES

# A fine-tuning run's defaults (any of them can be overridden by --config or flags).
DEFAULTS = {
    "data": "folder",
    "finetune": "full",
    "backbone_lr_mult": 0.1,
    "lr": 0.01,
    "epochs": 10,
    "batch_size": 64,
    "nesterov": True,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "label_smoothing": 0.1,
}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("finetune", help="fine-tune pretrained weights on your own image folder")
    train_cmd.add_run_arguments(p)
    p.add_argument("--weights", dest="weights", required=True, help="registered name, file or URL")
    p.add_argument(
        "--strategy",
        dest="finetune",
        choices=FINETUNE_STRATEGIES,
        default=None,
        help="full (lower backbone lr), linear (frozen backbone), last (last N stages)",
    )
    p.add_argument("--stages", dest="trainable_stages", type=int, default=None, help="N for --strategy last")
    p.add_argument("--backbone-lr-mult", dest="backbone_lr_mult", type=float, default=None)
    p.add_argument("--freeze-bn", dest="freeze_bn", action="store_true", default=None)


def run(args: argparse.Namespace) -> int:
    from resnetkit.weights.registry import get_classification_weights, is_weights_name

    defaults = dict(DEFAULTS)
    if args.model is None and is_weights_name(args.weights):
        # the architecture the weights are for
        defaults["model"] = get_classification_weights(args.weights).architecture
    return train_cmd.run(args, defaults)
