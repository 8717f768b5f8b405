"""The effect, not only the running, of mixup, CutMix, cutout, gradient clipping and early stopping (issue 14,
item 5). Each test checks an observable fact of the technique's definition: what the mixed batch and its targets
are, which pixels cutout blanks, how far a clipped step can move the weights, when a run stops."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetkit.config import TrainConfig
from resnetkit.constants import CIFAR10_MEAN, CIFAR10_STD
from resnetkit.data import load_sample
from resnetkit.data.factory import preprocessing_from_config
from resnetkit.data.loader import BatchLoader
from resnetkit.engine.loop import Mixing, train_step
from resnetkit.engine.runner import run_training
from resnetkit.models import resolve_data_config
from resnetkit.transforms import Preprocessing


@pytest.fixture(autouse=True)
def _threads_restored(keep_threads: None) -> None:
    """Runs here use one thread (`--threads 1`: tiny models run fastest so on a shared 2-core machine)."""


def _batch(n: int = 16, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with continuous random pixels (no two equal) and labels 0..n-1, so a label names its image."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.arange(n)


# --- mixup and CutMix ----------------------------------------------------------------------------------------------


def test_mixup_blends_each_image_with_the_one_its_second_label_names() -> None:
    x, y = _batch()
    lams = []
    for seed in range(20):
        mixed, ya, yb, lam = Mixing(mixup=1.0).apply(x, y, torch.Generator().manual_seed(seed))
        assert torch.equal(ya, y) and sorted(yb.tolist()) == y.tolist() and 0 < lam < 1  # yb: a permutation
        for i in range(len(y)):  # image i is lam of itself and 1 - lam of image yb[i], and of nothing else
            torch.testing.assert_close(mixed[i], lam * x[i] + (1 - lam) * x[yb[i]], rtol=0, atol=1e-6)
        lams.append(lam)
    assert len(set(lams)) == 20  # a new weight for every batch


def test_mixup_weights_follow_beta_alpha_alpha() -> None:
    """Beta(1, 1) is uniform on (0, 1); Beta(0.2, 0.2) puts most of its mass near 0 and 1 (Zhang et al.'s CIFAR
    setting, alpha 0.2, barely mixes most batches)."""
    x, y = _batch(4, 2)

    def middle_share(alpha: float) -> float:
        lams = [Mixing(mixup=alpha).apply(x, y, torch.Generator().manual_seed(s))[3] for s in range(400)]
        return sum(0.1 < lam < 0.9 for lam in lams) / len(lams)

    assert 0.7 < middle_share(1.0) < 0.9 and middle_share(0.2) < 0.45  # exact shares: 0.8 and about 0.32


def test_the_mixing_weight_comes_from_the_batch_generator_alone() -> None:
    """Every torchrun process (each with its own global RNG stream) mixes a batch with the same weight and
    partners, and so does a resumed run: the draw depends on the batch's generator only."""
    x, y = _batch(8, 8)
    draws = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        mixed, _, yb, lam = Mixing(mixup=0.2, cutmix=1.0).apply(x, y, torch.Generator().manual_seed(5))
        draws.append((mixed, yb, lam))
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    assert draws[0][2] == draws[1][2]


def test_finetuning_keeps_bn_and_biases_out_of_weight_decay_when_asked() -> None:
    from resnetkit.engine.finetune import finetune_param_groups
    from resnetkit.models import create_model

    model = create_model("resnet20", num_classes=3)
    groups = finetune_param_groups(model, 0.1, 0.1, 5e-4, no_decay_bn_bias=True)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert len(by_id) == sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        group = by_id[id(p)]
        assert group["weight_decay"] == (0.0 if p.ndim == 1 else 5e-4), name  # BN weights/biases, fc.bias: 1-d
        assert group["lr"] == pytest.approx(0.1 if name.startswith("fc.") else 0.01), name
    assert [g["weight_decay"] for g in finetune_param_groups(model, 0.1, 0.1, 5e-4)] == [5e-4, 5e-4]


def test_cutmix_pastes_one_rectangle_and_weights_the_labels_by_its_area() -> None:
    x, y = _batch(16, 16)
    areas = set()
    for seed in range(10):
        mixed, ya, yb, w = Mixing(cutmix=1.0).apply(x, y, torch.Generator().manual_seed(seed))
        assert torch.equal(ya, y) and 0 <= w <= 1
        for i in range(len(y)):
            if yb[i] == i:  # pasted onto itself: nothing visible changes, and both labels are the same
                continue
            changed = (mixed[i] != x[i]).any(dim=0)  # (H, W): where image i shows another image
            rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
            if len(rows):  # one filled rectangle, copied from the image the second label names
                assert changed.sum() == len(rows) * len(cols) == (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
                assert torch.equal(mixed[i][:, changed], x[yb[i]][:, changed])
            assert 1 - changed.float().mean().item() == pytest.approx(w, abs=1e-6)  # label weight = area kept
            areas.add(int(changed.sum()))
    assert len(areas) > 3  # boxes of several sizes


def test_a_mixed_step_trains_on_the_mixed_images_against_the_mixed_targets() -> None:
    """train_step's loss is the cross-entropy of the model on the mixed batch against the soft target
    lam x onehot(y_a) + (1 - lam) x onehot(y_b) (the mixup paper's definition, computed here as one soft-label
    cross-entropy), not the loss of the clean batch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16))
    x, y = _batch(16, 8, seed=1)
    for mixing in (Mixing(mixup=1.0), Mixing(cutmix=1.0)):
        # the permutation and box come from `gen`, the Beta draw from the global RNG (the Trainer seeds it per step)
        torch.manual_seed(3)
        mixed, ya, yb, lam = mixing.apply(x, y, torch.Generator().manual_seed(5))
        with torch.no_grad():
            log_p = model(mixed).log_softmax(dim=1)
            target = lam * F.one_hot(ya, 16).float() + (1 - lam) * F.one_hot(yb, 16).float()
            expected = -(target * log_p).sum(dim=1).mean().item()
            clean = F.cross_entropy(model(x), y).item()
        frozen = torch.optim.SGD(model.parameters(), lr=0.0)  # the step leaves the model as it was
        torch.manual_seed(3)
        loss, _ = train_step(model, x, y, frozen, mixing=mixing, gen=torch.Generator().manual_seed(5))
        assert loss.item() == pytest.approx(expected, rel=1e-5) and abs(loss.item() - clean) > 1e-3


def test_mixup_and_cutmix_reach_a_run(tmp_path: Path) -> None:
    """Runs from the same seed and data: each mixing option changes what one step learns (identical runs without
    it are bit-identical, so the difference is the mixing)."""
    base = dict(
        data="sample",
        train_subset=32,
        test_subset=10,
        batch_size=32,
        epochs=1,
        threads=1,
        progress=False,
        model_kwargs={"widths": [4, 8, 16]},
    )

    def weights(name: str, **extra: float) -> dict[str, torch.Tensor]:
        run_training(TrainConfig(**base, out=str(tmp_path / name), **extra))
        return torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)["model"]

    def same(a: dict, b: dict) -> bool:
        return all(torch.equal(a[k], b[k]) for k in a)

    plain = weights("plain")
    assert same(plain, weights("plain_again"))
    mixup, cutmix = weights("mixup", mixup=1.0), weights("cutmix", cutmix=1.0)
    assert not same(plain, mixup) and not same(plain, cutmix) and not same(mixup, cutmix)


# --- cutout ----------------------------------------------------------------------------------------------------------


def _square_side(blank: torch.Tensor) -> tuple[int, int, bool]:
    """(height, width, touches the border) of the blanked region of one (H, W) mask, which must be a rectangle."""
    rows, cols = blank.any(dim=1).nonzero().flatten(), blank.any(dim=0).nonzero().flatten()
    h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    assert int(blank.sum()) == h * w  # filled
    border = rows[0] == 0 or cols[0] == 0 or rows[-1] == blank.shape[0] - 1 or cols[-1] == blank.shape[1] - 1
    return h, w, bool(border)


@pytest.mark.parametrize("size", [8, 5])
def test_cutout_blanks_one_square_of_the_configured_size_with_the_mean(size: int) -> None:
    """DeVries & Taylor (2017): one size x size square per image (clipped at the border) set to the dataset mean,
    which normalisation maps to 0; every other pixel is the image's own. Training batches only."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 255, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    plain = Preprocessing("none", 32, CIFAR10_MEAN, CIFAR10_STD)
    cut = Preprocessing("none", 32, CIFAR10_MEAN, CIFAR10_STD, cutout=size)
    reference = plain.eval_batch(images)
    assert (reference != 0).all()  # no pixel of these images is the mean itself
    out = cut.train_batch(images, torch.Generator().manual_seed(1))
    blank = out == 0
    assert torch.equal(blank[:, 0], blank[:, 1]) and torch.equal(blank[:, 0], blank[:, 2])  # all channels
    assert torch.equal(out[~blank], reference[~blank])
    mean_pixel = torch.tensor(CIFAR10_MEAN).view(3, 1) * 255  # blanked pixels, un-normalised, are the mean colour
    un = out.permute(1, 0, 2, 3).reshape(3, -1)[:, blank[:, 0].flatten()] * torch.tensor(CIFAR10_STD).view(3, 1) * 255
    torch.testing.assert_close(un + mean_pixel, mean_pixel.expand_as(un), rtol=0, atol=1e-3)
    inner = 0
    for i in range(len(images)):
        h, w, border = _square_side(blank[i, 0])
        assert h <= size and w <= size
        if not border:
            assert (h, w) == (size, size), i
            inner += 1
    assert inner > 20  # most squares lie inside the image and are whole
    assert torch.equal(cut.eval_batch(images), reference)  # evaluation is never cut


def test_cutout_reaches_the_training_batches_of_a_run() -> None:
    """`cutout` of a TrainConfig reaches the batches a run trains on (the paper's augmentation first), not the
    evaluation batches."""
    cfg = TrainConfig(cutout=8, augment="cifar")
    pre = preprocessing_from_config(cfg, resolve_data_config(cfg.model))
    ds = load_sample("test")
    train_x, _ = next(iter(BatchLoader(ds, pre, batch_size=32, train=True).epoch(0)))
    eval_x, _ = next(iter(BatchLoader(ds, pre, batch_size=32, train=False)))
    assert ((train_x == 0).all(dim=1).flatten(1).sum(dim=1) >= 16).all()  # a blank square (at least 4x4) in each
    assert not (eval_x == 0).all(dim=1).any()


# --- gradient clipping -----------------------------------------------------------------------------------------------


def _params(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    return {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _update_norm(tmp_path: Path, name: str, **extra: float) -> float:
    """The norm of all parameters' change in the second step of a run of plain SGD (no momentum, no weight decay,
    constant lr 0.5): one step per epoch, the weights read after epoch 1 and after epoch 2 (resumed)."""
    cfg = TrainConfig(
        data="sample",
        train_subset=32,
        test_subset=10,
        batch_size=32,
        epochs=1,
        lr=0.5,
        momentum=0.0,
        weight_decay=0.0,
        schedule="constant",
        threads=1,
        progress=False,
        out=str(tmp_path / name),
        model_kwargs={"widths": [4, 8, 16]},
        **extra,
    )
    run_training(cfg)
    before = _params(tmp_path / name)
    run_training(cfg, resume=tmp_path / name, overrides={"epochs": 2})
    after = _params(tmp_path / name)
    return math.sqrt(sum(float((after[k] - before[k]).double().pow(2).sum()) for k in before))


def test_grad_clip_bounds_each_update_by_lr_times_the_clip(tmp_path: Path) -> None:
    """With plain SGD the update is lr x the gradient, so clipping the gradient's norm to c bounds the step to lr x c;
    a clip far below the gradient's norm makes the step exactly that long. Unclipped, the same step is far longer."""
    clip = 0.01
    clipped = _update_norm(tmp_path, "clipped", grad_clip=clip)
    assert clipped == pytest.approx(0.5 * clip, rel=1e-3)
    assert _update_norm(tmp_path, "free") > 20 * 0.5 * clip


# --- early stopping --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stopping_ends_a_run_that_stops_improving(tmp_path: Path, patience: int) -> None:
    """A run that cannot improve: frozen BatchNorm statistics and an lr (1e-30) too small to change any weight, so
    every evaluation gives the same top-1. With patience p it stops after epoch p + 1 of 6 (the first is the best;
    p evaluations follow without a better one); without early stopping it runs all 6 epochs."""
    values = dict(
        data="sample",
        train_subset=32,
        test_subset=50,
        batch_size=32,
        epochs=6,
        lr=1e-30,
        threads=1,
        progress=False,
        model_kwargs={"widths": [4, 8, 16], "norm_layer": "frozen_batchnorm"},
    )
    stopped = run_training(TrainConfig(**values, early_stopping=patience, out=str(tmp_path / "stopped")))
    rows = [json.loads(line) for line in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert stopped.stopped == "early_stopping" and len(rows) == len(stopped.history) == patience + 1
    assert len({r["test_top1"] for r in rows}) == 1 and stopped.best is not None and stopped.best["epoch"] == 1
    assert torch.load(tmp_path / "stopped" / "checkpoints" / "best.pt", weights_only=True)["epoch"] == 1
    full = run_training(TrainConfig(**values, out=str(tmp_path / "full")))
    assert full.stopped == "completed" and len(full.history) == 6
    assert {r["test_top1"] for r in full.history} == {rows[0]["test_top1"]}  # the premise: nothing could improve
