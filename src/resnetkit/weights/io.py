"""Read and write state dicts. Loading never executes pickled code: torch.load(weights_only=True) or safetensors."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from resnetkit.errors import WeightsError, first_line
from resnetkit.files import atomic_write

# Checkpoints wrap the state dict under one of these keys (ours and the common training scripts').
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
# Prefixes that DistributedDataParallel / DataParallel and torch.compile leak into parameter names.
LEAKED_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a .pt/.pth/.bin or .safetensors file, unwrapped and unprefixed."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if _is_safetensors(path):
        try:
            obj: Any = load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"cannot read {path} as safetensors: {first_line(e)}") from None
    else:
        obj = _torch_load(path)
    return unwrap_state_dict(obj, source=str(path))


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as f:  # 8-byte header length, then a JSON header
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not zipfile.is_zipfile(path)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "unsupported global" in str(e).lower():
            raise WeightsError(
                f"refusing to load {path}: it holds pickled Python objects beyond tensors, which could run code "
                "(only weights_only=True loading is allowed; save model.state_dict() or use .safetensors)"
            ) from None
        raise WeightsError(f"cannot read {path}: not a PyTorch checkpoint ({first_line(e)})") from None
    except Exception as e:  # noqa: BLE001  any parse failure of an untrusted file means "not a checkpoint"
        raise WeightsError(f"cannot read {path}: truncated or not a PyTorch checkpoint ({first_line(e)})") from None


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint and strip "module." / "_orig_mod." prefixes."""
    for _ in range(3):  # {"model": {"state_dict": ...}} nests are seen in the wild
        if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj or not _is_tensor_dict(obj):
        raise WeightsError(f"{source} holds no state dict (expected a mapping of parameter names to tensors)")
    return {strip_prefixes(k): v for k, v in obj.items()}


def _is_tensor_dict(obj: Mapping[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in LEAKED_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> Path:
    """Write a state dict atomically (temporary file, then rename): .safetensors by suffix, else torch.save."""
    path = Path(path)
    clean = {strip_prefixes(k): v.detach().cpu().contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        return atomic_write(path, lambda tmp: save_file(clean, tmp))
    return atomic_write(path, lambda tmp: torch.save(clean, tmp))
