"""Benchmarks of what a user deploys: a checkpoint's fast path or an exported file (ONNX fp32 / int8, `.pt2`) on
its own runtime, against the standard eager fp32 PyTorch model of the same architecture, in one process."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch import nn

from resnetkit.bench.baseline import standard_model
from resnetkit.bench.run import BenchResult, _timed
from resnetkit.engine.fastpath import CompiledOrEager
from resnetkit.errors import ExportError
from resnetkit.models import count_macs, create_model
from resnetkit.runtime import Predictor

log = logging.getLogger(__name__)


def baseline_for(loaded: Predictor) -> tuple[nn.Module, bool]:
    """The standard eager fp32 model of `loaded`'s architecture (torchvision's where it has it), and whether it
    holds the same weights: a checkpoint's own, or an exported file's source when that is still where the file's
    metadata says (a registered name, or a file with the recorded sha256). Otherwise random weights: the speed
    comparison holds, the outputs are not compared."""
    if not loaded.architecture:
        raise ExportError("an ONNX file without resnetkit metadata names no architecture to compare it against")
    weights = loaded.reference_model()
    torch.manual_seed(0)
    kwargs = loaded.model_kwargs
    try:
        base = standard_model(loaded.architecture, num_classes=len(loaded.classes)) if not kwargs else None
    except (ValueError, TypeError):
        base = None
    base = base or create_model(loaded.architecture, num_classes=len(loaded.classes), **kwargs).eval()
    if weights is None:
        return base.eval(), False
    try:
        base.load_state_dict(weights.state_dict(), strict=True)
    except RuntimeError:  # torchvision's module names differ for this architecture: resnetkit's eager model then
        base = create_model(loaded.architecture, num_classes=len(loaded.classes), **kwargs).eval()
        base.load_state_dict(weights.state_dict(), strict=True)
    return base.eval(), True


def batch1_latency(
    run: Callable[[torch.Tensor], torch.Tensor], x1: torch.Tensor, seconds: float
) -> tuple[float, float]:
    """p50 and p99 of single-image calls, in milliseconds, over at least `seconds` and 50 calls."""
    for _ in range(5):
        run(x1)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 50 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        run(x1)
        times.append(1000 * (time.perf_counter() - t0))
    ordered = sorted(times)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


@torch.no_grad()
def bench_infer_checkpoint(
    checkpoint: str,
    *,
    batch_size: int = 8,
    seconds: float = 5.0,
    compile: bool = True,
    fold_bn: bool = True,
    runtime: str | None = None,
) -> BenchResult:
    """Throughput at `batch_size` and batch-1 latency (p50/p99) of `checkpoint` as deployed (an exported file on
    its runtime, a checkpoint on the fast path) against the standard eager fp32 model, on random inputs."""
    loaded = Predictor.load(checkpoint, runtime=runtime)
    baseline, same = baseline_for(loaded)
    ours = loaded.runnable(compile, fold_bn=fold_bn)
    size = (3, loaded.preprocessing.size, loaded.preprocessing.size)
    torch.manual_seed(0)
    x = torch.randn(batch_size, *size)
    diff = float((ours(x) - baseline(x)).abs().max()) if same else None  # also the compile's warm-up
    for _ in range(2):
        ours(x), baseline(x)
    base_ips = _timed(lambda: (baseline(x), batch_size)[1], seconds)
    ours_ips = _timed(lambda: (ours(x), batch_size)[1], seconds)
    x1 = x[:1].clone()
    p50, p99 = batch1_latency(ours, x1, seconds / 2)
    b50, b99 = batch1_latency(baseline, x1, seconds / 2)
    flops = 2 * count_macs(baseline, size)
    runtime = "pytorch fast path" if loaded.runtime == "pytorch" else loaded.runtime
    precision = loaded.precision
    extra = {
        "runtime": runtime,
        "precision": precision,
        "p50_ms": p50,
        "p99_ms": p99,
        "baseline_p50_ms": b50,
        "baseline_p99_ms": b99,
        "same_weights": same,
        "file_mb": _size_mb(loaded),
    }
    compiled = isinstance(ours, CompiledOrEager) and ours.compiled
    return BenchResult(
        "infer",
        checkpoint,
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
        extra,
    )


def _size_mb(loaded: Predictor) -> float | None:
    return loaded.file.stat().st_size / 1e6 if loaded.file is not None and loaded.file.is_file() else None
