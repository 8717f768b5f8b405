"""Where a run computes and in which precision: the device, the autocast dtype and the fp16 loss scaler."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from resnetkit.config import ConfigError
from resnetkit.files import atomic_write, cache_dir
from resnetkit.hardware import cpu_info

# A compile costs about a minute here; below this many training images it would not pay for itself.
COMPILE_AFTER_IMAGES = 200_000
# bf16 autocast is the CPU training default where a ResNet-shaped training step measured at least this much
# faster than fp32 (Intel AMX: 2.55x, AMD Zen 5 AVX-512 bf16: 1.97x end to end; CPUs without native bf16
# emulate it and come out slower).
BF16_MIN_SPEEDUP = 1.25
PRECISION_CACHE = "precision.json"


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


def default_amp(device: torch.device, dtype: str = "float32") -> tuple[bool, str]:
    """Whether a run that did not say --amp or --no-amp trains in bf16 autocast, and why (for run.json).

    On a CPU: where a ResNet-shaped training step runs at least BF16_MIN_SPEEDUP times faster in bf16 than in
    fp32, measured once per CPU and torch version (`bf16_speedup`). On a GPU autocast stays opt-in,
    as in torchvision's and timm's training scripts.
    """
    if device.type != "cpu":
        return False, f"fp32: autocast is opt-in (--amp) on {device.type}"
    if dtype != "float32":
        return False, f"{dtype}: no autocast"
    speedup = bf16_speedup()
    faster = speedup >= BF16_MIN_SPEEDUP
    verdict = "bf16 autocast" if faster else "fp32"
    return faster, f"{verdict}: a bf16 training step measured {speedup:.2f}x the fp32 one on this CPU"


def bf16_speedup() -> float:
    """fp32 time / bf16-autocast time of a ResNet-shaped training step on this CPU, measured the first time and
    kept in the cache folder (PRECISION_CACHE) under the CPU's name and flags and the torch version."""
    key = bf16_cache_key()
    path = cache_dir() / PRECISION_CACHE
    try:
        known = json.loads(path.read_text())
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), (int, float)):
        return float(known[key])
    speedup = measure_bf16_speedup()
    known[key] = round(speedup, 3)
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(known, indent=1) + "\n"))
    except OSError:
        pass  # a read-only home: measure again next time
    return speedup


def bf16_cache_key() -> str:
    """What a measured speedup is kept under: this CPU and this torch."""
    return f"{cpu_signature()} | torch {torch.__version__}"


def cpu_signature() -> str:
    """The CPU's model name and its flags that decide bf16 speed (`lscpu` shows the same)."""
    name, flags = cpu_info()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "avx_vnni")
    return " ".join([name, *(f for f in wanted if f in flags)])


def measure_bf16_speedup(repeats: int = 3, batch: int = 32) -> float:
    """Time a forward and backward pass of a stack of 3x3 convolutions with BatchNorm and ReLU (ResNet-20's
    32-channel stage, channels_last) in fp32 and in bf16 autocast, two rounds of each, and return the ratio of the
    fastest of each. Uses its own random state: the global one (the run's seed) is left as it was."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core's ratio: a second process on the machine stalls multi-thread steps
    try:
        return _time_ratio(repeats, batch)
    finally:
        torch.set_num_threads(threads)


def _time_ratio(repeats: int, batch: int) -> float:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        for _ in range(4):
            layers += [nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True)]
        net = nn.Sequential(*layers).to(memory_format=torch.channels_last)
        x = torch.randn(batch, 32, 32, 32).to(memory_format=torch.channels_last)

        def step(bf16: bool) -> float:
            start = time.perf_counter()
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                loss = net(x).float().square().mean()
            loss.backward()
            net.zero_grad(set_to_none=True)
            return time.perf_counter() - start

        for bf16 in (False, True, False, True):  # warm-up: oneDNN picks and caches its kernels
            step(bf16)
        fp32 = min(step(False) for _ in range(repeats))
        bf16 = min(step(True) for _ in range(repeats))
        fp32 = min(fp32, *(step(False) for _ in range(repeats)))
        bf16 = min(bf16, *(step(True) for _ in range(repeats)))
    return fp32 / bf16
