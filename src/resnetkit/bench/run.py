"""`resnetkit bench train | infer`: resnetkit's fast path and the standard baseline measured in one process."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from resnetkit.bench.baseline import standard_model, standard_train_loader, standard_train_steps
from resnetkit.data.loader import BatchLoader
from resnetkit.engine.fastpath import CompiledOrEager, speed_up_for_inference, speed_up_for_training
from resnetkit.engine.loop import train_step
from resnetkit.models import count_macs, create_model
from resnetkit.optim import build_sgd
from resnetkit.transforms import preprocessing_for


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _timed(run: Callable[[], int], min_seconds: float) -> float:
    """Images per second of repeated `run()` calls (each returns images processed) over >= min_seconds."""
    images, start = 0, time.perf_counter()
    while True:
        images += run()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return images / elapsed


def bench_train(
    images: torch.Tensor, labels: torch.Tensor, *, model_name: str = "resnet20", batch_size: int = 128,
    steps: int = 40, warmup: int = 5, compile: bool = True,
) -> BenchResult:  # fmt: skip
    """End-to-end training throughput (data, augmentation, forward, backward, step) on real CIFAR images."""
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
    fast_loader = BatchLoader(ImageTensorDataset(images, labels, [str(i) for i in range(10)]), pre,
                              batch_size=batch_size, train=True)  # fmt: skip
    forward = speed_up_for_training(fast_model, compile)
    optimizer = build_sgd(fast_model, 0.1, 0.9, 5e-4, False, False)
    batches = _cycle(fast_loader)
    for _ in range(warmup):
        train_step(forward, *next(batches), optimizer)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(forward, *next(batches), optimizer)
    ours = steps * batch_size / (time.perf_counter() - t0)
    compiled = isinstance(forward, CompiledOrEager) and forward.compiled
    return BenchResult("train", model_name, batch_size, torch.get_num_threads(), ours, baseline, ours / baseline,
                       ours * flops / 1e9, baseline * flops / 1e9, compiled)  # fmt: skip


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
    return BenchResult("infer", model_name, batch_size, torch.get_num_threads(), ours_ips, base_ips,
                       ours_ips / base_ips, ours_ips * flops / 1e9, base_ips * flops / 1e9, compiled, diff,
                       1000 * batch_size / ours_ips, 1000 * batch_size / base_ips)  # fmt: skip
