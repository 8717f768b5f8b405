"""Explanations: Grad-CAM / Grad-CAM++ maps through the model API, the randomisation sanity check, and gradient
flow through plain and residual networks."""

from resnetkit.explain.gradcam import (
    METHODS,
    CamResult,
    ExplainError,
    GradCAM,
    UnknownLayerError,
    default_layer,
    grad_cam,
    layer_names,
    resolve_layer,
)
from resnetkit.explain.sanity import randomization_similarity, randomized_copy

__all__ = [
    "METHODS",
    "CamResult",
    "ExplainError",
    "GradCAM",
    "UnknownLayerError",
    "default_layer",
    "grad_cam",
    "layer_names",
    "randomization_similarity",
    "randomized_copy",
    "resolve_layer",
]
