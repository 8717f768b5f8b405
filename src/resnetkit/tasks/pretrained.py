"""Detectors and segmenters with trained weights: torchvision's COCO weights registered by name
("fasterrcnn_resnet50_fpn.tv_coco", "deeplabv3_resnet50.tv_coco", ...; weights.registry) loaded into the
resnetkit-backed models, downloaded and verified as the classification weights are; or resnetkit's own detection /
segmentation checkpoints. Classification weights and checkpoints are refused with a line naming the command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetkit.checkpoint import CheckpointError, load_checkpoint
from resnetkit.errors import WeightsError
from resnetkit.layers import FrozenBatchNorm2d
from resnetkit.tasks.detection import create_detector
from resnetkit.tasks.segmentation import create_segmenter
from resnetkit.weights.io import read_state_dict
from resnetkit.weights.registry import WeightsEntry, get_weights, is_weights_name, resolve_weights_file

TASK_COMMANDS = {"classification": "predict", "detection": "detect", "segmentation": "segment"}


@dataclass
class TaskModel:
    """A detector or segmenter in eval mode, with its class names and what it was read from."""

    model: nn.Module
    task: str  # "detection" or "segmentation"
    classes: list[str]
    source: str
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # segmenters: the input normalisation (detectors do their own)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    resize: int = 520  # segmenters: the short side their inputs are resized to


def build_task_model(task: str, kind: str, kwargs: dict[str, Any]) -> nn.Module:
    """The architecture a record describes (`model_name`, `model_kwargs` of create_detector / create_segmenter)."""
    kwargs = dict(kwargs)
    if task == "detection":
        return create_detector(kind, kwargs.pop("backbone", "resnet50"), **kwargs)
    return create_segmenter(kind, kwargs.pop("backbone", "resnet50"), **kwargs)


def create_task_model(name: str, **kwargs: Any) -> nn.Module:
    """The model of registered detection / segmentation weights, loaded (downloaded and verified when not cached).
    `kwargs` go to the builder (min_size, box_score_thresh, ...)."""
    entry = _task_entry(name)
    model = task_architecture(entry, **kwargs)
    load_task_weights(model, entry)
    return model.eval()


# The layers whose shapes depend on the number of classes: a fine-tune on other classes starts them anew.
CLASS_HEADS = ("roi_heads.box_predictor.", "head.classification_head.cls_logits.", "classifier.4.", "aux_classifier.4.")


def load_task_weights(model: nn.Module, entry: WeightsEntry, *, heads_may_differ: bool = False) -> None:
    """Registered detection / segmentation weights into `model` (downloaded and verified when not cached), every key
    strictly, or, with `heads_may_differ`, all but the class-dependent head layers when the classes differ."""
    state = read_state_dict(resolve_weights_file(entry))
    if heads_may_differ:
        own = model.state_dict()
        state = {
            k: v for k, v in state.items() if not (k.startswith(CLASS_HEADS) and k in own and own[k].shape != v.shape)
        }
        own_heads = {k: v for k, v in own.items() if k.startswith(CLASS_HEADS) and k not in state}
        state |= own_heads  # this model's freshly initialised heads
    _load_strict(model, state, entry.name)
    eps = entry.build.get("frozen_bn_eps")
    if eps is not None:  # torchvision's overwrite_eps: these files were trained with eps 0
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.eps = eps


def task_architecture(entry: WeightsEntry, **kwargs: Any) -> nn.Module:
    """The network registered detection / segmentation weights load into, built as torchvision builds it for that
    file (a detector for trained weights: frozen BatchNorm in v1, 3 trainable backbone layers)."""
    build = {k: v for k, v in entry.build.items() if k not in ("kind", "frozen_bn_eps")}
    extra = {"pretrained": True} if entry.task == "detection" else {}
    return build_task_model(
        entry.task, entry.build["kind"], {"num_classes": entry.num_classes, **build, **extra, **kwargs}
    )


def _task_entry(name: str) -> WeightsEntry:
    entry = get_weights(name)
    if entry.task == "classification":
        raise WeightsError(
            f"{name} are classification weights: run them with `resnetkit predict`; detection and segmentation "
            "weights end in .tv_coco (`resnetkit models --weights '*coco*'`)"
        )
    return entry


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    result = model.load_state_dict(state, strict=False)
    problems = [*result.missing_keys, *result.unexpected_keys]
    if problems:
        raise WeightsError(
            f"{source} does not fit {getattr(model, 'model_name', 'the model')}: {len(result.missing_keys)} missing "
            f"and {len(result.unexpected_keys)} unexpected keys (e.g. {problems[0]})"
        )


def load_task_model(source: str | Path, task: str, **kwargs: Any) -> TaskModel:
    """A registered `*.tv_coco` name or a resnetkit detection / segmentation checkpoint (file or run folder), checked
    to be a `task` model; `kwargs` go to the builder. One-line errors for anything else."""
    text = str(source)
    if is_weights_name(text):
        entry = _task_entry(text)
        _require_task(entry.task, task, text)
        model = create_task_model(text, **kwargs)
        data = entry.data_config
        return TaskModel(model, task, list(entry.classes), text, data.mean, data.std, data.input_size[-1])
    ckpt = load_checkpoint(source)
    _require_task(ckpt.get("task", "classification"), task, text, ckpt.get("model_name", ""))
    model = build_task_model(task, ckpt["model_name"], {**ckpt["model_kwargs"], **kwargs})
    _load_strict(model, ckpt["model"], text)
    pre = ckpt.get("task_preprocessing") or {}
    return TaskModel(
        model.eval(),
        task,
        list(ckpt["classes"]),
        text,
        tuple(pre.get("mean", TaskModel.mean)),
        tuple(pre.get("std", TaskModel.std)),
        int(pre.get("resize", TaskModel.resize)),
    )


def _require_task(found: str, wanted: str, source: str, model_name: str = "") -> None:
    if found != wanted:
        what = f" ({model_name})" if model_name else ""
        raise CheckpointError(
            f"{source} is a {found} model{what}, not a {wanted} one: run it with `resnetkit {TASK_COMMANDS[found]}`"
        )
