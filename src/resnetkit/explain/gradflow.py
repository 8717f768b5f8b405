"""Gradient flow: per-layer gradient norms and per-unit activation statistics, at initialisation and during
training, for plain and residual networks (the vanishing / exploding gradients the paper's shortcuts ease).

Every snapshot is measured on one fixed probe batch, in training mode (BatchNorm normalises with the batch's
statistics, as in a training step), without changing the model: BatchNorm's running statistics are restored
and no `.grad` is touched (gradients come from `torch.autograd.grad`). Activation hooks are removed on exit.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnetkit.data.factory import load_eval_split
from resnetkit.data.loader import BatchLoader
from resnetkit.engine.loop import train_step
from resnetkit.explain.gradcam import ExplainError, layer_names
from resnetkit.models import create_model, get_model_entry
from resnetkit.optim import build_sgd
from resnetkit.plots import plot_gradient_flow
from resnetkit.transforms import preprocessing_for

log = logging.getLogger(__name__)

DEFAULT_MODELS = ("plain56", "resnet56", "plain110", "resnet110")


@dataclass
class FlowSnapshot:
    """What one probe batch showed at one training step of one model."""

    model: str
    plain: bool
    step: int
    loss: float
    layers: list[str]  # weight layers (convolutions, the classifier) in the order they run
    grad_norms: list[float]
    weight_norms: list[float]
    units: list[str]  # the stem's modules and every block, in the order they run
    act_mean: list[float]
    act_std: list[float]


def units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of `model.feature_groups` with each stage (an nn.Sequential) opened into its blocks."""
    found = []
    for name in layer_names(model):
        module = model.get_submodule(name)
        if isinstance(module, nn.Sequential):
            found += [(f"{name}.{i}", block) for i, block in enumerate(module)]
        else:
            found.append((name, module))
    return found


@contextmanager
def record_activations(model: nn.Module) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Within the block, every unit's forward output leaves its (mean, std) in the yielded dict."""
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str) -> Any:
        def keep(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            out = output.detach().float()
            stats[name] = (out.mean(), out.std())

        return keep

    handles = [module.register_forward_hook(hook(name)) for name, module in units(model)]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def weight_layers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, weight) of every convolution and linear layer, in definition order (the order they run here)."""
    return [(n, m.weight) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def measure_flow(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Loss, per-layer gradient and weight norms, per-unit activation mean and std on (x, y); the model's state
    (running statistics, mode, gradients) is left as it was."""
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    was_training = model.training
    model.train()
    layers = weight_layers(model)
    try:
        with torch.enable_grad(), record_activations(model) as stats:
            loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, [w for _, w in layers])
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
        model.train(was_training)
    return {
        "loss": float(loss.detach()),
        "layers": [n for n, _ in layers],
        "grad_norms": [float(g.norm()) for g in grads],
        "weight_norms": [float(w.detach().norm()) for _, w in layers],
        "units": list(stats),
        "act_mean": [float(m) for m, _ in stats.values()],
        "act_std": [float(s) for _, s in stats.values()],
    }


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


def first_to_last_ratio(snapshot: FlowSnapshot) -> float:
    """Gradient norm of the first weight layer (the stem's convolution) over that of the last (the classifier):
    far below 1 means the gradient vanishes on its way to the early layers, far above 1 that it explodes."""
    norms = snapshot.grad_norms
    return norms[0] / norms[-1] if norms and norms[-1] > 0 else float("nan")
