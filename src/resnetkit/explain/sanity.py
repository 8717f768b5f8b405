"""The model-randomisation sanity check of Adebayo et al. (2018), "Sanity Checks for Saliency Maps".

A saliency method that explains the *model* must give different maps once the model's weights are replaced by
random ones; a method whose maps survive randomisation is only an edge detector on the input. The check
randomises the weights from the classifier down to a chosen layer (cascading randomisation, section 3.1) and
compares the maps by Spearman rank correlation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from resnetkit.explain.gradcam import grad_cam, layer_names, resolve_layer
from resnetkit.metrics import spearman_correlation


def randomized_copy(model: nn.Module, down_to: str | None = None, seed: int = 0) -> nn.Module:
    """A copy whose classifier and layers from the last one down to `down_to` (default: all, the stem included)
    are re-initialised (`reset_parameters`: random convolutions and linear layers, unit BatchNorm)."""
    names = layer_names(model)
    down_to = resolve_layer(model, down_to or names[0])[0].split(".", 1)[0]
    chosen = names[names.index(down_to) :]
    randomized = copy.deepcopy(model)
    targets = [randomized.get_classifier()] if hasattr(randomized, "get_classifier") else []
    targets += [randomized.get_submodule(n) for n in chosen]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in targets:
            for m in module.modules():
                if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                    m.reset_parameters()
    return randomized


def randomization_similarity(
    model: nn.Module,
    x: torch.Tensor,
    *,
    layer: str | None = None,
    method: str = "gradcam",
    down_to: str | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Spearman rank correlation (per image) between the maps of `model` and of its randomised copy, both for
    the class the trained model predicts. Near 1: the maps do not depend on what the model learned."""
    trained = grad_cam(model, x, layer=layer, method=method)
    random_maps = grad_cam(randomized_copy(model, down_to, seed), x, layer=layer, target=trained.target, method=method)
    return spearman_correlation(trained.maps, random_maps.maps)
