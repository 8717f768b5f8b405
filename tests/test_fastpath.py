"""The fast path: the paper's augmentation checked statistically, folded/compiled models equal to eager, and the
eager fallback when compilation fails. torch.compile runs only in this file (each compile costs ~a minute)."""

from __future__ import annotations

import logging

import pytest
import torch

import resnetkit
from resnetkit.engine.fastpath import (
    CompiledOrEager,
    fold_batchnorm,
    should_compile,
    speed_up_for_inference,
    speed_up_for_training,
)
from resnetkit.models import count_macs
from resnetkit.transforms import random_crop, random_flip

from conftest import randomize_norm_stats


def test_crop_offsets_are_uniform_over_the_81_positions_and_flips_have_rate_one_half() -> None:
    # Channel 0 holds row + 1 and channel 1 column + 1, so output pixel (4, 4) reads back the crop offset:
    # with 4-pixel padding it shows input row dy and column dx, both always inside the image.
    n = 16_200
    coords = torch.arange(1, 33, dtype=torch.uint8)
    grid = torch.stack([coords.view(32, 1).expand(32, 32), coords.view(1, 32).expand(32, 32)])
    images = grid.unsqueeze(0).expand(n, 2, 32, 32).contiguous()
    out = random_crop(images, 4, torch.Generator().manual_seed(0))
    dy, dx = out[:, 0, 4, 4].long() - 1, out[:, 1, 4, 4].long() - 1
    assert int(dy.min()) == int(dx.min()) == 0 and int(dy.max()) == int(dx.max()) == 8
    counts = torch.bincount(dy * 9 + dx, minlength=81).double()
    expected = n / 81
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 124.8  # chi-square with 80 degrees of freedom: p = 0.001
    flipped = random_flip(images, torch.Generator().manual_seed(1))[:, 1, 0, 0] == 32  # column 31 now first
    assert abs(float(flipped.double().mean()) - 0.5) < 3 * (0.25 / n) ** 0.5  # within 3 standard errors


@pytest.mark.parametrize("name", ["resnet20", "resnet50", "resnext50_32x4d", "preact_resnet110", "plain20"])
def test_folded_model_equals_eager(name: str) -> None:
    model = randomize_norm_stats(
        resnetkit.create_model(name, shortcut="C") if name == "resnet20" else resnetkit.create_model(name)
    ).eval()
    folded = fold_batchnorm(model)
    x = torch.randn(2, 3, 64, 64) if "resnet5" in name or "resnext" in name else torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    if not model.preact:
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


@pytest.mark.slow
def test_compiled_frozen_and_folded_model_equals_eager() -> None:
    model = resnetkit.create_model("resnet20").eval()
    randomize_norm_stats(model)
    fast = speed_up_for_inference(model)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = fast(x.contiguous(memory_format=torch.channels_last))
    assert isinstance(fast, CompiledOrEager) and fast.compiled
    assert float((out - ref).abs().max()) < 1e-4


@pytest.mark.slow
def test_an_evaluation_compile_freezes_its_own_graph_only() -> None:
    """Issue 13: the frozen evaluation graph must not leave inductor's freezing on for a later training compile."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    evaluated = speed_up_for_inference(resnetkit.create_model("resnet20").eval())
    with torch.no_grad():
        before = evaluated(x)
        evaluated.module.fc.weight.mul_(2)  # frozen: the weights are constants of the compiled graph
        assert torch.equal(evaluated(x), before) and evaluated.compiled
    assert inductor_config.freezing is False
    model = resnetkit.create_model("resnet20")
    trained = speed_up_for_training(model, compile=True)
    model.eval()
    with torch.no_grad():  # freezing acts on graphs compiled without grad: where a leak would show
        before = trained(x)
        model.fc.weight.mul_(2)  # what an optimiser step does: the next forward must see it
        after = trained(x)
    assert trained.compiled and not torch.equal(after, before)
    torch.testing.assert_close(after, model(x))
    torch._dynamo.reset()


@pytest.mark.slow
def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch, caplog) -> None:
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    model = resnetkit.create_model("resnet20").eval()
    wrapped = CompiledOrEager(model)
    x = torch.randn(2, 3, 32, 32)
    with caplog.at_level(logging.WARNING, logger="resnetkit"), torch.no_grad():
        out = wrapped(x)
    assert "torch.compile failed" in caplog.text and "continuing in eager mode" in caplog.text
    assert not wrapped.compiled
    with torch.no_grad():
        torch.testing.assert_close(out, model(x))
    torch._dynamo.reset()


def test_evaluations_compile_only_when_the_work_pays_for_it() -> None:
    """A compile costs seconds to a minute here; the CIFAR-10 test set with ResNet-20 ran 2.4x slower with one."""
    with torch.device("meta"):
        r20 = count_macs(resnetkit.create_model("resnet20"), (3, 32, 32))
        r50 = count_macs(resnetkit.create_model("resnet50"), (3, 224, 224))
    assert not should_compile(10_000, r20) and should_compile(1_000_000, r20)
    assert not should_compile(1_000, r50) and should_compile(5_000, r50)
