"""Every shipped recipe builds the optimiser and schedule its text promises (issue 14, item 5: recipe wiring beyond
max_steps). The real Trainer is built from each recipe on its real data (so steps per epoch come from the dataset, as
in a run); its scheduler is stepped through the whole run and its optimizer takes steps on zero gradients, where
SGD's update is weight decay and momentum alone. The expected numbers are the recipes' and the paper's (He et al.
2015, section 4.2: lr 0.1, divided by 10 at 32k and 48k iterations, stop at 64k, weight decay 1e-4, momentum 0.9;
ResNet-110: 0.01 for about 400 iterations first), written out here, not recomputed with `optim.lr_factor`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import resnetkit
from resnetkit.config import TrainConfig, load_yaml, recipe_names
from resnetkit.data.factory import load_training_data
from resnetkit.engine.classification import classification_trainer
from resnetkit.engine.finetune import apply_strategy
from resnetkit.engine.run_dir import RunFolder
from resnetkit.engine.trainer import Trainer
from resnetkit.models import resolve_data_config

from conftest import pin_precision, shared_data


def paper(step: int, warmup: int = 0) -> float:
    """The paper's lr for iteration `step` (0-based): 0.1, /10 from 32k, /100 from 48k; 0.01 before `warmup`."""
    if step < warmup:
        return 0.01
    return 0.1 if step < 32_000 else 0.01 if step < 48_000 else 0.001


def warmup_cosine(base: float, warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up to `base` (step k uses (k + 1) / warmup of it), then half a cosine period down to 0 at `total`."""

    def lr(step: int) -> float:
        if step < warmup:
            return base * (step + 1) / warmup
        return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    return lr


def warmup_linear(base: float, warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up to `base`, then a straight line down to 0 at `total` (the "onecycle" schedule)."""

    def lr(step: int) -> float:
        return base * (step + 1) / warmup if step < warmup else base * max(1 - (step - warmup) / (total - warmup), 0)

    return lr


@dataclass(frozen=True)
class Promise:
    data: str  # shared data folder
    steps_per_epoch: int  # training images // batch
    total: int  # optimisation steps of the whole run
    lr: Callable[[int], float]  # the head's lr at each step (fine-tuning: the backbone's is backbone_lr x it)
    checked: tuple[int, ...]  # steps where lr is compared (the schedule's corners)
    weight_decay: float
    decay_bn_and_bias: bool
    nesterov: bool
    backbone_lr: float = 1.0
    momentum: float = 0.9
    weights_stand_in: bool = False  # the recipe names downloadable weights: a local file of the same shape instead


CIFAR, CATS = "cifar-10-batches-bin", "cats_vs_dogs"
PROMISES = {
    # 50,000 / 128 = 390 steps per epoch; 165 epochs would be 64,350 steps: max_steps stops at the paper's 64k
    "cifar10_paper": Promise(CIFAR, 390, 64_000, paper, (0, 31_999, 32_000, 47_999, 48_000, 63_999), 1e-4, True, False),
    "cifar10_paper_resnet110": Promise(
        CIFAR,
        390,
        64_000,
        lambda s: paper(s, warmup=400),
        (0, 399, 400, 31_999, 32_000, 47_999, 48_000, 63_999),
        1e-4,
        True,
        False,
    ),
    # 15 epochs of 390 steps, warm-up 2 epochs (780 steps) to 0.2; 30 epochs with 4.5 epochs (1,755 steps)
    "cifar10_fast_cpu": Promise(
        CIFAR, 390, 5_850, warmup_cosine(0.2, 780, 5_850), (0, 779, 780, 3_315, 5_849), 5e-4, False, True
    ),
    "cifar10_91_cpu": Promise(
        CIFAR, 390, 11_700, warmup_cosine(0.2, 1_755, 11_700), (0, 1_754, 1_755, 6_727, 11_699), 5e-4, False, True
    ),
    # 42 epochs (16,380 steps) in bf16, warm-up 6 epochs (2,340 steps) to 0.2
    "cifar10_bf16_cpu": Promise(
        CIFAR, 390, 16_380, warmup_cosine(0.2, 2_340, 16_380), (0, 2_339, 2_340, 9_360, 16_379), 5e-4, False, True
    ),
    # ResNet-20 distilled from ResNet-56 (issue 18): cifar10_bf16_cpu's schedule exactly
    "cifar10_resnet20_kd": Promise(
        CIFAR, 390, 16_380, warmup_cosine(0.2, 2_340, 16_380), (0, 2_339, 2_340, 9_360, 16_379), 5e-4, False, True
    ),
    # fine-tuning the pruned ResNet-56: 30 epochs (11,700 steps), warm-up 1 epoch (390 steps) to 0.02
    "cifar10_resnet56_prune": Promise(
        CIFAR, 390, 11_700, warmup_cosine(0.02, 390, 11_700), (0, 389, 390, 6_045, 11_699), 5e-4, False, True
    ),
    # ResNet-56: 60 epochs (23,400 steps), warm-up 3 epochs (1,170 steps) to 0.1
    "cifar10_resnet56": Promise(
        CIFAR, 390, 23_400, warmup_cosine(0.1, 1_170, 23_400), (0, 1_169, 1_170, 12_285, 23_399), 5e-4, False, True
    ),
    # the embedded sample and the cats-vs-dogs folder: 2,000 training images / 64 = 31 steps, warm-up 1 epoch
    "sample_quick": Promise("", 31, 15 * 31, warmup_cosine(0.1, 31, 465), (0, 30, 31, 248, 464), 5e-4, False, True),
    "cats_vs_dogs": Promise(CATS, 31, 20 * 31, warmup_cosine(0.1, 31, 620), (0, 30, 31, 325, 619), 5e-4, False, True),
    # torchvision's ResNet-50 V2 and the short ImageNet recipe, on the cats-vs-dogs folder as a stand-in for ImageNet:
    # 2,000 images at a global batch of 1024 are 1 step per epoch; V2: 600 epochs, warm-up 5 epochs to 0.5, cosine
    "imagenet_resnet50_tv2": Promise(CATS, 1, 600, warmup_cosine(0.5, 5, 600), (0, 4, 5, 302, 599), 2e-5, False, False),
    "imagenet_resnet50_fast": Promise(CATS, 1, 16, warmup_linear(1.7, 2, 16), (0, 2, 3, 9, 15), 5e-5, False, False),
    "folder_224_finetune": Promise(
        CATS,
        31,
        10 * 31,
        warmup_cosine(0.01, 31, 310),
        (0, 30, 31, 170, 309),
        5e-4,
        True,
        True,
        backbone_lr=0.1,
        weights_stand_in=True,
    ),
    # fine-tuning: head lr 0.01, backbone 0.1 x that, weight decay on every trained parameter
    "cats_vs_dogs_finetune": Promise(
        CATS, 31, 15 * 31, warmup_cosine(0.01, 31, 465), (0, 30, 31, 248, 464), 5e-4, True, True, backbone_lr=0.1
    ),
}


def test_every_shipped_recipe_has_a_promise() -> None:
    assert sorted(PROMISES) == recipe_names()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pin_precision(tmp_path_factory.mktemp("home"))  # decoded image folders are cached here, once for the module


def _trainer(name: str, promise: Promise, tmp_path: Path) -> Trainer:
    """The recipe's Trainer as `resnetkit train --config NAME` builds it, on the real data, in float64 (so that
    one step of weight decay, a change of 1e-5 or less, is exact to 1e-12)."""
    values = load_yaml(name) | {"progress": False}
    if promise.data:
        values["data_dir"] = str(shared_data(promise.data))
    if promise.weights_stand_in:  # no internet here: random weights of the same architecture, as a local file
        values["weights"] = str(tmp_path / "weights.pt")
        torch.save(resnetkit.create_model(values["model"]).state_dict(), values["weights"])
    cfg = TrainConfig.from_dict(values, source=name)
    data = load_training_data(cfg, resolve_data_config(cfg.model, cfg.weights, **cfg.model_kwargs))
    model = resnetkit.create_model(cfg.model, num_classes=len(data.classes), weights=cfg.weights, **cfg.model_kwargs)
    apply_strategy(model, cfg.finetune, cfg.trainable_stages)
    return classification_trainer(cfg, data, model.double(), torch.device("cpu"), RunFolder(tmp_path / "run"))


@pytest.mark.parametrize("name", sorted(PROMISES))
def test_recipe_builds_the_schedule_and_optimizer_it_promises(name: str, tmp_path: Path, monkeypatch, home) -> None:
    monkeypatch.setenv("RESNETKIT_HOME", str(home))
    monkeypatch.setenv("RESNETKIT_OFFLINE", "1")
    promise = PROMISES[name]
    trainer = _trainer(name, promise, tmp_path)
    assert trainer.steps_per_epoch == promise.steps_per_epoch and trainer.total_steps == promise.total
    model, opt = trainer.model, trainer.optimizer
    head = {id(p) for p in model.get_classifier().parameters()}
    # (parameter, weight decay, lr multiplier) as the recipe says
    probes = [
        (model.conv1.weight, promise.weight_decay, promise.backbone_lr),
        (model.bn1.weight, promise.weight_decay if promise.decay_bn_and_bias else 0.0, promise.backbone_lr),
        (model.fc.weight, promise.weight_decay, 1.0),
        (model.fc.bias, promise.weight_decay if promise.decay_bn_and_bias else 0.0, 1.0),
    ]
    assert id(model.fc.weight) in head and id(model.conv1.weight) not in head
    before = [p.detach().clone() for p, _, _ in probes]

    # Two SGD steps on zero gradients: the update is weight decay, momentum and Nesterov's look-ahead alone.
    # PyTorch's SGD (dampening 0): g = grad + wd p; buf = g, then momentum x buf + g; d = g + momentum x buf with
    # Nesterov, else buf; p -= lr d.
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    lrs = []
    for step in range(2):
        lrs.append(promise.lr(step))
        opt.step()
        trainer.scheduler.step()
    m = promise.momentum
    for (p, wd, mult), p0 in zip(probes, before, strict=True):
        buf, expected = None, p0
        for lr in lrs:
            g = wd * expected
            buf = g if buf is None else m * buf + g
            d = g + m * buf if promise.nesterov else buf
            expected = expected - lr * mult * d
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=0)
        assert (wd == 0) == torch.equal(p.detach(), p0)  # decayed parameters did move

    # The lr of every step of the run, read from the optimizer as the step would use it (steps 0 and 1 done above).
    seen: dict[int, list[float]] = {}
    for step in range(2, promise.total):
        if step in promise.checked:
            seen[step] = [g["lr"] for g in opt.param_groups]
        trainer.scheduler.step()
    for step in promise.checked[1:]:  # step 0 was checked through the update
        head_lr, *backbone = seen[step]
        assert head_lr == pytest.approx(promise.lr(step), rel=1e-9, abs=1e-15), (name, step)
        assert backbone == [pytest.approx(head_lr * promise.backbone_lr, rel=1e-9)] * len(backbone), (name, step)
