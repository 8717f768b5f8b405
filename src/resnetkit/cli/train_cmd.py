"""`resnetkit train`: a run from a YAML recipe and/or flags; flags override the recipe."""

from __future__ import annotations

import argparse
import time
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import yaml

from resnetkit.config import ConfigError, TrainConfig, flag_settings
from resnetkit.distributed import launched_rank

if TYPE_CHECKING:
    from resnetkit.engine.runner import RunResult


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("train", help="train a model (YAML recipe and/or flags)")
    add_run_arguments(p)
    # not in add_run_arguments: `finetune` declares its own (required) --weights
    p.add_argument(
        "--weights",
        help="start from these weights (registered name, file or URL); detection: backbone weights, or COCO weights "
        "for the whole detector but its class layers",
    )


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The flags shared by `train`, `finetune`, `distill` and `prune`: the run's config flags, generated from
    TrainConfig's declarations, then --config, --set and --resume."""
    p.add_argument("--config", help="YAML recipe (see configs/); flags given here override it")
    add_config_flags(p, "run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key (YAML value)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder (or checkpoint file)")


def add_config_flags(p: argparse.ArgumentParser, scope: str) -> None:
    """One flag per TrainConfig field of `scope` that declares one (config._setting): its name, type, help and
    choices come from the declaration. Every default is None ("not given"): the recipe or the config's default
    applies. Choices are checked by TrainConfig (a one-line error), not by argparse."""
    for f in flag_settings(scope):
        meta = f.metadata
        flag = meta["flag"] if isinstance(meta["flag"], str) else "--" + f.name.replace("_", "-")
        help = meta["help"] + (f" (one of {', '.join(meta['choices'])})" if meta["choices"] else "")
        kind = _flag_type(str(f.type))
        if kind is bool:
            if meta["flag"]:
                p.add_argument(flag, dest=f.name, action="store_true", default=None, help=help)
            if meta["no_flag"]:
                no_help = f"not {flag}" if meta["flag"] else help
                p.add_argument(meta["no_flag"], dest=f.name, action="store_false", default=None, help=no_help)
        else:
            p.add_argument(flag, dest=f.name, type=kind, default=None, metavar=f.name.upper(), help=help)


def _flag_type(annotation: str) -> type:
    """The flag's type from the field's annotation ("int | None" -> int)."""
    kinds = {"bool": bool, "int": int, "float": float, "str": str}
    return kinds[annotation.split("|")[0].strip()]


def collect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config fields the user gave as flags (None means "not given"), then --set pairs parsed as YAML values."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    return {**values, **parse_set_pairs(args.set)}


def parse_set_pairs(pairs: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` pairs as config keys and YAML values (later pairs win)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        values[key.strip().replace("-", "_")] = yaml.safe_load(raw)
    return values


def run(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> int:
    overrides = collect_overrides(args)
    t0 = time.perf_counter()
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its own recipe; drop --config")
        result = _runner(_checkpoint_task(args.resume))(TrainConfig(), resume=args.resume, overrides=overrides)
    else:
        cfg = TrainConfig.merged(args.config, defaults, overrides)
        result = _runner(cfg.task)(cfg)
    if launched_rank() != 0:
        return 0  # under torchrun, rank 0 reports
    report(result, (time.perf_counter() - t0) / 60)
    return 0


def _runner(task: str) -> Any:
    """Classification's run_training (engine) or detection's (tasks.train), which take the same arguments."""
    if task == "detection":
        from resnetkit.tasks.train import run_detection_training

        return run_detection_training
    from resnetkit.engine.runner import run_training

    return run_training


def _checkpoint_task(resume: str) -> str:
    """Which task wrote the checkpoint: its record read with the tensors mapped, not loaded (the runner loads it)."""
    from resnetkit.checkpoint import load_checkpoint

    return str(load_checkpoint(resume, mmap=True).get("task", "classification"))


def report(result: RunResult, minutes: float) -> None:
    """The run's last scores and where its best checkpoint is."""
    last = result.history[-1] if result.history else {}
    scores = ", ".join(f"{k} {100 * v:.2f}%" for k, v in last.items() if k.endswith(("_top1", "_map", "_map_50")))
    print(f"run {result.run_dir}: {result.stopped} after {result.steps} steps in {minutes:.1f} min; {scores}")
    if result.best:
        print(f"best checkpoint {result.run_dir / 'checkpoints' / 'best.pt'} (epoch {result.best['epoch']})")
