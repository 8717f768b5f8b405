"""CUDA (issue 28): what users run on GPUs, checked where a GPU exists. Every test here is marked `cuda` and skipped,
before any fixture runs, only when torch sees no CUDA device; `benchmarks/gpu.sh` runs them (`pytest -m cuda`) and
then the GPU benchmarks.

1. A streamed batch crosses to the GPU as uint8 and is normalised there: equal to the CPU path, on real photos.
2. fp16 autocast with its loss scaler trains through the real CLI, and a run stopped and resumed ends bit for bit
   where the undisturbed run ends.
3. torch.compile on CUDA: the compiled model equals the eager one, in inference and over training steps.
4. torchrun on CUDA completes and writes its checkpoint; a 1-process NCCL group with DistributedDataParallel
   takes the steps the plain model takes.
5. Both loaders hand batches to the GPU from pinned (page-locked) memory.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from resnetkit.data.cifar import load_sample
from resnetkit.data.loader import BatchLoader
from resnetkit.data.stream import StreamingFolder, StreamLoader, transforms_for
from resnetkit.engine.fastpath import CompiledOrEager, speed_up_for_inference, speed_up_for_training
from resnetkit.engine.loop import train_step
from resnetkit.models import create_model
from resnetkit.optim import build_sgd
from resnetkit.transforms import Preprocessing, preprocessing_for

import faults
import procs
from conftest import REPO, randomize_norm_stats, shared_data

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"),
]

RUN = ["-q", "train", "--device", "cuda", "--model", "resnet20", "--data", "sample", "--no-progress", "--no-compile"]
RUN += ["--batch-size", "32", "--train-subset", "128", "--epochs", "2"]  # 4 steps an epoch
FP16 = ["--amp", "--amp-dtype", "float16"]
CLASSES = ["cat", "dog"]


def _ckpt(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


@pytest.fixture()
def h2d_copies(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.dtype, bool]]:
    """Every copy from host memory to a GPU made through `Tensor.to` while the test runs, in order: (the host
    tensor's dtype, whether its memory is pinned)."""
    copies: list[tuple[torch.dtype, bool]] = []
    to = torch.Tensor.to

    def recording_to(self: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = to(self, *args, **kwargs)
        if self.device.type == "cpu" and out.device.type == "cuda":
            copies.append((self.dtype, self.is_pinned()))
        return out

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    return copies


@pytest.fixture()
def deterministic_cudnn(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN restricted to its deterministic algorithms: its default heuristics may pick weight-gradient kernels that
    accumulate with atomics, whose sums vary from run to run, so two GPU runs can only be compared bit for bit
    with this set (what a resumed run must reproduce is the undisturbed run, not cuDNN's choice of kernels)."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


@pytest.fixture()
def strict_fp32() -> Iterator[None]:
    """fp32 convolutions and matmuls in full precision (cuDNN and cuBLAS may use TF32 on Ampere and later, a 10-bit
    mantissa), so compiled and eager kernels differ by float32 round-off alone; dynamo's caches cleared before and
    after, as in test_fastpath. (Saved and restored by hand: monkeypatch cannot undo an attribute of
    torch.backends.cuda.matmul, which it finds only through that object's __getattr__.)"""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch._dynamo.reset()
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
        torch._dynamo.reset()


# --- 1 and 5: streamed and in-memory batches on their way to the GPU --------------------------------------------


def _photos() -> list[tuple[Path, int]]:
    """8 real cats-vs-dogs JPEGs of each class, at their full size (about 500 x 375)."""
    root = shared_data("cats_vs_dogs") / "train"
    return [(p, label) for label, c in enumerate(CLASSES) for p in sorted((root / c).glob("*.jpg"))[:8]]


def _imagenet_pre() -> Preprocessing:
    return preprocessing_for(create_model("resnet18").default_cfg, "imagenet", 64)


def _streamed(train: bool, device: str, workers: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Epoch 1 of the photos streamed to `device`: training views (TrivialAugment) or evaluation crops."""
    pre = _imagenet_pre()
    train_view, eval_view = transforms_for(pre, "trivial")
    photos = StreamingFolder(_photos(), CLASSES, {}, train_view if train else eval_view)
    loader = StreamLoader(photos, pre, batch_size=8, train=train, seed=3, workers=workers, device=device)
    return list(loader.epoch(1))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_streamed_batches_cross_as_uint8_and_are_normalised_on_the_gpu_as_on_the_cpu(
    train: bool, h2d_copies: list[tuple[torch.dtype, bool]]
) -> None:
    """Commit d7ebc3b: a streamed batch goes to the GPU as uint8 (a quarter of float32's bytes) and is normalised
    there. Each photo's view is seeded per image, so both devices normalise the same uint8 pixels; both then make
    the same float32 multiply and subtract, so the batches are expected bit-equal: the tolerance, 1e-6 on values
    within about +-2.7, admits last-bit differences only (a fused multiply-add), not a wrong mean, std or layout."""
    on_cpu = _streamed(train, "cpu")
    assert h2d_copies == []
    on_gpu = _streamed(train, "cuda")
    assert len(on_gpu) == len(on_cpu) == 2
    for (x, y), (x_gpu, y_gpu) in zip(on_cpu, on_gpu, strict=True):
        assert x_gpu.device.type == y_gpu.device.type == "cuda" and x_gpu.dtype == x.dtype == torch.float32
        assert x_gpu.shape == (8, 3, 64, 64) and x_gpu.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(x_gpu.cpu(), x, rtol=0, atol=1e-6)
        assert torch.equal(y_gpu.cpu(), y)
    assert [dtype for dtype, _ in h2d_copies] == [torch.uint8, torch.int64] * 2  # each batch's images, its labels


def test_both_loaders_copy_batches_to_the_gpu_from_pinned_memory(h2d_copies: list[tuple[torch.dtype, bool]]) -> None:
    """A copy from pageable memory is staged by the driver, which may first wait for the GPU's queued work; from
    pinned memory it is queued like a kernel, and the next batch is prepared while the GPU computes. Streamed
    batches are pinned by the DataLoader (pin_memory, here with 2 worker processes), in-memory ones by the
    BatchLoader (training and evaluation batches alike): every host-to-GPU copy of either loader reads pinned memory."""
    streamed = _streamed(True, "cuda", workers=2)
    assert len(streamed) == 2 and h2d_copies == [(torch.uint8, True), (torch.int64, True)] * 2
    h2d_copies.clear()
    sample = load_sample("train")  # 2,000 CIFAR-10 images
    pre = preprocessing_for(create_model("resnet20").default_cfg, "cifar")
    for train in (True, False):
        batches = list(BatchLoader(sample, pre, batch_size=500, train=train, seed=0, device="cuda").epoch(0))
        assert len(batches) == 4 and all(x.device.type == y.device.type == "cuda" for x, y in batches)
    assert h2d_copies == [(torch.float32, True), (torch.int64, True)] * 8


# --- 2: fp16 autocast, its loss scaler, and an exact resume --------------------------------------------------------


def test_fp16_run_on_cuda_scales_the_loss_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deterministic_cudnn: None
) -> None:
    """As test_precision's CPU test, on the GPU: stopped by a real SIGINT after step 3 and resumed, an fp16 run ends
    with the weights (bit for bit) and the loss-scaler state of the run that was never stopped."""
    a, stopped, b = faults.straight_and_resumed([*RUN, *FP16], tmp_path, monkeypatch)
    assert stopped["step"] == 3 and stopped["scaler"]["scale"] > 0  # an enabled scaler's state was saved
    assert a["step"] == b["step"] == 8
    assert (a["config"]["device"], a["config"]["amp"], a["config"]["amp_dtype"]) == ("cuda", True, "float16")
    assert json.loads((tmp_path / "straight" / "run.json").read_text())["device"] == "cuda:0"
    assert a["scaler"] == b["scaler"] and {"scale", "_growth_tracker"} <= a["scaler"].keys()
    # the scaler counted every step: 8 steps at the initial scale, or fewer since it backed off after an overflow
    scale, counted = a["scaler"]["scale"], a["scaler"]["_growth_tracker"]
    assert (scale, counted) == (2.0**16, 8) or (scale < 2.0**16 and counted < 8)
    assert a["model"]["fc.weight"].dtype == torch.float32  # fp32 master weights: fp16 only inside autocast
    assert a["model"].keys() == b["model"].keys()
    assert [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])] == []


# --- 3: torch.compile on CUDA ----------------------------------------------------------------------------------------


def test_compiled_inference_on_cuda_equals_eager(strict_fp32: None) -> None:
    """The inference fast path (BatchNorm folded, channels_last, a frozen compiled graph) against the eager model on
    the GPU. Tolerance 1e-3 of the largest logit (and 1e-3 relative): float32 round-off of other kernels and folded
    weights; a wrong fold or a stale frozen constant is off by the logits' own size."""
    model = randomize_norm_stats(create_model("resnet20")).eval().cuda()
    fast = speed_up_for_inference(model)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        ref = model(x)
        out = fast(x.contiguous(memory_format=torch.channels_last))
    assert isinstance(fast, CompiledOrEager) and fast.compiled  # compiled, not the eager fallback
    assert out.device.type == "cuda"
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max()))


def _float_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().double() for k, v in model.state_dict().items() if v.is_floating_point()}


def _distance_over_update(
    state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], start: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Per tensor, and "all" for the whole state: |state - reference| / |reference - start| (Frobenius norms), the
    distance between two runs as a fraction of how far training moved the reference."""
    ratios = {}
    for k in start:
        moved_k = (reference[k] - start[k]).norm().clamp_min(1e-12)
        ratios[k] = float((state[k] - reference[k]).norm() / moved_k)
    off = sum(float((state[k] - reference[k]).norm()) ** 2 for k in start) ** 0.5
    moved = sum(float((reference[k] - start[k]).norm()) ** 2 for k in start) ** 0.5
    return ratios | {"all": off / max(moved, 1e-12)}


def test_compiled_training_steps_on_cuda_follow_eager_ones(strict_fp32: None) -> None:
    """SGD steps (the library's train_step in fp32: no autocast) of a compiled and an eager copy of ResNet-20 on the
    same GPU batches. Compiled kernels sum in other orders, and a freshly initialised network amplifies that
    round-off step by step (the first layers' BatchNorm gradients are sums of 65k nearly cancelling terms), so the
    weights are compared with the update: after one step each tensor is within 10% of its own update from the eager
    one, after four the whole state within 5% (measured on the CPU, where the same happens: 0.8% and 0.3%); the
    losses agree to 1e-3 (measured: 7e-5). A compiled step that dropped an update or used stale weights is 100% off.
    """
    torch.manual_seed(0)
    eager_model = create_model("resnet20").cuda()
    compiled_model = copy.deepcopy(eager_model)
    start = _float_state(eager_model)
    eager = speed_up_for_training(eager_model, compile=False)
    compiled = speed_up_for_training(compiled_model, compile=True)
    runs = {"eager": (eager_model, eager), "compiled": (compiled_model, compiled)}
    sgd = {name: build_sgd(model, 0.05, 0.9, 5e-4, False, False) for name, (model, _) in runs.items()}
    pre = preprocessing_for(eager_model.default_cfg, "cifar")
    loader = BatchLoader(load_sample("train"), pre, batch_size=64, train=True, seed=0, device="cuda")
    losses: dict[str, list[float]] = {"eager": [], "compiled": []}
    for step, (x, y) in enumerate(itertools.islice(loader.epoch(0), 4), 1):
        for name, (_, forward) in runs.items():
            loss, _ = train_step(forward, x, y, sgd[name], amp_dtype=None)
            losses[name].append(float(loss))
        if step == 1:
            first = _distance_over_update(_float_state(compiled_model), _float_state(eager_model), start)
            assert max(first.values()) < 0.1, sorted(first.items(), key=lambda kv: kv[1])[-3:]
    assert isinstance(compiled, CompiledOrEager) and compiled.compiled  # compiled, not the eager fallback
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-3)
    assert losses["eager"][0] != losses["eager"][-1]  # the weights moved: there was something to follow
    assert _distance_over_update(_float_state(compiled_model), _float_state(eager_model), start)["all"] < 0.05


# --- 4: torchrun on CUDA -------------------------------------------------------------------------------------------


def _launch(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run `cmd` in the repository with a clean torchrun environment, reaped with its workers (procs.run)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    return procs.run(cmd, timeout=timeout, env=env, cwd=REPO)


def test_torchrun_on_cuda_completes_and_writes_its_checkpoint(tmp_path: Path) -> None:
    """`torchrun --nproc-per-node N -m resnetkit train --device cuda`, N = 1 on a one-GPU machine and 2 where two
    GPUs exist. One process joins no process group (distributed.init: nothing to synchronise) and trains on
    cuda:LOCAL_RANK; two join NCCL and wrap the model in DistributedDataParallel. Either way the run ends, rank 0
    writes its run folder and checkpoint, and the checkpoint records the device and the steps."""
    nproc = min(2, torch.cuda.device_count())
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m"]
    cmd += ["resnetkit", "-q", "train", "--device", "cuda", "--model", "resnet20", "--data", "sample", "--no-amp"]
    cmd += ["--no-compile", "--no-progress", "--batch-size", "64", "--train-subset", "256", "--test-subset", "250"]
    cmd += ["--epochs", "1", "--set", "dist_timeout=120", "--out", str(run)]
    result = _launch(cmd, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = _ckpt(run)
    assert ckpt["step"] == 4 and ckpt["config"]["device"] == "cuda" and ckpt["config"]["amp"] is False
    record = json.loads((run / "run.json").read_text())
    assert record["world_size"] == nproc and record["device"] == "cuda:0"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["test_n"]) for r in rows] == [(4, 250)]


def test_one_process_nccl_ddp_takes_the_plain_models_steps(deterministic_cudnn: None) -> None:
    """A 1-process NCCL process group (a store on a port the kernel chose) and DistributedDataParallel around
    ResNet-20 on the GPU, through the library's `wrap_model` and `train_step`: DDP's gradient all-reduce over NCCL
    with one process averages over one, so its three SGD steps are the plain model's, loss for loss (1e-5)."""
    from resnetkit import distributed

    torch.manual_seed(0)
    plain = create_model("resnet20", num_classes=10).cuda()
    wrapped_model = copy.deepcopy(plain)
    data = load_sample("train")
    pre = preprocessing_for(plain.default_cfg, "cifar")
    batches = list(
        itertools.islice(BatchLoader(data, pre, batch_size=32, train=True, seed=0, device="cuda").epoch(0), 3)
    )
    store = torch.distributed.TCPStore("127.0.0.1", 0, 1, True)
    torch.distributed.init_process_group("nccl", store=store, rank=0, world_size=1)
    try:
        assert torch.distributed.get_backend() == "nccl"
        ddp = torch.nn.parallel.DistributedDataParallel(wrapped_model, device_ids=[0])
        losses: dict[str, list[float]] = {"plain": [], "ddp": []}
        for name, forward, model in (("plain", plain, plain), ("ddp", ddp, wrapped_model)):
            sgd = build_sgd(model, 0.05, 0.9, 5e-4, False, False)
            for x, y in batches:
                loss, _ = train_step(forward, x, y, sgd)
                losses[name].append(float(loss))
        total = distributed.all_reduce_sum(torch.ones(1, device="cuda"))
    finally:
        torch.distributed.destroy_process_group()
    assert float(total) == 1.0
    assert losses["ddp"] == pytest.approx(losses["plain"], rel=1e-5, abs=1e-5)
    for key, value in plain.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, wrapped_model.state_dict()[key], rtol=1e-4, atol=1e-5), key
