"""The one training loop of every task: epochs and steps, progress, evaluation, checkpoints, exact resume, seeding,
early stopping, torchrun and a clean stop on Ctrl-C.

A task (engine.classification; detection in tasks.train) supplies what differs: its batches, its step, its
evaluation and its metrics (`TrainingTask`). The run folder's files live in engine.run_dir; the precision rules in
engine.device. One code path for 1 or N processes (torchrun): the distributed helpers are no-ops in one process.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from resnetkit import distributed
from resnetkit.checkpoint import save_checkpoint
from resnetkit.config import TrainConfig
from resnetkit.data.loader import mix_seed
from resnetkit.engine.ema import WeightEma
from resnetkit.engine.interrupt import InterruptFlag, graceful_interrupt
from resnetkit.engine.run_dir import RunFolder
from resnetkit.errors import NonFiniteLoss, TrainingInterrupted
from resnetkit.optim import build_optimizer, build_schedule, lr_factor

log = logging.getLogger(__name__)

LOG_EVERY = 20  # steps between progress-bar refreshes (each one syncs the host once)
# mix_seed tag of the global RNG's seed for a step (mixing's generator uses 7), so it never equals another stream's
STEP_RNG_STREAM = 11


@dataclass(frozen=True)
class StepInfo:
    """Where the run stands after an optimisation step, as step callbacks see it."""

    epoch: int
    batch: int  # batches of `epoch` done
    step: int
    rank: int
    restart_count: int


StepCallback = Callable[[StepInfo], None]


@dataclass
class RunResult:
    run_dir: Path
    history: list[dict[str, Any]]
    stopped: str
    best: dict[str, Any] | None = None
    steps: int = 0


@dataclass
class TrainState:
    """What a checkpoint must carry to continue the loop exactly where it stopped."""

    epoch: int = 0
    batch: int = 0  # next batch of `epoch`
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    stale: int = 0  # evaluations without improvement (early stopping)
    partial: dict[str, float] = field(default_factory=dict)  # the current epoch's training sums so far

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> TrainState:
        partial = dict(ckpt.get("partial") or {})
        if "done" in partial:  # detection checkpoints before the one loop counted the epoch's steps as "done"
            partial["steps"] = partial.pop("done")
        return cls(
            epoch=ckpt["epoch"],
            batch=ckpt.get("batch", 0),
            step=ckpt["step"],
            history=ckpt["history"],
            best=ckpt.get("best"),
            stale=ckpt.get("stale", 0),
            partial=partial,
        )


@dataclass(frozen=True)
class StepContext:
    """What a task's step works with: the model as it runs forward (compiled, DDP-wrapped), the model itself, the
    optimiser, and where the run stands (before the step)."""

    forward_model: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    state: TrainState


class TrainingTask:
    """What one task gives the loop. Subclasses set `classes`, `selection_key` and implement the methods below."""

    classes: list[str]
    selection_key: str  # the row entry best.pt and early stopping follow ("val_top1", "val_map")
    stop_check_every: int = LOG_EVERY  # steps between the processes' agreement on a Ctrl-C (torchrun)

    @property
    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    @property
    def images_per_step(self) -> int:
        """This process's images per step (the progress bar counts images)."""
        raise NotImplementedError

    def batches(self, epoch: int, start_batch: int) -> Iterable[Any]:
        """This process's batches of `epoch` from batch `start_batch` on, the same on every resume."""
        raise NotImplementedError

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        raise NotImplementedError

    def forward_model(self, model: nn.Module, device: torch.device, total_steps: int) -> nn.Module:
        """The model as the steps run it (compiled and/or wrapped in DistributedDataParallel)."""
        raise NotImplementedError

    def train_mode(self, model: nn.Module) -> None:
        model.train()

    def zero_sums(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The epoch's training sums before its first step (a task may add keys as its steps report them)."""
        return {}

    def step(self, batch: Any, ctx: StepContext) -> tuple[dict[str, torch.Tensor], int]:
        """One optimisation step: what it adds to the epoch's sums (tensors: no host sync needed), and its images."""
        raise NotImplementedError

    def train_metrics(self, sums: dict[str, float], seen: int, steps: int) -> dict[str, float]:
        """The epoch's training row entries from the sums over all processes, their images and steps."""
        raise NotImplementedError

    def running_loss(self, sums: dict[str, float], seen: int, steps: int) -> tuple[float, dict[str, str]]:
        """The mean training loss so far (checked for being finite) and what the progress bar shows."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """The held-out metrics of `model` (row entries), the same on every process."""
        raise NotImplementedError

    def checkpoint_fields(self) -> dict[str, Any]:
        """The task's own checkpoint fields (classes, preprocessing, the loss scale ...)."""
        return {"classes": self.classes}

    def restore(self, ckpt: dict[str, Any]) -> None:
        """The task's own state from a checkpoint (the loop restores weights, optimiser, schedule and position)."""

    def plot(self, history: list[dict[str, Any]], folder: RunFolder, cfg: TrainConfig) -> None:
        raise NotImplementedError

    def logged(self, key: str) -> bool:
        """Whether the epoch's log line shows row entry `key`."""
        return key.endswith("top1")


@dataclass
class _EpochSums:
    """This process's running training sums of the current epoch (tensors: no host sync per step)."""

    values: dict[str, torch.Tensor]
    seen: int
    steps: int
    t0: float
    data_wait: float = 0.0  # seconds this process waited for batches (decoding, augmentation, transfer)

    def add(self, values: dict[str, torch.Tensor], images: int) -> None:
        for key, value in values.items():
            if key in self.values:
                self.values[key] += value
            else:
                self.values[key] = value.clone()
        self.seen, self.steps = self.seen + images, self.steps + 1


class Trainer:
    """Holds the pieces of one run; `fit` runs the epochs. `callbacks` run after every step (tests use them to
    inject faults: a SIGINT, a lost worker)."""

    def __init__(
        self,
        cfg: TrainConfig,
        task: TrainingTask,
        model: nn.Module,
        device: torch.device,
        folder: RunFolder,
        env: distributed.DistEnv | None = None,
        callbacks: Sequence[StepCallback] = (),
    ) -> None:
        self.cfg, self.task, self.model, self.device, self.folder = cfg, task, model, device, folder
        self.env, self.callbacks = env or distributed.DistEnv(), list(callbacks)
        self.steps_per_epoch = task.steps_per_epoch
        planned = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(planned, cfg.max_steps) if cfg.max_steps else planned
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        warmup = cfg.warmup_steps or round(cfg.warmup_epochs * self.steps_per_epoch)
        self.optimizer = build_optimizer(cfg.optimizer, task.param_groups(model), cfg.lr, cfg.momentum, cfg.nesterov)
        factor = lr_factor(cfg.schedule, self.total_steps, warmup, cfg.milestones, cfg.warmup_constant_factor)
        self.scheduler = build_schedule(self.optimizer, factor)
        self.forward_model = task.forward_model(model, device, self.total_steps)
        self.ema = WeightEma(model, cfg.ema_decay, cfg.ema_every) if cfg.ema_decay else None
        self.state = TrainState()

    # --- checkpoints -----------------------------------------------------------------------------------------
    def _save(self, name: str) -> Path:
        """Checkpoint (rank 0 writes; every rank checks the weights, which DDP keeps identical)."""
        s = self.state
        # BatchNorm running statistics too: they overflow to inf a step before the weights do
        if not all(bool(torch.isfinite(t).all()) for t in (*self.model.parameters(), *self.model.buffers())):
            raise NonFiniteLoss(
                f"weights became non-finite by step {s.step}; {self._kept()}; try a lower --lr or --grad-clip"
            )
        path = self.folder.checkpoint(name)
        if not self.env.is_main:
            return path
        return save_checkpoint(
            path,
            self.model,
            **self.task.checkpoint_fields(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            epoch=s.epoch,
            batch=s.batch,
            step=s.step,
            history=s.history,
            best=s.best,
            stale=s.stale,
            partial=s.partial,
            config=self.cfg.to_dict(),
            ema=self.ema.state_dict() if self.ema else None,
        )

    def _kept(self) -> str:
        last = self.folder.checkpoint("last.pt")
        return f"kept the last good checkpoint {last}" if last.exists() else "no checkpoint was written"

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from `ckpt`: weights, optimiser, schedule, the task's state and the loop's position (the random
        state needs nothing: each step seeds it from the step, see `_step`)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.task.restore(ckpt)
        if self.ema is not None and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        self.folder.rewrite_metrics(ckpt["history"])
        self.state = TrainState.from_checkpoint(ckpt)
        # a run stopped by --max-steps closed its ragged last epoch: the steps a higher --max-steps adds begin the
        # next one, which ceil(total_steps / steps_per_epoch) epochs may not count (16 of 31 steps, then 19)
        left = max(0, self.total_steps - self.state.step)
        self.epochs = max(self.epochs, self.state.epoch + math.ceil(left / self.steps_per_epoch))
        log.info("resuming %s at epoch %d, step %d", self.folder.path, self.state.epoch + 1, self.state.step)

    # --- the loop --------------------------------------------------------------------------------------------
    def fit(self) -> RunResult:
        """The epochs; Ctrl-C (on any process) stops every process after the same step, and rank 0 saves a
        checkpoint from which `--resume` continues mid-epoch to the weights of a run that never stopped."""
        stopped = "completed"
        with graceful_interrupt() as interrupted:
            while self.state.epoch < self.epochs and stopped == "completed":
                stopped = self._train_epoch(interrupted)
                if stopped == "completed":
                    stopped = self._end_epoch()
        if stopped == "max_steps" and self.state.batch:
            self._end_epoch()  # the ragged last epoch still gets its evaluation and checkpoint
        if stopped == "interrupted":
            path = self._save("last.pt")
            raise TrainingInterrupted(
                f"interrupted at epoch {self.state.epoch + 1}, step {self.state.step}; checkpoint {path} is intact: "
                f"continue with `resnetkit train --resume {self.folder.path}`"
            )
        return RunResult(self.folder.path, self.state.history, stopped, self.state.best, self.state.step)

    def _train_epoch(self, interrupted: InterruptFlag) -> str:
        s = self.state
        self.task.train_mode(self.model)
        sums = self._resume_sums()
        bar = self._bar(s.batch)
        for batch in _waited_for(self.task.batches(s.epoch, s.batch), sums):
            self._step(batch, sums, bar)
            if s.step % LOG_EVERY == 0 or s.batch == self.steps_per_epoch:
                self._check_and_show(bar, sums)
            if self.cfg.checkpoint_every and s.step % self.cfg.checkpoint_every == 0 and s.batch < self.steps_per_epoch:
                s.partial = self._partial(sums)
                self._save("last.pt")
            info = StepInfo(s.epoch, s.batch, s.step, self.env.rank, self.env.restart_count)
            for callback in self.callbacks:
                callback(info)
            if self._stop_requested(interrupted.requested):
                bar.close()
                s.partial = self._partial(sums)
                return "interrupted"
            if s.step >= self.total_steps:
                break
        bar.close()
        self._finish_epoch_sums(sums)
        return "max_steps" if s.step >= self.total_steps and s.batch < self.steps_per_epoch else "completed"

    def _step(self, batch: Any, sums: _EpochSums, bar: tqdm) -> None:
        s = self.state
        # The global RNG (stochastic depth's masks, a detector's box samplers, on every device) is seeded from
        # (seed, rank, step) before each step: each process draws its own, and a run resumed or restarted at any
        # step draws exactly what an undisturbed run draws there, on CPU and CUDA alike (a saved CPU RNG state
        # covers neither the other ranks nor the GPU's generator).
        torch.manual_seed(mix_seed(self.cfg.seed, self.env.rank, s.step, STEP_RNG_STREAM))
        added, images = self.task.step(batch, StepContext(self.forward_model, self.model, self.optimizer, s))
        self.scheduler.step()
        sums.add(added, images)
        s.batch, s.step = s.batch + 1, s.step + 1
        if self.ema is not None:
            self.ema.update(self.model, s.step)
        bar.update(images)

    def _resume_sums(self) -> _EpochSums:
        """The epoch's sums so far: zero, or what a mid-epoch checkpoint recorded (rank 0 carries the global
        sums on; the other ranks start from zero)."""
        part = dict(self.state.partial)
        seconds = part.pop("time", 0.0)
        seen, steps = int(part.pop("seen", 0)), int(part.pop("steps", 0))
        values = self.task.zero_sums(self.device)
        for key, value in part.items():  # every process holds every key: the all-reduce sums them in one order
            zero = values.get(key, torch.zeros((), dtype=torch.float64, device=self.device))
            values[key] = torch.tensor(value if self.env.is_main else 0, dtype=zero.dtype, device=self.device)
        if not self.env.is_main:
            seen, steps = 0, 0
        return _EpochSums(values, seen, steps, time.perf_counter() - seconds)

    def _finish_epoch_sums(self, sums: _EpochSums) -> None:
        values, seen, steps = _global_sums(sums)
        elapsed = time.perf_counter() - sums.t0
        self._epoch_train = self.task.train_metrics(values, seen, steps) | {
            "train_time_s": elapsed,
            "data_wait_share": sums.data_wait / max(elapsed, 1e-9),  # this process's share waiting for input
            "train_images_per_s": seen / max(elapsed, 1e-9),
        }
        self.state.partial = {}

    def _bar(self, start_batch: int) -> tqdm:
        total = (self.steps_per_epoch - start_batch) * self.task.images_per_step
        show = self.cfg.progress and self.env.is_main
        desc = f"epoch {self.state.epoch + 1}/{self.epochs}"
        return tqdm(total=total, desc=desc, unit="img", unit_scale=True, leave=False, disable=None if show else True)

    def _partial(self, sums: _EpochSums) -> dict[str, float]:
        """The epoch's training sums so far (over all processes), kept in a mid-epoch checkpoint."""
        values, seen, steps = _global_sums(sums)
        return values | {"seen": seen, "steps": steps, "time": time.perf_counter() - sums.t0}

    def _stop_requested(self, local_flag: bool) -> bool:
        """Ctrl-C on any process stops all of them at the same step (checked every `stop_check_every` steps when
        several processes run, to keep the per-step path free of host synchronisation)."""
        if not self.env.enabled:
            return local_flag
        if self.state.step % self.task.stop_check_every and self.state.batch != self.steps_per_epoch:
            return False
        return distributed.any_process(local_flag, self.device)

    def _check_and_show(self, bar: tqdm, sums: _EpochSums) -> None:
        loss, postfix = self.task.running_loss(*_global_sums(sums))  # the one host sync per LOG_EVERY steps
        if not math.isfinite(loss):
            raise NonFiniteLoss(
                f"loss became non-finite at step {self.state.step} (epoch {self.state.epoch + 1}); {self._kept()}; "
                "try a lower --lr or --grad-clip"
            )
        bar.set_postfix(**postfix, lr=f"{self.scheduler.get_last_lr()[0]:.4f}")

    def _end_epoch(self) -> str:
        s = self.state
        row: dict[str, Any] = {"epoch": s.epoch + 1, "step": s.step, "lr": self.scheduler.get_last_lr()[0]}
        row.update(self._epoch_train)
        self._evaluate_into(row)
        s.history.append(row)
        s.epoch, s.batch = s.epoch + 1, 0
        improved = self._track_best(row)
        self.folder.append_metrics(row)
        self._save("last.pt")
        if improved:
            self._save("best.pt")
        self.task.plot(s.history, self.folder, self.cfg)
        scores = ", ".join(f"{k}={v:.4f}" for k, v in row.items() if self.task.logged(k))
        log.info("epoch %d: %s", row["epoch"], scores)
        if self.cfg.early_stopping and s.stale >= self.cfg.early_stopping:
            log.info("early stopping: no better %s for %d epochs", self.task.selection_key, s.stale)
            return "early_stopping"
        return "completed"

    def _evaluate_into(self, row: dict[str, Any]) -> None:
        """The task's held-out metrics (and the weight EMA's, prefixed ema_), the same on every process."""
        models = {"": self.model, "ema_": self.ema.module if self.ema is not None else None}
        for prefix, model in models.items():
            if model is None:
                continue
            distributed.broadcast_buffers(model)  # BatchNorm statistics of rank 0 on every rank, as saved
            row.update({f"{prefix}{k}": v for k, v in self.task.evaluate(model).items()})

    def _track_best(self, row: dict[str, Any]) -> bool:
        # the weights `eval` will use: the EMA's when the run keeps one
        key = f"{'ema_' if self.ema is not None else ''}{self.task.selection_key}"
        if key not in row:
            return False
        if self.state.best is None or row[key] > self.state.best[key]:
            self.state.best, self.state.stale = dict(row), 0
            return True
        self.state.stale += 1
        return False


def _waited_for(batches: Iterable[Any], sums: _EpochSums) -> Iterator[Any]:
    """`batches`, adding the time spent waiting for each one to `sums.data_wait`."""
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        sums.data_wait += time.perf_counter() - t0
        if batch is None:
            return
        yield batch


def _global_sums(sums: _EpochSums) -> tuple[dict[str, float], int, int]:
    """This epoch's sums, images and steps so far, summed over all processes (one all-reduce, keys in order)."""
    keys = sorted(sums.values)
    device = sums.values[keys[0]].device if keys else torch.device("cpu")
    counts = torch.tensor([float(sums.seen), float(sums.steps)], dtype=torch.float64, device=device)
    totals = torch.cat([torch.stack([sums.values[k].double() for k in keys]) if keys else counts[:0], counts])
    totals = distributed.all_reduce_sum(totals).tolist()
    return dict(zip(keys, totals[: len(keys)], strict=True)), int(totals[-2]), int(totals[-1])
