"""The degradation experiment (He et al., 2015, section 4.2, Figure 6): plain and residual networks of two or
more depths, trained with one recipe and budget; a deeper plain network ends with *higher training* error than
a shallower one, a deeper residual network with lower error.

Every model is an ordinary run (`engine.runner.run_training` with a `TrainConfig`) in `out/<model>/`, so each
has its config, metrics.jsonl, curves and checkpoints; an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetkit.checkpoint import load_checkpoint
from resnetkit.config import ConfigError, TrainConfig, load_yaml
from resnetkit.engine.runner import run_training
from resnetkit.models import create_model, get_model_entry
from resnetkit.plots import plot_degradation

log = logging.getLogger(__name__)

DEFAULT_MODELS = ("plain20", "plain56", "resnet20", "resnet56")
# The paper's recipe (SGD, momentum 0.9, weight decay 1e-4, lr 0.1, pad-and-crop + flip) on a budget that fits 30
# minutes of 2 CPU cores for the four default models (21.7 minutes measured, docs/explain.md): 40,000 training images
# for 4 epochs, batch 64, a cosine decay after a half-epoch linear warm-up in place of the 64k-iteration step
# schedule, each epoch scored on a fixed 2,000 of the 10,000 test images, and, as every training run, bf16 autocast
# on a CPU where it measured faster than fp32 (`engine.device.default_amp`; 1.4-2.3x here). The budgets measured here
# show that resnet56's deficit against resnet20 is a delay at the start, made up only by seeing more *distinct*
# images: on 4,000-image subsets it stayed 4-7 points behind for any number of epochs, batch size, lr or warm-up
# tried; on all 50,000 images for 3 epochs it ended 0.8 points behind; this budget's 160,000 images put it 0.6 ahead.
# `full=True` takes the paper's own schedule instead.
CPU_RECIPE: dict[str, Any] = {
    "data": "cifar10",
    "augment": "cifar",
    "batch_size": 64,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "schedule": "cosine",
    "warmup_epochs": 0.5,
    "epochs": 4,
    "train_subset": 40000,
    "test_subset": 2000,
}
FULL_RECIPE = "cifar10_paper"
_MAY_DIFFER = {"progress", "device", "threads", "compile", "checkpoint_every", "download"}


@dataclass
class Curve:
    """Training and test error (%) per epoch of one model."""

    model: str
    plain: bool
    depth: int
    epochs: list[int]
    train_error: list[float]
    test_error: list[float]


def degradation_configs(
    models: Sequence[str] = DEFAULT_MODELS,
    *,
    out: str | Path,
    full: bool = False,
    epochs: int | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    **options: Any,
) -> list[TrainConfig]:
    """One TrainConfig per model, identical except for the model and its run folder `out/<model>`.

    `options` are further TrainConfig keys shared by all runs (data, data_dir, download, seed, device, ...)."""
    if "model" in options:
        raise ConfigError("the models are chosen with --models, not the model key")
    if len(models) < 2:
        raise ConfigError("the degradation experiment needs at least two models (e.g. plain20 plain56)")
    base = dict(load_yaml(FULL_RECIPE)) if full else dict(CPU_RECIPE)
    if epochs is not None:
        base["epochs"] = epochs
    for key, value in (("train_subset", train_subset), ("test_subset", test_subset)):
        if value is not None:  # 0: all images; a negative count is refused by TrainConfig
            base[key] = value or None
    base.update({k: v for k, v in options.items() if v is not None})
    for name in models:
        get_model_entry(name)  # an unknown name fails before any training
    return [TrainConfig.from_dict({**base, "model": m, "out": str(Path(out) / m)}, source="experiment") for m in models]


def run_degradation(configs: Sequence[TrainConfig]) -> list[Curve]:
    """Train (or continue, or reuse) every run and return its curve."""
    return [_curve(cfg, _history(cfg)) for cfg in configs]


def _history(cfg: TrainConfig) -> list[dict[str, Any]]:
    """The run's per-epoch metrics: trained now, continued after an interruption, or read from a finished run."""
    last = Path(str(cfg.out)) / "checkpoints" / "last.pt"
    if not last.exists():
        log.info("training %s -> %s", cfg.model, cfg.out)
        return run_training(cfg).history
    saved = load_checkpoint(last)["config"]
    wanted = cfg.to_dict()
    if wanted["amp"] is None:  # the default precision: the run decided it when it started, and keeps it
        wanted["amp"] = saved.get("amp")
    differ = sorted(k for k in wanted.keys() - _MAY_DIFFER if saved.get(k) != wanted[k])
    if differ:
        raise ConfigError(
            f"{cfg.out} holds a run with another recipe ({', '.join(differ)} differ); choose another --out"
        )
    log.info("continuing or reusing the run in %s", cfg.out)
    return run_training(cfg, resume=cfg.out).history


def _curve(cfg: TrainConfig, history: list[dict[str, Any]]) -> Curve:
    with torch.device("meta"):
        depth = weighted_depth(create_model(cfg.model, **cfg.model_kwargs))
    return Curve(
        model=cfg.model,
        plain=get_model_entry(cfg.model).family.endswith("-plain"),
        depth=depth,
        epochs=[int(h["epoch"]) for h in history],
        train_error=[100 * (1 - h["train_top1"]) for h in history],
        test_error=[100 * (1 - h["test_top1"]) for h in history],
    )


def weighted_depth(model: nn.Module) -> int:
    """The paper's depth: convolutions and fully connected layers on the main path (projection shortcuts aside)."""
    return sum(
        isinstance(m, (nn.Conv2d, nn.Linear)) and "downsample" not in name.split(".")
        for name, m in model.named_modules()
    )


def write_degradation(curves: Sequence[Curve], out: str | Path, title: str = "") -> tuple[Path, Path]:
    """degradation.csv (one row per model and epoch) and degradation.png (plain left, residual right)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "degradation.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "plain", "depth", "epoch", "train_error", "test_error"])
        for c in curves:
            for row in zip(c.epochs, c.train_error, c.test_error, strict=True):
                writer.writerow([c.model, int(c.plain), c.depth, row[0], f"{row[1]:.3f}", f"{row[2]:.3f}"])
    png = plot_degradation([vars(c) for c in curves], out / "degradation.png", title=title)
    return csv_path, png


def findings(curves: Sequence[Curve]) -> list[dict[str, Any]]:
    """For the plain and for the residual networks: the final errors of the shallowest and the deepest, and
    whether the deeper one trains worse (the degradation problem) or better (what shortcuts give)."""
    result = []
    for plain in (True, False):
        group = sorted((c for c in curves if c.plain == plain and c.epochs), key=lambda c: c.depth)
        if len(group) < 2:
            continue
        shallow, deep = group[0], group[-1]
        result.append(
            {
                "plain": plain,
                "shallow": shallow.model,
                "deep": deep.model,
                "train_error": (shallow.train_error[-1], deep.train_error[-1]),
                "test_error": (shallow.test_error[-1], deep.test_error[-1]),
                "deeper_trains_worse": deep.train_error[-1] > shallow.train_error[-1],
                "deeper_tests_worse": deep.test_error[-1] > shallow.test_error[-1],
            }
        )
    return result
