"""`resnetkit train`: a run from a YAML recipe and/or flags; flags override the recipe."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

import yaml

from resnetkit.config import ConfigError, TrainConfig, load_yaml
from resnetkit.distributed import launched_rank

if TYPE_CHECKING:
    from resnetkit.engine.runner import RunResult

# flag -> config key, for the flags users and benchmarks need most (any key: --set KEY=VALUE)
FLAGS: dict[str, tuple[str, type]] = {
    "--task": ("task", str),
    "--detector": ("detector", str),
    "--model": ("model", str),
    "--data": ("data", str),
    "--data-dir": ("data_dir", str),
    "--epochs": ("epochs", int),
    "--batch-size": ("batch_size", int),
    "--lr": ("lr", float),
    "--max-steps": ("max_steps", int),
    "--train-subset": ("train_subset", int),
    "--test-subset": ("test_subset", int),
    "--seed": ("seed", int),
    "--device": ("device", str),
    "--out": ("out", str),
    "--img-size": ("img_size", int),
    "--val-size": ("val_size", int),
    "--schedule": ("schedule", str),
    "--weight-decay": ("weight_decay", float),
    "--label-smoothing": ("label_smoothing", float),
    "--threads": ("threads", int),
    "--checkpoint-every": ("checkpoint_every", int),
    "--early-stopping": ("early_stopping", int),
    "--amp-dtype": ("amp_dtype", str),
    "--data-mode": ("data_mode", str),
    "--workers": ("workers", int),
    "--teacher": ("teacher", str),
    "--kd-temperature": ("kd_temperature", float),
    "--kd-weight": ("kd_weight", float),
}


FINETUNE_KEYS = ("weights", "finetune", "trainable_stages", "backbone_lr_mult", "freeze_bn")


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
    """The flags shared by `train` and `finetune`."""
    p.add_argument("--config", help="YAML recipe (see configs/); flags given here override it")
    for flag, (key, kind) in FLAGS.items():
        p.add_argument(flag, dest=key, type=kind, default=None, metavar=key.upper())
    p.add_argument("--download", action="store_true", default=None, help="fetch CIFAR if the folder is empty")
    p.add_argument(
        "--amp",
        action="store_true",
        default=None,
        help="bf16/fp16 autocast (default: bf16 on a CPU where it measured faster than fp32)",
    )
    p.add_argument("--no-amp", dest="amp", action="store_false", help="train in fp32")
    p.add_argument("--strict", action="store_true", default=None, help="unreadable images are errors")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.add_argument("--compile", dest="compile", action="store_true", default=None, help="torch.compile (default: auto)")
    p.add_argument(
        "--sync-bn", dest="sync_bn", action="store_true", default=None, help="torchrun: BatchNorm over the global batch"
    )
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key (YAML value)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder (or checkpoint file)")


def collect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags the user gave (None means "not given"), then --set pairs parsed as YAML values."""
    keys = [key for key, _ in FLAGS.values()] + ["download", "amp", "strict", "progress", "compile", "sync_bn"]
    keys += [k for k in FINETUNE_KEYS if hasattr(args, k)]
    values = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
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
        values = load_yaml(args.config) if args.config else {}
        cfg = TrainConfig.from_dict({**(defaults or {}), **values, **overrides}, source=args.config or "flags")
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
