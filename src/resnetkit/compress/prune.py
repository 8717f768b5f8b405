"""Structured channel pruning: a trained ResNet becomes a dense, narrower ResNet (fewer channels, not masks).

What is pruned: the inner channels of every block (the output of a basic block's first 3x3 conv; of a
bottleneck's 1x1 reduce and 3x3), which nothing outside the block reads. The residual stream is kept: its
channels are shared by every block of a stage and, with option A shortcuts, placed by zero-padding, so narrowing
it would change what the shortcuts add. Which channels go is decided by torch-pruning's dependency graph and
importance criteria (Fang et al., "DepGraph", CVPR 2023); its graph keeps each conv, its BatchNorm and the
next conv's input channels together. The result is rebuilt as a fresh `create_model(..., inner_widths=...)`
network and loaded strictly, so a checkpoint of it describes itself and reloads without torch-pruning.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from resnetkit.errors import ResnetkitError
from resnetkit.extras import require_extra
from resnetkit.models import ResidualBlock, create_model
from resnetkit.models.complexity import count_macs, count_parameters

METHODS = ("l1", "l2", "bn", "group", "random")
# Kept inner widths are multiples of this by default (`--round-to`): ResNet-56 pruned to widths such as 9, 17 and 31
# ran slower in ONNX Runtime's int8 than the unpruned network (AMD EPYC, benchmarks/RESULTS.md "Compress"); the same
# pruning with --round-to 1 and 8 on every runtime, per CPU: RESULTS.md "Runtimes".
DEFAULT_ROUND_TO = 8


class PruningError(ResnetkitError):
    """A pruning request that cannot be met (bad target, unknown method, a model that cannot be pruned)."""


@dataclass(frozen=True)
class PruneResult:
    """The pruned network and how it compares with the one it came from."""

    model: nn.Module
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    method: str
    target: float
    round_to: int = 1

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before

    def to_dict(self) -> dict[str, Any]:
        keys = ("macs_before", "macs_after", "params_before", "params_after", "method", "target", "round_to")
        return {k: getattr(self, k) for k in keys} | {
            "macs_ratio": self.macs_ratio,
            "inner_widths": inner_widths(self.model),
        }


def blocks_by_stage(model: nn.Module) -> list[list[ResidualBlock]]:
    """The residual blocks of each stage (layer1, layer2, ...), in order."""
    stages = []
    for name in sorted((n for n in model._modules if n.startswith("layer")), key=lambda n: int(n[5:])):
        stages.append([b for b in model._modules[name] if isinstance(b, ResidualBlock)])
    return stages


def inner_convs(block: ResidualBlock) -> list[nn.Conv2d]:
    """The convolutions whose output channels stay inside `block` (conv1, and conv2 of a bottleneck)."""
    return [getattr(block, f"conv{i + 1}") for i in range(block.inner_convs)]


def inner_widths(model: nn.Module) -> list[list[list[int]]]:
    """`inner_widths` as `ResNet` takes it: per stage, per block, the inner convolutions' output channels."""
    return [[[c.out_channels for c in inner_convs(b)] for b in stage] for stage in blocks_by_stage(model)]


def prune_to_macs(
    model: nn.Module,
    target: float,
    method: str = "l1",
    input_size: Sequence[int] | None = None,
    seed: int = 0,
    round_to: int = DEFAULT_ROUND_TO,
) -> PruneResult:
    """Remove inner channels of `model` (a copy) until its MACs are at most `target` x the original's.

    Every block keeps the same fraction of its inner channels (the largest fraction that meets the target, then
    `round_to` channels at a time added back where they still fit, deepest stage first), so the result lands
    within one block's `round_to` channels of the target. Kept widths are multiples of `round_to` (what
    torch-pruning's `round_to` does), except a width already below it, which is kept. Which channels go, block by
    block, is ranked by `method` over torch-pruning's dependency group."""
    _check_request(model, target, method, round_to)
    size = tuple(input_size or model.default_cfg.input_size)
    tp = require_extra("torch_pruning", "compress", "pruning", PruningError)
    work = copy.deepcopy(model).float().cpu().eval()
    macs_before, params_before = count_macs(work, size), count_parameters(work)
    plan = _plan_widths(work, target * macs_before, size, round_to)
    graph = tp.DependencyGraph().build_dependency(work, example_inputs=torch.zeros(1, *size))
    importance = _importance(tp, method)
    torch.manual_seed(seed)  # the "random" criterion's draw
    for conv, keep in zip(_all_inner_convs(work), (w for stage in plan for b in stage for w in b), strict=True):
        if keep < conv.out_channels:
            whole = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
            drop = importance(whole).argsort()[: conv.out_channels - keep].tolist()
            graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=sorted(drop)).prune()
    pruned = _rebuilt(model, work)
    macs_after, params_after = count_macs(pruned, size), count_parameters(pruned)
    return PruneResult(pruned, macs_before, macs_after, params_before, params_after, method, target, round_to)


def _all_inner_convs(model: nn.Module) -> list[nn.Conv2d]:
    return [c for stage in blocks_by_stage(model) for b in stage for c in inner_convs(b)]


def _plan_widths(model: nn.Module, budget: float, size: tuple[int, ...], step: int = 1) -> list[list[list[int]]]:
    """Inner widths whose MACs are at most `budget`, each a multiple of `step` (or its full width, where that is
    below `step`): a common kept fraction found by bisection, then `step` channels at a time added back to the
    blocks (the deepest stage first) while the budget allows."""
    full = inner_widths(model)

    def kept(fraction: float, width: int) -> int:
        if width <= step:
            return width
        return min(width, max(step, step * round(fraction * width / step)))

    def scaled(fraction: float) -> list[list[list[int]]]:
        return [[[kept(fraction, w) for w in b] for b in stage] for stage in full]

    low, high = 0.0, 1.0
    if _macs_of(model, scaled(low), size) > budget:
        raise PruningError(f"{model.model_name} cannot get under {budget:.0f} MACs by pruning its inner channels")
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if _macs_of(model, scaled(mid), size) <= budget else (low, mid)
    plan = scaled(low)
    for s in reversed(range(len(plan))):  # deepest stage first: its blocks hold the most channels
        for b, widths in enumerate(plan[s]):
            for i in range(len(widths)):
                grown = min(full[s][b][i], widths[i] + step)
                if grown > widths[i]:
                    widths[i], before = grown, widths[i]
                    if _macs_of(model, plan, size) > budget:
                        widths[i] = before
    return plan


def _macs_of(model: nn.Module, widths: list[list[list[int]]], size: tuple[int, ...]) -> int:
    """MACs of `model`'s architecture with these inner widths, counted on the meta device (nothing allocated)."""
    kwargs = dict(getattr(model, "model_kwargs", {})) | {"inner_widths": widths}
    with torch.device("meta"):
        probe = create_model(model.model_name, **kwargs)
    return count_macs(probe, size)


def _check_request(model: nn.Module, target: float, method: str, round_to: int = 1) -> None:
    if not isinstance(round_to, int) or round_to < 1:
        raise PruningError(f"--round-to must be a whole number of channels, 1 or more, got {round_to}")
    if not 0 < target < 1:
        raise PruningError(f"the MACs target must be between 0 and 1 (a fraction of the original), got {target}")
    if method not in METHODS:
        raise PruningError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    if getattr(model, "model_name", None) is None or not blocks_by_stage(model):
        raise PruningError("only resnetkit ResNets (built by create_model) can be pruned")
    if any(getattr(b.conv2, "groups", 1) != 1 for stage in blocks_by_stage(model) for b in stage):
        raise PruningError(f"{model.model_name} has grouped convolutions (ResNeXt); their channels are not pruned")


def _importance(tp: Any, method: str) -> Any:
    imp = tp.importance
    return {
        "l1": lambda: imp.MagnitudeImportance(p=1, normalizer=None, group_reduction="first"),  # Li et al., 2017
        "l2": lambda: imp.MagnitudeImportance(p=2, normalizer=None, group_reduction="first"),
        "bn": lambda: imp.BNScaleImportance(normalizer=None),  # network slimming's BN scale (Liu et al., 2017)
        "group": lambda: imp.GroupMagnitudeImportance(p=2),  # the whole group's L2 norm (DepGraph)
        "random": lambda: imp.RandomImportance(),
    }[method]()


def _rebuilt(original: nn.Module, pruned: nn.Module) -> nn.Module:
    """A fresh model of the pruned widths, described by its kwargs, holding the pruned weights (strictly)."""
    kwargs = dict(getattr(original, "model_kwargs", {})) | {"inner_widths": inner_widths(pruned)}
    kwargs.setdefault("num_classes", original.num_classes)
    rebuilt = create_model(original.model_name, **kwargs)
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    rebuilt.default_cfg = original.default_cfg
    return rebuilt.eval()
