"""Where a run computes and in which precision: the device, the autocast dtype and the fp16 loss scaler."""

from __future__ import annotations

import torch

from resnetkit.config import ConfigError

# A compile costs about a minute here; below this many training images it would not pay for itself.
COMPILE_AFTER_IMAGES = 200_000


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The device for `name`; under torchrun, `cuda` means this process's GPU (cuda:LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA device is available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def autocast_dtype(amp: bool, requested: str, device_type: str, bf16_supported: bool) -> torch.dtype | None:
    """The autocast dtype of a run, or None for fp32.

    `requested` "auto" picks bf16 where the device has it (any CPU; a CUDA GPU from Ampere on) and fp16 on older
    GPUs (V100, T4), which then need loss scaling (`make_grad_scaler`). "bfloat16" / "float16" force one.
    """
    if not amp:
        return None
    if requested == "bfloat16" or (requested == "auto" and (device_type != "cuda" or bf16_supported)):
        return torch.bfloat16
    return torch.float16


def run_autocast_dtype(amp: bool, requested: str, device: torch.device) -> torch.dtype | None:
    """`autocast_dtype` for this process's device."""
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return autocast_dtype(amp, requested, device.type, bf16)


def make_grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler, enabled for fp16 only: fp16's narrow exponent range flushes small gradients to zero unless
    the loss is scaled up first (Micikevicius et al., 2018). bf16 has fp32's range and needs none; a disabled
    scaler passes every call through, so the training step has one code path."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def compile_pays_off(device: torch.device, training_images: int) -> bool:
    """Whether the default compiles the training step. Measured on the 2-core CPU (benchmarks/RESULTS.md): the
    compiled ResNet-20 training step ran slower than the eager channels_last one (370 vs 399 images/s), so the
    default compiles only on CUDA, and only for runs long enough to repay the compile time."""
    return device.type == "cuda" and training_images >= COMPILE_AFTER_IMAGES
