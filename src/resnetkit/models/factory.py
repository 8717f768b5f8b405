"""create_model / list_models: the one entry point to every architecture, with optional weights."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from resnetkit.errors import ModelArgumentError, WeightsError
from resnetkit.model_registry import ModelEntry, get_model_entry, list_model_names
from resnetkit.transforms import DataConfig
from resnetkit.weights import download_url, load_into_model, read_state_dict
from resnetkit.weights.registry import WeightsEntry, get_weights, is_weights_name, resolve_weights_file

log = logging.getLogger(__name__)


def list_models(pattern: str | None = None) -> list[str]:
    """Names of all registered models, e.g. `list_models("resnet*")`."""
    return list_model_names(pattern)


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    weights: str | os.PathLike[str] | None = None,
    weights_sha256: str | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, optionally loading weights.

    `weights` is a registered name (`resnetkit models --weights`, e.g. "resnet20.rk_cifar10"), a local
    .pt/.pth/.safetensors file or an http(s) URL (verified against `weights_sha256`, a
    `#sha256=` fragment, or torch.hub's hash-in-file-name). Without `num_classes` the model takes the file's
    number of classes; with another number the head is re-initialised. `features_only=True` returns a
    `FeatureExtractor` producing the maps named by `out_indices` (0 = stem, 1.. = stages).
    """
    entry = get_model_entry(name)
    pretrained = _registered_weights(name, weights)
    if pretrained is not None:
        weights = resolve_weights_file(pretrained)
    state, source = (None, "") if weights is None else _read_weights(weights, weights_sha256)
    file_classes = _head_classes(name, kwargs, state) if state is not None else None
    classes = num_classes if num_classes is not None else file_classes
    if classes is not None:
        kwargs["num_classes"] = classes
    model = _build(entry, kwargs)
    if state is not None:
        load_into_model(model, state, source, keep_head=file_classes is None or file_classes == model.num_classes)
    if pretrained is not None:
        # how these weights were trained, on this architecture (its first_conv and classifier names)
        model.default_cfg = _pretrained_data_config(pretrained, kwargs).with_model_names(model.default_cfg)
        model.pretrained_cfg = pretrained
    model.model_name = name
    model.model_kwargs = dict(kwargs)  # every kwarg that built it: a checkpoint rebuilds exactly this model
    if features_only:
        from resnetkit.models.features import FeatureExtractor

        return FeatureExtractor(model, out_indices)
    return model


def _build(entry: ModelEntry, kwargs: dict[str, Any]) -> nn.Module:
    """The architecture built with `kwargs`; what it refuses is one ModelArgumentError line naming the model."""
    try:
        return entry.builder(**kwargs)
    except (TypeError, ValueError) as e:
        raise ModelArgumentError(f"cannot build {entry.name}: {' '.join(str(e).split())}") from e


def resolve_data_config(name: str, weights: str | os.PathLike[str] | None = None, **kwargs: Any) -> DataConfig:
    """How inputs are prepared for `name` built with `kwargs`: as the registered `weights` were trained (their
    resolution, normalisation and crop), else the architecture's default. Builds nothing and reads no file."""
    pretrained = _registered_weights(name, weights)
    if pretrained is not None:
        return _pretrained_data_config(pretrained, kwargs)
    with torch.device("meta"):
        return _build(get_model_entry(name), kwargs).default_cfg


def _pretrained_data_config(pretrained: WeightsEntry, kwargs: dict[str, Any]) -> DataConfig:
    in_chans = kwargs.get("in_chans", pretrained.data_config.input_size[0])
    return pretrained.data_config.with_channels(in_chans)


def _registered_weights(name: str, weights: str | os.PathLike[str] | None) -> WeightsEntry | None:
    """The registry entry when `weights` names one ("resnet20.rk_cifar10"), checked against the architecture."""
    if not isinstance(weights, str) or not is_weights_name(weights):
        return None
    pretrained = get_weights(weights)
    if pretrained.architecture != name:
        raise WeightsError(f"weights {weights!r} are for {pretrained.architecture}, not {name}")
    return pretrained


def _read_weights(weights: str | os.PathLike[str], sha256: str | None) -> tuple[dict[str, torch.Tensor], str]:
    text = os.fspath(weights)
    if text.startswith(("http://", "https://")):
        path = download_url(text, sha256)
        return read_state_dict(path), text
    return read_state_dict(text), text


def _head_classes(name: str, kwargs: dict[str, Any], state: dict[str, torch.Tensor]) -> int | None:
    """The number of classes of the file's classifier, found under the name the architecture gives its head in
    `default_cfg`, after the key aliases of its family's checkpoints (`remap_state_dict`). The architecture is
    built on "meta" to ask it: no memory, no initialisation, no random numbers drawn."""
    with torch.device("meta"):
        probe = _build(get_model_entry(name), kwargs)
    classifier = getattr(getattr(probe, "default_cfg", None), "classifier", None)
    remap = getattr(probe, "remap_state_dict", None)
    weight = (remap(state) if remap else state).get(f"{classifier}.weight") if classifier else None
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None
