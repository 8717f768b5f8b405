"""`resnetkit distill`: `resnetkit train` with a teacher (Hinton's soft targets); every train flag works."""

from __future__ import annotations

import argparse

from resnetkit.cli import train_cmd
from resnetkit.config import ConfigError, TrainConfig


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("distill", help="train a student with a teacher's soft targets (knowledge distillation)")
    train_cmd.add_run_arguments(p)  # includes --teacher, --kd-temperature (default 4), --kd-weight (default 0.9)


def run(args: argparse.Namespace) -> int:
    if not args.resume and not TrainConfig.merged(args.config, None, train_cmd.collect_overrides(args)).teacher:
        raise ConfigError("distill needs --teacher (a checkpoint, run folder or registered weights name)")
    return train_cmd.run(args)
