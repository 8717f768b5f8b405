"""`.pt2` files: torch.export's ExportedProgram with a dynamic batch axis, saved by `torch.export.save` with the
resnetkit metadata as an extra file of the archive. Loading needs torch only (no extra)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from resnetkit.export.metadata import META_FILE, ExportMeta
from resnetkit.files import atomic_write


def exported_program(model: nn.Module, input_shape: tuple[int, int, int]) -> torch.export.ExportedProgram:
    """`model` (eval mode) traced for inputs (N, *input_shape), N dynamic."""
    example = torch.randn(2, *input_shape)
    return torch.export.export(model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))


def save_pt2(program: torch.export.ExportedProgram, meta: ExportMeta, out: Path) -> Path:
    return atomic_write(out, lambda tmp: torch.export.save(program, tmp, extra_files={META_FILE: meta.to_json()}))
