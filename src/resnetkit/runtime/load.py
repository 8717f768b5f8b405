"""One loader for everything a command can run: a checkpoint file or run folder, registered pretrained weights
(e.g. "resnet20.rk_cifar10"), or an exported `.onnx` / `.pt2` file; `runtime.Predictor` runs what it loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetkit.checkpoint import load_checkpoint, model_from_checkpoint
from resnetkit.errors import ExportError
from resnetkit.models import create_model
from resnetkit.runtime.exported import LoadedModel, file_format, load_exported
from resnetkit.transforms import Preprocessing, preprocessing_for
from resnetkit.weights.registry import SHIPPED, get_classification_weights, is_weights_name


@dataclass
class Loaded:
    """A model ready for inference and what describes it."""

    model: nn.Module  # eval mode
    preprocessing: Preprocessing
    classes: list[str]
    architecture: str  # registry name ("" for a foreign ONNX file)
    config: dict[str, Any] = field(default_factory=dict)  # the run's recorded config (checkpoints only)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    file: Path | None = None  # the file the weights were read from
    sha256: str = ""  # of that file, where it is known without reading it (registered weights)
    exported: LoadedModel | None = None

    @property
    def memory_format(self) -> torch.memory_format:
        """The input layout the model runs fastest on: ONNX Runtime, OpenVINO and ExecuTorch take NCHW arrays (a
        channels_last batch would be copied back each call), PyTorch's convolutions on the CPU prefer channels_last."""
        own = self.exported is not None and getattr(self.exported.module, "uses_own_threads", False)
        return torch.contiguous_format if own else torch.channels_last


def load_model(source: str | Path, runtime: str | None = None) -> Loaded:
    """`source` as a model for inference; one-line errors for what cannot be read. `runtime` (exported files; see
    runtime.exported.RUNTIMES): None or "auto" is the file's own choice; a checkpoint runs on PyTorch only."""
    if isinstance(source, str) and is_weights_name(source):
        _pytorch_only(source, runtime)
        entry = get_classification_weights(source)
        model = create_model(entry.architecture, weights=source).eval()
        file = SHIPPED / entry.url if entry.shipped else None
        pre = preprocessing_for(entry.data_config, entry.data_config.preset)
        return Loaded(model, pre, list(entry.classes), entry.architecture, file=file, sha256=entry.sha256)
    if file_format(source) is not None:
        exported = load_exported(source, runtime)
        arch = exported.meta.architecture if exported.meta else ""
        return Loaded(
            exported.module, exported.preprocessing, exported.classes, arch, file=Path(source), exported=exported
        )
    _pytorch_only(source, runtime)
    ckpt = load_checkpoint(source)
    return Loaded(
        model_from_checkpoint(ckpt),
        Preprocessing.from_dict(ckpt["preprocessing"]),
        list(ckpt["classes"]),
        ckpt["model_name"],
        dict(ckpt.get("config") or {}),
        dict(ckpt["model_kwargs"]),
        Path(ckpt["path"]),
    )


def _pytorch_only(source: str | Path, runtime: str | None) -> None:
    if runtime not in (None, "auto"):
        raise ExportError(
            f"{source} is a PyTorch checkpoint: --runtime {runtime} runs exported files; `resnetkit export` it first "
            f"(--format {'onnx' if runtime == 'onnxruntime' else runtime})"
        )
