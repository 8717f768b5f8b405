"""The teacher of a distillation run (TrainConfig.teacher): read from a checkpoint, run folder or registered
weights, checked against the run's classes, and put on the inference fast path (folded BatchNorm, channels_last)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from resnetkit.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from resnetkit.compress.distill import Distillation, DistillationError
from resnetkit.config import TrainConfig
from resnetkit.engine.fastpath import speed_up_for_inference
from resnetkit.models import create_model
from resnetkit.weights.registry import get_classification_weights, is_weights_name


def load_teacher(source: str, classes: list[str]) -> nn.Module:
    """The teacher model in eval mode; one-line errors for a file that is not a model or other classes."""
    if is_weights_name(source):
        entry = get_classification_weights(source)
        model, teacher_classes = create_model(entry.architecture, weights=source), list(entry.classes)
    else:
        try:
            ckpt = load_checkpoint(source)
        except CheckpointError as e:
            hint = "a teacher is a checkpoint, run folder or registered weights name"
            raise DistillationError(f"teacher: {e} ({hint})") from None
        model, teacher_classes = model_from_checkpoint(ckpt), list(ckpt["classes"])
    if teacher_classes != list(classes):
        raise DistillationError(
            f"teacher {source} predicts {len(teacher_classes)} classes ({', '.join(teacher_classes[:4])}, ...); "
            f"the data has {len(classes)} ({', '.join(classes[:4])}, ...): they must be the same, in the same order"
        )
    return model.eval()


def distillation_for(cfg: TrainConfig, classes: list[str], device: torch.device) -> Distillation | None:
    """The run's Distillation (None without a teacher): the teacher on `device`, on the inference fast path."""
    if not cfg.teacher:
        return None
    if not is_weights_name(cfg.teacher) and not Path(cfg.teacher).exists():
        raise DistillationError(f"teacher not found: {cfg.teacher}")
    teacher = load_teacher(cfg.teacher, classes).to(device, getattr(torch, cfg.dtype))
    fast = speed_up_for_inference(teacher, compile=False)
    return Distillation(fast, cfg.kd_temperature, cfg.kd_weight)
