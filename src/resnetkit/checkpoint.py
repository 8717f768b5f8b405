"""Self-describing checkpoints (ARCHITECTURE.md): written atomically, read without executing pickled code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetkit.constants import VERSION
from resnetkit.errors import ResnetkitError
from resnetkit.models import create_model
from resnetkit.weights.io import atomic_write, strip_prefixes

FORMAT = "resnetkit.checkpoint/1"


class CheckpointError(ResnetkitError):
    """A checkpoint that is missing, unreadable, or not one of ours."""


def model_record(model: nn.Module) -> dict[str, Any]:
    """What rebuilds the architecture: registry name and constructor kwargs."""
    name = getattr(model, "model_name", None)
    if name is None:
        raise ValueError("model was not built by resnetkit.create_model; cannot describe it in a checkpoint")
    return {"model_name": name, "model_kwargs": dict(getattr(model, "model_kwargs", {}))}


def save_checkpoint(path: str | Path, model: nn.Module, **fields: Any) -> Path:
    """Write model weights (without wrapper prefixes) and `fields` to `path` via a temporary file + rename.

    Typical fields: classes, preprocessing, optimizer, scheduler, epoch, step, config, metrics, rng.
    """
    state = {strip_prefixes(k): v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "library_version": VERSION, **model_record(model), "model": state, **fields}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded with weights_only=True; one-line errors for anything else."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  an untrusted file: any parse failure means "not a checkpoint"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a resnetkit checkpoint (use it as --weights for a plain state dict)")
    ckpt["path"] = str(path)
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """The trained model, rebuilt from the record and loaded strictly, in eval mode."""
    kwargs = dict(ckpt["model_kwargs"])
    model = create_model(ckpt["model_name"], **kwargs)
    model.load_state_dict(ckpt["model"], strict=True)
    return model.eval()
