"""Making trained ResNets smaller: structured channel pruning and knowledge distillation."""

from resnetkit.compress.distill import Distillation, DistillationError, kd_loss
from resnetkit.compress.prune import DEFAULT_ROUND_TO, METHODS, PruneResult, PruningError, inner_widths, prune_to_macs

__all__ = [
    "DEFAULT_ROUND_TO",
    "METHODS",
    "Distillation",
    "DistillationError",
    "PruneResult",
    "PruningError",
    "inner_widths",
    "kd_loss",
    "prune_to_macs",
]
