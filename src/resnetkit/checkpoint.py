"""Self-describing checkpoints (ARCHITECTURE.md): written atomically, read without executing pickled code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetkit.constants import VERSION
from resnetkit.errors import ResnetkitError
from resnetkit.files import atomic_write
from resnetkit.models import create_model
from resnetkit.weights.io import strip_prefixes

FORMAT = "resnetkit.checkpoint/1"


class CheckpointError(ResnetkitError):
    """A checkpoint that is missing, unreadable, or not one of ours."""


def model_record(model: nn.Module) -> dict[str, Any]:
    """What rebuilds the architecture: registry name and every constructor kwarg.

    A kwarg that is not plain data (a class, a function, a module) cannot be stored in a checkpoint that loads
    without running pickled code; such a model is refused rather than saved as a model it is not."""
    name = getattr(model, "model_name", None)
    if name is None:
        raise CheckpointError("model was not built by resnetkit.create_model; cannot describe it in a checkpoint")
    kwargs = dict(getattr(model, "model_kwargs", {}))
    for key, value in kwargs.items():
        if not _plain_data(value):
            raise CheckpointError(
                f"cannot save {name}: its argument {key}={value!r} is not plain data (numbers, strings, lists, "
                "dicts), so a checkpoint could not rebuild this model"
            )
    return {"model_name": name, "model_kwargs": kwargs}


def _plain_data(value: Any) -> bool:
    """Numbers, strings, booleans, None, and lists / tuples / string-keyed dicts of them."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain_data(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_data(v) for k, v in value.items())
    return False


def save_checkpoint(path: str | Path, model: nn.Module, **fields: Any) -> Path:
    """Write model weights (without wrapper prefixes) and `fields` to `path` via a temporary file + rename.

    Typical fields: classes, preprocessing, optimizer, scheduler, epoch, step, config, metrics, rng.
    """
    state = {strip_prefixes(k): v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "library_version": VERSION, **model_record(model), "model": state, **fields}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint dict, loaded with weights_only=True; one-line errors for anything else. `mmap`: the tensors
    are mapped from the file, not read, until used (for a look at the record, e.g. which task wrote it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001  an untrusted file: any parse failure means "not a checkpoint"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a resnetkit checkpoint (use it as --weights for a plain state dict)")
    ckpt["path"] = str(path)
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """The trained model, rebuilt from the record and loaded strictly, in eval mode: the weights' moving average
    where the run kept one (`ema_decay`), else the weights."""
    task = ckpt.get("task", "classification")
    if task != "classification":  # written by detection / segmentation training: tasks.pretrained reads those
        command = "detect" if task == "detection" else "segment"
        where = ckpt.get("path", "the checkpoint")
        raise CheckpointError(f"{where} is a {task} model ({ckpt['model_name']}): run it with `resnetkit {command}`")
    kwargs = dict(ckpt["model_kwargs"])
    model = create_model(ckpt["model_name"], **kwargs)
    ema = ckpt.get("ema")
    model.load_state_dict(ema["weights"] if ema else ckpt["model"], strict=True)
    return model.eval()
