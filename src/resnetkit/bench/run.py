"""`resnetkit bench train | infer | eval`: resnetkit's fast path and the standard baseline measured in one process."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from resnetkit.bench.baseline import (
    standard_eval_loader,
    standard_evaluate,
    standard_model,
    standard_train_loader,
    standard_train_steps,
)
from resnetkit.data.loader import BatchLoader
from resnetkit.engine.fastpath import (
    CompiledOrEager,
    should_compile,
    speed_up_for_inference,
    speed_up_for_training,
)
from resnetkit.engine.loop import train_step
from resnetkit.engine.predictions import collect_logits
from resnetkit.models import count_macs, create_model
from resnetkit.optim import build_sgd
from resnetkit.runtime import host_threads
from resnetkit.transforms import Preprocessing, preprocessing_for

T = TypeVar("T")


@dataclass
class BenchResult:
    bench: str
    model: str
    batch_size: int
    threads: int
    images_per_sec: float
    baseline_images_per_sec: float
    ratio: float
    gflops_per_sec: float
    baseline_gflops_per_sec: float
    compiled: bool
    max_abs_diff: float | None = None
    latency_ms: float | None = None
    baseline_latency_ms: float | None = None
    extra: dict[str, Any] | None = None  # bench-specific numbers (eval: second-pass rates, top-1 of both sides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _eval_extra(
    labels: torch.Tensor,
    logits: torch.Tensor,
    base_logits: torch.Tensor,
    seconds: dict[str, float],
    warm: dict[str, float],
) -> dict[str, Any]:
    """The eval bench's own numbers: the warm (second-pass) rates, both top-1s, both first-pass times."""
    return {
        "n": len(labels),
        "warm_images_per_sec": warm["resnetkit"],
        "warm_baseline_images_per_sec": warm["baseline"],
        "warm_ratio": warm["resnetkit"] / warm["baseline"],
        "top1": float((logits.argmax(1) == labels).float().mean()),
        "baseline_top1": float((base_logits.argmax(1) == labels).float().mean()),
        "seconds": seconds["resnetkit"],
        "baseline_seconds": seconds["baseline"],
    }


def _timed(run: Callable[[], int], min_seconds: float) -> float:
    """Images per second of repeated `run()` calls (each returns images processed) over >= min_seconds."""
    images, start = 0, time.perf_counter()
    while True:
        images += run()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return images / elapsed


def bench_train(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    model_name: str = "resnet20",
    batch_size: int = 128,
    steps: int = 40,
    warmup: int = 5,
    compile: bool = True,
    amp: bool = False,
) -> BenchResult:
    """End-to-end training throughput (data, augmentation, forward, backward, step) on real CIFAR images.

    `amp`: resnetkit's side runs in bf16 autocast (as `resnetkit train --amp` on a CPU); the baseline stays fp32."""
    from resnetkit.data.datasets import ImageTensorDataset

    torch.manual_seed(0)
    base_model = create_model(model_name, num_classes=10)
    fast_model = copy.deepcopy(base_model)
    flops = 6 * count_macs(base_model, (3, 32, 32))  # forward + backward ~ 3 forwards, 2 FLOPs per MAC
    loader = standard_train_loader(images, labels, batch_size)
    standard_train_steps(base_model, loader, warmup)
    t0 = time.perf_counter()
    seen = standard_train_steps(base_model, loader, steps)
    baseline = seen / (time.perf_counter() - t0)
    pre = preprocessing_for(fast_model.default_cfg, "cifar")
    fast_loader = BatchLoader(
        ImageTensorDataset(images, labels, [str(i) for i in range(10)]), pre, batch_size=batch_size, train=True
    )
    forward = speed_up_for_training(fast_model, compile)
    optimizer = build_sgd(fast_model, 0.1, 0.9, 5e-4, False, False)
    batches = _cycle(fast_loader)
    amp_dtype = torch.bfloat16 if amp else None
    for _ in range(warmup):
        train_step(forward, *next(batches), optimizer, amp_dtype=amp_dtype)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(forward, *next(batches), optimizer, amp_dtype=amp_dtype)
    ours = steps * batch_size / (time.perf_counter() - t0)
    compiled = isinstance(forward, CompiledOrEager) and forward.compiled
    return BenchResult(
        "train",
        model_name,
        batch_size,
        torch.get_num_threads(),
        ours,
        baseline,
        ours / baseline,
        ours * flops / 1e9,
        baseline * flops / 1e9,
        compiled,
        extra={"amp": amp},
    )


def _cycle(loader: BatchLoader):  # type: ignore[no-untyped-def]
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


@torch.no_grad()
def bench_infer(
    model_name: str, *, batch_size: int = 8, seconds: float = 5.0, compile: bool = True, fold_bn: bool = True
) -> BenchResult:
    """Inference throughput (and per-batch latency) on synthetic inputs of the model's default size."""
    torch.manual_seed(0)
    baseline = standard_model(model_name)
    ours = create_model(model_name).eval()
    ours.load_state_dict(baseline.state_dict())
    size = ours.default_cfg.input_size
    x = torch.randn(batch_size, *size)
    fast = speed_up_for_inference(ours, fold_bn=fold_bn, compile=compile)
    x_fast = x.contiguous(memory_format=torch.channels_last)
    diff = float((fast(x_fast) - baseline(x)).abs().max())  # also the compile warm-up
    for _ in range(2):
        fast(x_fast)
        baseline(x)
    base_ips = _timed(lambda: (baseline(x), batch_size)[1], seconds)
    ours_ips = _timed(lambda: (fast(x_fast), batch_size)[1], seconds)
    flops = 2 * count_macs(ours, size)
    compiled = isinstance(fast, CompiledOrEager) and fast.compiled
    return BenchResult(
        "infer",
        model_name,
        batch_size,
        torch.get_num_threads(),
        ours_ips,
        base_ips,
        ours_ips / base_ips,
        ours_ips * flops / 1e9,
        base_ips * flops / 1e9,
        compiled,
        diff,
        1000 * batch_size / ours_ips,
        1000 * batch_size / base_ips,
    )


def bench_eval(
    images: torch.Tensor,
    labels: torch.Tensor,
    model: nn.Module,
    pre: Preprocessing,
    *,
    model_name: str,
    batch_size: int = 250,
    compile: bool | None = None,
    baseline: nn.Module | None = None,
    deployed: bool = False,
) -> BenchResult:
    """One whole evaluation of a dataset, end to end, as a user runs it: from the uint8 images in memory to the
    logits of every image. The baseline is the standard evaluation loop (PIL images, ToTensor + Normalize per
    image, a 2-worker DataLoader, the eager model); resnetkit's side is exactly what `resnetkit eval` does (fold
    BatchNorm, channels_last, a compile when `compile` or the dataset's size asks for one, batches normalised
    as tensors), its preparation included. A second pass of each measures the warm rate. `deployed`: `model` is an
    exported file's model, run as it is on NCHW batches, `baseline` the eager fp32 model (`deployed.baseline_for`)."""
    from resnetkit.data.datasets import ImageTensorDataset

    n = len(labels)
    model = model.eval()
    baseline_model = baseline if baseline is not None else copy.deepcopy(model)
    flops = 2 * count_macs(baseline_model, (images.shape[1], pre.size, pre.size))
    compile = False if deployed else should_compile(n, flops // 2) if compile is None else compile
    layout = torch.contiguous_format if deployed else torch.channels_last  # ONNX Runtime takes NCHW arrays
    dataset = ImageTensorDataset(images, labels, [str(i) for i in range(int(labels.max()) + 1)])

    def baseline_pass() -> torch.Tensor:
        return standard_evaluate(baseline_model, standard_eval_loader(images, labels, batch_size))

    def ours_pass(fast: nn.Module) -> torch.Tensor:
        loader = BatchLoader(dataset, pre, batch_size=batch_size, train=False, memory_format=layout)
        with host_threads(fast):
            return collect_logits(fast, loader)[0]

    base_logits, base_s = _seconds(baseline_pass)
    fast = model if deployed else speed_up_for_inference(model, compile=compile)
    logits, ours_s = _seconds(lambda: ours_pass(fast))
    warm = {"baseline": n / _seconds(baseline_pass)[1], "resnetkit": n / _seconds(lambda: ours_pass(fast))[1]}
    extra = _eval_extra(labels, logits, base_logits, {"resnetkit": ours_s, "baseline": base_s}, warm)
    ours_ips, base_ips = n / ours_s, n / base_s
    compiled = isinstance(fast, CompiledOrEager) and fast.compiled
    return BenchResult(
        "eval",
        model_name,
        batch_size,
        torch.get_num_threads(),
        ours_ips,
        base_ips,
        ours_ips / base_ips,
        ours_ips * flops / 1e9,
        base_ips * flops / 1e9,
        compiled,
        float((logits - base_logits).abs().max()),
        extra=extra,
    )


def _seconds(run: Callable[[], T]) -> tuple[T, float]:
    """What `run()` returns, and the seconds it took."""
    t0 = time.perf_counter()
    out = run()
    return out, time.perf_counter() - t0
