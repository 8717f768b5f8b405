"""Knowledge distillation (Hinton, Vinyals & Dean, 2015): the student also matches a teacher's softened outputs.

This is a loss and a teacher wrapper that the ordinary training step runs (engine.loop.train_step takes a
`Distillation`): no second training loop, so recipes, mixing, resume and torchrun work unchanged. The teacher
sees exactly the student's (augmented, mixed) batch every step, so nothing is cached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from resnetkit.errors import ResnetkitError


class DistillationError(ResnetkitError):
    """A teacher or distillation setting that cannot be used."""


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, times T^2 so that its gradients keep
    their scale as T changes (Hinton et al., section 2), averaged over the batch."""
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


@dataclass
class Distillation:
    """A frozen teacher and how much its soft targets count: loss = (1 - weight) x CE + weight x KD."""

    teacher: nn.Module
    temperature: float = 4.0
    weight: float = 0.9

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise DistillationError(f"the distillation temperature must be positive, got {self.temperature}")
        if not 0 <= self.weight <= 1:
            raise DistillationError(f"the distillation weight must be between 0 and 1, got {self.weight}")
        self.teacher.eval().requires_grad_(False)

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for the student's batch; no graph is kept (the teacher never trains)."""
        with torch.no_grad():
            return self.teacher(x).float()

    def combine(self, hard_loss: torch.Tensor, student_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The student's loss with the teacher's soft targets mixed in."""
        soft = kd_loss(student_logits, self.teacher_logits(x), self.temperature)
        return (1 - self.weight) * hard_loss + self.weight * soft
