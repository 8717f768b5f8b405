"""`resnetkit finetune`: start from pretrained weights, replace the head for your classes, train a strategy."""

from __future__ import annotations

import argparse

from resnetkit.cli import train_cmd

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
    train_cmd.add_config_flags(p, "finetune")  # --strategy, --stages, --backbone-lr-mult, --freeze-bn


def run(args: argparse.Namespace) -> int:
    from resnetkit.weights.registry import get_classification_weights, is_weights_name

    defaults = dict(DEFAULTS)
    if args.model is None and is_weights_name(args.weights):
        # the architecture the weights are for
        defaults["model"] = get_classification_weights(args.weights).architecture
    return train_cmd.run(args, defaults)
