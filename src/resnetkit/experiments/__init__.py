"""Experiments that reproduce the paper's findings on the user's machine: the degradation problem (Figure 6)."""

from resnetkit.experiments.degradation import (
    DEFAULT_MODELS,
    Curve,
    degradation_configs,
    findings,
    run_degradation,
    write_degradation,
)

__all__ = ["DEFAULT_MODELS", "Curve", "degradation_configs", "findings", "run_degradation", "write_degradation"]
