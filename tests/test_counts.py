"""Stored expected numbers: the paper's CIFAR parameter counts and the published MAC figures."""

from __future__ import annotations

import pytest

import resnetkit
from resnetkit.models.summary import summarize_model

CIFAR_PARAMS = {
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet1202": 19_421_274,
}


@pytest.mark.parametrize(("name", "params"), CIFAR_PARAMS.items())
def test_cifar_parameter_counts(name: str, params: int) -> None:
    model = resnetkit.create_model(name, num_classes=10)
    assert resnetkit.count_parameters(model) == params
    # Option A is parameter-free; option B adds two projections (conv + BN) where the width doubles.
    if name == "resnet20":
        b = resnetkit.create_model(name, shortcut="B")
        assert resnetkit.count_parameters(b) == params + (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


@pytest.mark.parametrize(
    ("name", "params", "gmacs"),
    [
        ("resnet18", 11_689_512, 1.814),  # torchvision's published figures
        ("resnet50", 25_557_032, 4.089),
        ("resnext50_32x4d", 25_028_904, 4.230),
        ("wide_resnet50_2", 68_883_240, 11.398),
        ("resnet20", 269_722, 0.041),
        ("preact_resnet164", 1_703_258, 0.248),
    ],
)
def test_summary_counts(name: str, params: int, gmacs: float) -> None:
    row = summarize_model(name)
    assert row.params == params
    assert row.macs / 1e9 == pytest.approx(gmacs, abs=5e-4)
