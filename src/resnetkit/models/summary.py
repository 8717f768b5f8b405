"""One row per registered model: parameters, MACs and input size, computed on the meta device."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from resnetkit.model_registry import get_model_entry, list_model_names
from resnetkit.models.complexity import count_macs, count_parameters


@dataclass(frozen=True)
class ModelSummary:
    name: str
    family: str
    description: str
    params: int
    macs: int
    input_size: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gmacs"] = round(self.macs / 1e9, 4)
        return d


_FAMILY_ORDER = ("imagenet", "imagenet-wide", "imagenet-resnext", "imagenet-preact", "imagenet-plain", "cifar")


def summarize_model(name: str) -> ModelSummary:
    """Counts for `name` at its default input size.

    Built on "meta" and given uninitialised CPU storage: weight initialisation would dominate the cost, and a
    forward pass of meta tensors runs ~5x slower than a real one on CPU.
    """
    entry = get_model_entry(name)
    with torch.device("meta"):
        model = entry.builder()
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            t.zero_()
    size = model.default_cfg.input_size
    return ModelSummary(name, entry.family, entry.description, count_parameters(model), count_macs(model, size), size)


def sorted_names(pattern: str | None = None) -> list[str]:
    """Registered names grouped by family (ImageNet styles first), naturally ordered within a family."""
    if pattern and not any(c in pattern for c in "*?["):
        return [get_model_entry(pattern).name]  # an exact name: unknown ones get the close-match error
    names = list_model_names(pattern)  # already in natural order; sort is stable

    def rank(name: str) -> int:
        family = get_model_entry(name).family
        return _FAMILY_ORDER.index(family) if family in _FAMILY_ORDER else len(_FAMILY_ORDER)

    return sorted(names, key=rank)


def summarize_models(pattern: str | None = None) -> Iterator[ModelSummary]:
    """One summary per matching model, lazily (the CLI shows progress while they are computed)."""
    return (summarize_model(n) for n in sorted_names(pattern))
