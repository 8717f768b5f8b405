"""The gradient-flow experiment (`resnetkit experiment gradflow`): plain and residual twins trained with one recipe,
their gradient flow (explain.gradflow) measured on a fixed probe batch at initialisation and along the way, written
as gradflow.csv and gradflow.png."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from resnetkit.data.factory import load_eval_split
from resnetkit.data.loader import BatchLoader
from resnetkit.engine.loop import train_step
from resnetkit.explain.gradcam import ExplainError
from resnetkit.explain.gradflow import FlowSnapshot, measure_flow
from resnetkit.models import create_model, get_model_entry
from resnetkit.optim import build_sgd
from resnetkit.plots import plot_gradient_flow
from resnetkit.transforms import preprocessing_for

log = logging.getLogger(__name__)

DEFAULT_MODELS = ("plain56", "resnet56", "plain110", "resnet110")


def is_plain(model_name: str) -> bool:
    """Whether a registered model has no shortcuts (its registry family says so)."""
    return get_model_entry(model_name).family.endswith("-plain")


def run_gradflow(
    models: Sequence[str] = DEFAULT_MODELS,
    *,
    data: str = "sample",
    data_dir: str | None = None,
    record_at: Sequence[int] = (0, 100, 500),
    batch_size: int = 128,
    lr: float = 0.1,
    probe_size: int = 128,
    seed: int = 0,
    download: bool = False,
) -> list[FlowSnapshot]:
    """Train each model with the same recipe (SGD, momentum 0.9, weight decay 1e-4, constant `lr`, the paper's
    augmentation) and measure the probe batch at every step in `record_at` (0: at initialisation)."""
    steps = sorted(set(record_at))
    if not steps or steps[0] < 0:
        raise ValueError(f"record_at must hold steps >= 0, got {list(record_at)}")
    if min(batch_size, probe_size) < 1 or lr <= 0:
        raise ExplainError(
            f"batch_size and probe_size must be positive and lr above 0, got {batch_size}, {probe_size}, {lr}"
        )
    plain = {name: is_plain(name) for name in models}  # an unknown name fails before any training
    datasets: dict[int, Any] = {}
    snapshots: list[FlowSnapshot] = []
    for name in models:
        torch.manual_seed(seed)
        model = create_model(name, num_classes=10)
        cfg = model.default_cfg
        pre = preprocessing_for(cfg, cfg.preset)
        if pre.storage_size not in datasets:
            datasets[pre.storage_size] = load_eval_split(data, data_dir, "train", pre, download=download)
        ds = datasets[pre.storage_size]
        if len(ds.classes) != model.num_classes:
            model.reset_classifier(len(ds.classes))
        x_probe, y_probe = pre.eval_batch(ds.images[:probe_size]), ds.labels[:probe_size]
        model.to(memory_format=torch.channels_last)  # the fast path's layout: same numbers, about twice as fast here
        optimizer = build_sgd(model, lr, 0.9, 1e-4, nesterov=False, no_decay_bn_bias=False)
        batches = _endless(BatchLoader(ds, pre, batch_size=batch_size, train=True, seed=seed))
        step = 0
        for target in steps:
            while step < target:
                x, y = next(batches)
                train_step(model, x, y, optimizer)
                step += 1
            snapshots.append(FlowSnapshot(name, plain[name], step, **measure_flow(model, x_probe, y_probe)))
            log.info("%s step %d: loss %.3f", name, step, snapshots[-1].loss)
    return snapshots


def _endless(loader: BatchLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def write_gradflow(snapshots: Sequence[FlowSnapshot], out: str | Path) -> tuple[Path, Path]:
    """gradflow.csv (one row per model, step, quantity and layer) and gradflow.png side by side in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "gradflow.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "plain", "step", "loss", "quantity", "index", "name", "value"])
        for s in snapshots:
            for quantity, names in (
                ("grad_norm", s.layers),
                ("weight_norm", s.layers),
                ("act_mean", s.units),
                ("act_std", s.units),
            ):
                values = getattr(s, quantity + "s" if quantity.endswith("norm") else quantity)
                for i, (name, value) in enumerate(zip(names, values, strict=True)):
                    writer.writerow([s.model, int(s.plain), s.step, f"{s.loss:.6g}", quantity, i, name, f"{value:.6g}"])
    png = plot_gradient_flow([asdict(s) for s in snapshots], out / "gradflow.png")
    return csv_path, png
