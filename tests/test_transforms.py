"""Batched preprocessing, the loader's determinism, LR schedules and metrics, against per-image references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from resnetkit.data.datasets import ImageTensorDataset
from resnetkit.data.loader import BatchLoader
from resnetkit.metrics import confusion_matrix, per_class_accuracy, topk_correct
from resnetkit.optim import lr_factor, param_groups
from resnetkit.transforms import DataConfig, center_crop, cutout, preprocessing_for, random_crop, random_flip

CFG = DataConfig((3, 32, 32), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), crop_pct=1.0)


def _images(n: int = 16, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_random_crop_matches_per_image_crops_of_the_padded_image() -> None:
    x = _images()
    out = random_crop(x, 4, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 9, (16, 1), generator=g)
    dx = torch.randint(0, 9, (16, 1), generator=g)
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(16):
        y0, x0 = int(dy[i]), int(dx[i])
        assert torch.equal(out[i], padded[i, :, y0 : y0 + 32, x0 : x0 + 32])
    assert len({(int(a), int(b)) for a, b in zip(dy, dx, strict=True)}) > 1  # offsets differ per image


def test_random_flip_flips_about_half_per_image() -> None:
    x = _images(400)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(400)]
    kept = [torch.equal(out[i], x[i]) for i in range(400)]
    assert all(a or b for a, b in zip(flipped, kept, strict=True))
    assert 150 < sum(flipped) < 250


def test_normalize_uses_the_model_mean_and_std() -> None:
    pre = preprocessing_for(CFG, "cifar")
    x = pre.eval_batch(_images())
    ref = (_images().float() / 255 - torch.tensor(CFG.mean).view(1, 3, 1, 1)) / torch.tensor(CFG.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, ref)
    assert x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_normalize_of_non_square_batches_in_either_layout(layout: torch.memory_format) -> None:
    pre = preprocessing_for(CFG, "cifar")
    x = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    ref = (x.float() / 255 - torch.tensor(CFG.mean).view(1, 3, 1, 1)) / torch.tensor(CFG.std).view(1, 3, 1, 1)
    for given in (x, x.contiguous(memory_format=torch.channels_last), x.float()):
        out = pre.normalize(given, layout)
        torch.testing.assert_close(out, ref)
        assert out.is_contiguous(memory_format=layout) and out.dtype == torch.float32
    assert x.dtype == torch.uint8 and pre.normalize(x[:0], layout).shape == (0, 3, 5, 7)


def test_imagenet_preset_sizes_and_center_crop() -> None:
    cfg = DataConfig((3, 224, 224), (0.5,) * 3, (0.25,) * 3, crop_pct=0.875)
    pre = preprocessing_for(cfg, "imagenet", size=64)
    assert pre.storage_size == 73
    stored = _images(4, 73)
    assert pre.eval_batch(stored).shape == (4, 3, 64, 64)
    assert torch.equal(center_crop(stored, 64), stored[..., 4:68, 4:68])
    train = pre.train_batch(stored, torch.Generator().manual_seed(0))
    assert train.shape == (4, 3, 64, 64) and torch.isfinite(train).all()
    assert train.min() >= (0 - 0.5) / 0.25 - 1e-4 and train.max() <= (1 - 0.5) / 0.25 + 1e-4


def test_random_resized_crop_keeps_values_and_flips_half() -> None:
    from resnetkit.transforms import random_resized_crop

    flat = torch.full((4, 3, 20, 20), 77, dtype=torch.uint8)  # interpolation of a constant is the constant
    torch.testing.assert_close(
        random_resized_crop(flat, 8, (0.08, 1.0), torch.Generator()), torch.full((4, 3, 8, 8), 77.0)
    )
    ramp = torch.arange(20, dtype=torch.uint8).mul(10).expand(200, 3, 20, 20)  # brighter to the right
    out = random_resized_crop(ramp, 8, (0.3, 1.0), torch.Generator().manual_seed(0))
    rising = (out[:, 0, 4, -1] > out[:, 0, 4, 0]).float().mean()
    assert 0.35 < rising < 0.65  # mirrored crops run the other way


def test_cutout_zeroes_a_square() -> None:
    x = torch.ones(8, 3, 32, 32)
    out = cutout(x, 8, torch.Generator().manual_seed(0))
    zeros = (out[:, 0] == 0).sum(dim=(1, 2))
    assert ((zeros > 0) & (zeros <= 81)).all()


def test_loader_is_deterministic_resumable_and_covers_the_epoch() -> None:
    ds = ImageTensorDataset(_images(100), torch.arange(100) % 10, [str(i) for i in range(10)])
    pre = preprocessing_for(CFG, "cifar")
    loader = BatchLoader(ds, pre, batch_size=32, train=True, seed=5)
    assert len(loader) == 3  # the ragged tail is dropped in training
    full = list(loader.epoch(2))
    again = list(loader.epoch(2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full, again, strict=True))
    tail = list(loader.epoch(2, start=1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[1:], tail, strict=True))
    assert not torch.equal(list(loader.epoch(3))[0][1], full[0][1])  # a new order each epoch
    evals = BatchLoader(ds, pre, batch_size=32, train=False)
    assert len(evals) == 4 and torch.equal(torch.cat([y for _, y in evals]), ds.labels)


def test_schedules() -> None:
    paper = lr_factor("paper", 64000, milestones=(0.5, 0.75))
    assert [paper(s) for s in (0, 31999, 32000, 47999, 48000, 63999)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    warm = lr_factor("paper", 64000, warmup_steps=400, warmup_constant_factor=0.1)
    assert warm(0) == warm(399) == 0.1 and warm(400) == 1.0
    cos = lr_factor("cosine", 100, warmup_steps=10)
    assert cos(0) == pytest.approx(0.1) and cos(9) == 1.0 and cos(10) == 1.0 and cos(55) == pytest.approx(0.5)
    assert cos(99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    one = lr_factor("onecycle", 100, warmup_steps=20)
    assert one(19) == 1.0 and one(60) == pytest.approx(0.5)


def test_no_weight_decay_on_bn_and_bias() -> None:
    import resnetkit

    for name in ("resnet20", "resnet18"):  # option-A shortcuts; projection shortcuts with their own BatchNorm
        model = resnetkit.create_model(name)
        model.add_module("extra", torch.nn.Conv2d(3, 4, 1, bias=True))  # a conv bias must not be decayed either
        # Expected membership from the module types, not from the code's ndim rule.
        want_decay, want_no_decay = set(), set()
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                want_decay.add(id(m.weight))
                if m.bias is not None:
                    want_no_decay.add(id(m.bias))
            elif isinstance(m, torch.nn.BatchNorm2d):
                want_no_decay |= {id(m.weight), id(m.bias)}
        n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        assert len(want_no_decay) == 2 * n_bn + 2 and n_bn > 0  # every BN weight/bias, fc.bias, extra.bias
        assert want_decay | want_no_decay == {id(p) for p in model.parameters()}
        decay, no_decay = param_groups(model, 5e-4, True)
        got_decay, got_no_decay = [id(p) for p in decay["params"]], [id(p) for p in no_decay["params"]]
        assert len(got_decay) == len(set(got_decay)) and len(got_no_decay) == len(set(got_no_decay))  # no repeats
        assert set(got_decay) == want_decay and set(got_no_decay) == want_no_decay, name  # exact, so disjoint
        assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
        # Turned off: one group with every parameter decayed; frozen parameters are left out either way.
        (one,) = param_groups(model, 5e-4, False)
        assert {id(p) for p in one["params"]} == want_decay | want_no_decay and one["weight_decay"] == 5e-4
        model.conv1.weight.requires_grad_(False)
        model.bn1.bias.requires_grad_(False)
        decay, no_decay = param_groups(model, 5e-4, True)
        assert {id(p) for p in decay["params"]} == want_decay - {id(model.conv1.weight)}
        assert {id(p) for p in no_decay["params"]} == want_no_decay - {id(model.bn1.bias)}


def test_metrics() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0], [2.0, 0.0, 1.0]])
    y = torch.tensor([1, 2, 1])
    assert topk_correct(logits, y, (1, 2)).tolist() == [1, 2]
    cm = confusion_matrix(logits.argmax(1), y, 3)
    assert cm.tolist() == [[0, 0, 0], [2, 0, 0], [0, 0, 1]]
    acc = per_class_accuracy(cm)
    assert math.isnan(acc[0]) and acc[1] == 0 and acc[2] == 1
