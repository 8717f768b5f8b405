"""Everything that touches torch.distributed (ARCHITECTURE.md): joining the process group torchrun describes,
collectives for metrics, sharding, DDP wrapping and BatchNorm synchronised across processes.

One code path for 1 or N processes: with no torchrun environment every helper here is a no-op, so the training
loop calls them unconditionally. Launch with `torchrun --nproc-per-node N -m resnetkit train ...`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from resnetkit.errors import ResnetkitError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0  # joining the group, and any one collective (a dead peer surfaces as an error, no hang)

# Gloo's worker thread lets go of a collective's tensors a little after the caller has moved on. When that drops
# the last reference besides the tensor's Python object, PyTorch hands the release to Python, and in a process that
# has begun to exit (a rank whose last act was a collective) this aborts it: "terminate called without an active
# exception", SIGABRT after a complete run (measured: 1 in 16 two-process runs, more under load). A view of each
# such tensor, kept here for the next collectives, holds one more reference: the worker thread's release never
# reaches Python, the view's later release (by Python itself) does. Gloo's 2 worker threads each hold at most one
# finished collective, so the last few suffice.
_HELD_FOR_COLLECTIVES: deque[torch.Tensor] = deque(maxlen=16)


def _held(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, with a view of it kept in _HELD_FOR_COLLECTIVES (a view holds a reference to its base)."""
    _HELD_FOR_COLLECTIVES.append(tensor.view(tensor.shape))
    return tensor


class DistributedError(ResnetkitError):
    """A torchrun environment that is incomplete, or a process group that cannot be joined."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job, as torchrun's environment variables say."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    restart_count: int = 0  # torchrun --max-restarts: how many times the workers were restarted

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_os(environ: dict[str, str] | None = None) -> DistEnv:
    """The DistEnv of this process (a single process when WORLD_SIZE is unset or 1)."""
    env = os.environ if environ is None else environ
    try:
        world_size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", "0"))
        restarts = int(env.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError as e:
        raise DistributedError(f"malformed torchrun environment: {e}") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise DistributedError(f"RANK={rank} is not within WORLD_SIZE={world_size}")
    return DistEnv(rank, world_size, local_rank, restarts)


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 outside torchrun), readable before any group exists."""
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def init(device_type: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistEnv:
    """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA); a single process needs none.

    A rendezvous endpoint that does not answer is an error after `timeout_s`, not a hang.
    """
    env = env_from_os()
    if not env.enabled or dist.is_initialized():
        return env
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={env.world_size} but {' and '.join(missing)} not set: launch with torchrun "
            "(torchrun --nproc-per-node N -m resnetkit train ...)"
        )
    backend = "nccl" if device_type == "cuda" else "gloo"
    addr, port = os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]
    endpoint = f"{addr}:{port}"
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's agent serves the store
    if env.rank != 0 and not agent_store and not _reachable(addr, port, timeout_s):
        # checked here because torch's own store client logs a C++ backtrace per failed attempt
        raise DistributedError(
            f"rank {env.rank} could not join the process group at {endpoint} within {timeout_s:g} s "
            "(nothing answers there: is rank 0 running, and are MASTER_ADDR/MASTER_PORT or --rdzv-endpoint right?)"
        )
    timeout = timedelta(seconds=timeout_s)
    try:
        store = dist.TCPStore(
            addr, int(port), env.world_size, is_master=env.rank == 0 and not agent_store, timeout=timeout
        )
        # torchrun's agent keeps one store across --max-restarts; without a per-attempt namespace the restarted
        # workers can read the dead workers' addresses and fail to connect (measured here: 3 restarts in 4)
        store = dist.PrefixStore(f"resnetkit/attempt_{env.restart_count}", store)
        dist.init_process_group(backend, store=store, rank=env.rank, world_size=env.world_size, timeout=timeout)
    except Exception as e:  # noqa: BLE001  store/connection failures come as several exception types
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DistributedError(
            f"rank {env.rank} could not join the process group at {endpoint} within {timeout_s:g} s ({first})"
        ) from None
    log.debug("rank %d/%d joined %s via %s", env.rank, env.world_size, backend, endpoint)
    return env


def _reachable(addr: str, port: str, timeout_s: float) -> bool:
    """Whether a TCP connection to addr:port succeeds within timeout_s (retrying while rank 0 starts up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((addr, int(port)), timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
                return True
        except (OSError, ValueError):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


@contextmanager
def process_group(device_type: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[DistEnv]:
    """`init` for the duration of a with-block; the group is destroyed at the end if this block created it."""
    created = env_from_os().enabled and not dist.is_initialized()
    env = init(device_type, timeout_s)
    try:
        yield env
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes, in place (the tensor itself when there is one process). NCCL reduces only CUDA
    tensors, so host tensors travel through the current GPU there."""
    if world_size() == 1:
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        on_gpu = _held(tensor.cuda())
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
        return tensor.copy_(on_gpu)
    dist.all_reduce(_held(tensor), op=dist.ReduceOp.SUM)
    return tensor


def any_process(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every process if it is true on any (e.g. one rank got Ctrl-C: all stop at the same step)."""
    if world_size() == 1:
        return flag
    t = _held(torch.tensor([int(flag)], device=device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s value of a small picklable object on every rank (e.g. a decision or a path)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def decided_on_main(fn: Callable[[], Any]) -> Any:
    """fn() run on rank 0 alone, its result (or its user error) on every rank, so all processes decide alike
    (e.g. whether a run folder exists, which checkpoint a restart continues from)."""
    result, error = None, None
    if rank() == 0:
        try:
            result = fn()
        except ResnetkitError as e:
            error = e
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Rank `src`'s buffers (BatchNorm running statistics) on every rank: after the last training step each
    process updated them from its own batch; evaluation and checkpoints use one set."""
    if world_size() == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(_held(buffer.data), src=src)


def shard(n: int, rank: int, world_size: int) -> range:
    """This rank's contiguous share of n items: every item in exactly one shard, none repeated or padded
    (unlike DistributedSampler, which pads evaluation sets by repeating samples)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` when there are several processes; the model itself otherwise."""
    if world_size() == 1:
        return model
    if device.type != "cuda":
        return DistributedDataParallel(model)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return DistributedDataParallel(model, device_ids=[index])


def convert_sync_batchnorm(model: nn.Module, device_type: str) -> nn.Module:
    """BatchNorm layers computing global-batch statistics: torch's SyncBatchNorm on CUDA, which only runs on
    accelerators, and `SyncBatchNorm2d` (the same computation over any backend, gloo included) elsewhere."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(model, name, SyncBatchNorm2d.from_batchnorm(child))
        else:
            convert_sync_batchnorm(child, device_type)
    return model


def _view(t: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, 1, 1)


class _SyncBatchNormFunction(torch.autograd.Function):
    """Normalisation by global-batch statistics, with the fused BatchNorm backward (as torch.nn.SyncBatchNorm):

    dx = w * invstd * (dy - mean(dy) - (x - mean) * invstd^2 * mean(dy * (x - mean))), the two means taken over
    the global batch (one all_reduce); dw and db are this process's sums, which DDP then averages. Differentiating
    the forward formula term by term instead cancels large fp32 terms and loses about 1% of the first layers'
    gradients.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        mean: torch.Tensor,
        invstd: torch.Tensor,
        n: float,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.n = n
        return (x - _view(mean)) * _view(invstd * weight) + _view(bias)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, weight, mean, invstd = ctx.saved_tensors
        xmu = x - _view(mean)
        c = x.shape[1]
        local = torch.cat([dy.sum((0, 2, 3), dtype=torch.float64), (dy * xmu).sum((0, 2, 3), dtype=torch.float64)])
        grad_weight = (local[c:] * invstd.double()).to(weight.dtype)
        grad_bias = local[:c].to(weight.dtype)
        total = all_reduce_sum(local.clone())
        mean_dy = (total[:c] / ctx.n).to(x.dtype)
        mean_dy_xmu = (total[c:] / ctx.n).to(x.dtype)
        dx = (dy - _view(mean_dy) - xmu * _view(invstd * invstd * mean_dy_xmu)) * _view(invstd * weight)
        return dx, grad_weight, grad_bias, None, None, None


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the global batch across all processes.

    Per-channel sums, sums of squares and counts travel in one all_reduce (fp64 sums); the backward is
    BatchNorm's own, with its two batch means all-reduced: the computation of torch.nn.SyncBatchNorm, which only
    runs on accelerators, over any backend (gloo on CPU included). With one process, or in eval mode, it is plain
    BatchNorm2d (the state dict is identical either way).
    """

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> SyncBatchNorm2d:
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        like = next(iter(bn.parameters()), None) if bn.affine else bn.running_mean
        if like is not None:
            new = new.to(device=like.device, dtype=like.dtype)
        new.load_state_dict(bn.state_dict())
        new.train(bn.training)
        if bn.affine:
            new.weight.requires_grad_(bn.weight.requires_grad)
            new.bias.requires_grad_(bn.bias.requires_grad)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        c = x.shape[1]
        count = torch.full((1,), x.numel() / c, dtype=torch.float64, device=x.device)
        with torch.no_grad():
            local = torch.cat([x.sum((0, 2, 3), dtype=torch.float64), (x * x).sum((0, 2, 3), dtype=torch.float64)])
            total = all_reduce_sum(torch.cat([local, count]))
        n = float(total[-1])
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            self._update_running_stats(mean, var, n)
        invstd = torch.rsqrt(var + self.eps).to(x.dtype)
        weight = self.weight if self.affine else torch.ones(c, dtype=x.dtype, device=x.device)
        bias = self.bias if self.affine else torch.zeros(c, dtype=x.dtype, device=x.device)
        return _SyncBatchNormFunction.apply(x, weight, bias, mean.to(x.dtype), invstd, n)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = var * (n / max(n - 1, 1))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
