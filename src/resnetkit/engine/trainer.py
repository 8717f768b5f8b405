"""The epoch loop of one run: steps, progress, evaluation, checkpoints, early stopping and a clean stop on Ctrl-C.

The step itself lives in engine.loop; the run folder's files in engine.run_dir; the precision rules in
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
from resnetkit.compress.distill import Distillation
from resnetkit.config import TrainConfig
from resnetkit.data.factory import TrainingData
from resnetkit.data.loader import mix_seed
from resnetkit.data.stream import loader_for, stream_workers
from resnetkit.engine.device import compile_pays_off, make_grad_scaler, run_autocast_dtype
from resnetkit.engine.ema import WeightEma
from resnetkit.engine.fastpath import speed_up_for_training
from resnetkit.engine.finetune import finetune_param_groups, freeze_batchnorm
from resnetkit.engine.interrupt import InterruptFlag, graceful_interrupt
from resnetkit.engine.loop import EvalResult, Mixing, evaluate, train_step
from resnetkit.engine.run_dir import RunFolder
from resnetkit.errors import NonFiniteLoss, TrainingInterrupted
from resnetkit.optim import build_optimizer, build_schedule, lr_factor, param_groups

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
        keys = ("epoch", "batch", "step", "history", "best", "stale", "partial")
        return cls(**{k: ckpt[k] for k in keys})


@dataclass
class _EpochSums:
    """This process's running training sums of the current epoch (tensors: no host sync per step)."""

    loss: torch.Tensor
    correct: torch.Tensor
    seen: int
    t0: float
    data_wait: float = 0.0  # seconds this process waited for batches (decoding, augmentation, transfer)


class Trainer:
    """Holds the pieces of one run; `fit` runs the epochs. `callbacks` run after every step (tests use them to
    inject faults: a SIGINT, a lost worker); `distill` adds a teacher's soft targets to every step's loss."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: TrainingData,
        model: nn.Module,
        device: torch.device,
        folder: RunFolder,
        env: distributed.DistEnv | None = None,
        callbacks: Sequence[StepCallback] = (),
        distill: Distillation | None = None,
    ) -> None:
        self.cfg, self.data, self.model, self.device, self.folder = cfg, data, model, device, folder
        self.env, self.callbacks, self.distill = env or distributed.DistEnv(), list(callbacks), distill
        self._make_loaders()
        planned = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(planned, cfg.max_steps) if cfg.max_steps else planned
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        warmup = cfg.warmup_steps or round(cfg.warmup_epochs * self.steps_per_epoch)
        self.optimizer = _optimizer(model, cfg)
        factor = lr_factor(cfg.schedule, self.total_steps, warmup, cfg.milestones, cfg.warmup_constant_factor)
        self.scheduler = build_schedule(self.optimizer, factor)
        self.mixing = Mixing(cfg.mixup, cfg.cutmix) if (cfg.mixup or cfg.cutmix) else None
        compile_ = (
            cfg.compile if cfg.compile is not None else compile_pays_off(device, self.total_steps * cfg.batch_size)
        )
        self.forward_model = speed_up_for_training(model, compile_, wrap=lambda m: distributed.wrap_model(m, device))
        self.amp_dtype = run_autocast_dtype(cfg.amp, cfg.amp_dtype, device)
        self.scaler = make_grad_scaler(self.amp_dtype, device)
        self.ema = WeightEma(model, cfg.ema_decay, cfg.ema_every) if cfg.ema_decay else None
        self.state = TrainState()

    def _make_loaders(self) -> None:
        cfg, data = self.cfg, self.data
        shard = {"device": self.device, "rank": self.env.rank, "world_size": self.env.world_size}
        shard["dtype"] = getattr(torch, cfg.dtype)
        shard |= {"workers": stream_workers(cfg.workers), "strict": cfg.strict}  # streamed folders only
        self.train_loader = loader_for(
            data.train, data.preprocessing, batch_size=cfg.batch_size, train=True, seed=cfg.seed, **shard
        )
        self.eval_loaders = {
            name: loader_for(ds, data.preprocessing, batch_size=max(cfg.batch_size, 256), train=False, **shard)
            for name, ds in data.eval_splits().items()
        }
        self.steps_per_epoch = len(self.train_loader)

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
            classes=self.data.classes,
            preprocessing=self.data.preprocessing.to_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
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
        """Continue from `ckpt`: weights, optimiser, schedule, loss scale and the loop's position (the random state
        needs nothing: each step seeds it from the step, see `_step`)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):  # fp16 runs; checkpoints of bf16/fp32 runs hold an empty (disabled) state
            self.scaler.load_state_dict(ckpt["scaler"])
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
        self.model.train()
        if self.cfg.weights:  # frozen layers keep their pretrained statistics; --freeze-bn keeps them all
            freeze_batchnorm(self.model, only_frozen_params=not self.cfg.freeze_bn)
        sums = self._resume_sums()
        bar = self._bar(s.batch)
        for x, y in _waited_for(self.train_loader.epoch(s.epoch, s.batch), sums):
            self._step(x, y, sums)
            bar.update(y.shape[0])
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

    def _step(self, x: torch.Tensor, y: torch.Tensor, sums: _EpochSums) -> None:
        s, cfg = self.state, self.cfg
        # The global RNG (stochastic depth's masks, on every device) is seeded from (seed, rank, step) before each
        # step: each process draws its own masks, and a run resumed or restarted at any step draws exactly what an
        # undisturbed run draws there, on CPU and CUDA alike (a saved CPU RNG state covers neither the other
        # ranks nor the GPU's generator).
        torch.manual_seed(mix_seed(cfg.seed, self.env.rank, s.step, STEP_RNG_STREAM))
        gen = torch.Generator().manual_seed(mix_seed(cfg.seed, s.epoch, s.batch, 7)) if self.mixing else None
        loss, hits = train_step(
            self.forward_model,
            x,
            y,
            self.optimizer,
            label_smoothing=cfg.label_smoothing,
            mixing=self.mixing,
            gen=gen,
            grad_clip=cfg.grad_clip,
            amp_dtype=self.amp_dtype,
            scaler=self.scaler,
            distill=self.distill,
        )
        self.scheduler.step()
        sums.loss += loss * y.shape[0]
        sums.correct += hits
        sums.seen += y.shape[0]
        s.batch, s.step = s.batch + 1, s.step + 1
        if self.ema is not None:
            self.ema.update(self.model, s.step)

    def _resume_sums(self) -> _EpochSums:
        """The epoch's sums so far: zero, or what a mid-epoch checkpoint recorded (rank 0 carries the global
        sums on; the other ranks start from zero)."""
        part = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": self.state.partial.get("time", 0.0)}
        if self.env.is_main:
            part.update(self.state.partial)
        loss = torch.tensor(part["loss_sum"], device=self.device)
        correct = torch.tensor(int(part["correct"]), dtype=torch.int64, device=self.device)
        return _EpochSums(loss, correct, int(part["seen"]), time.perf_counter() - part["time"])

    def _finish_epoch_sums(self, sums: _EpochSums) -> None:
        loss_total, correct_total, seen = _global_sums(sums)
        elapsed = time.perf_counter() - sums.t0
        self._epoch_train = {
            "train_loss": loss_total / max(seen, 1),
            "train_top1": correct_total / max(seen, 1),
            "train_time_s": elapsed,
            "data_wait_share": sums.data_wait / max(elapsed, 1e-9),  # this process's share waiting for input
            "train_images_per_s": seen / max(elapsed, 1e-9),
        }
        self.state.partial = {}

    def _bar(self, start_batch: int) -> tqdm:
        total = (self.steps_per_epoch - start_batch) * self.train_loader.batch_size
        show = self.cfg.progress and self.env.is_main
        desc = f"epoch {self.state.epoch + 1}/{self.epochs}"
        return tqdm(total=total, desc=desc, unit="img", unit_scale=True, leave=False, disable=None if show else True)

    def _partial(self, sums: _EpochSums) -> dict[str, float]:
        """The epoch's training sums so far (over all processes), kept in a mid-epoch checkpoint."""
        loss_total, correct_total, seen_total = _global_sums(sums)
        elapsed = time.perf_counter() - sums.t0
        return {"loss_sum": loss_total, "correct": int(correct_total), "seen": seen_total, "time": elapsed}

    def _stop_requested(self, local_flag: bool) -> bool:
        """Ctrl-C on any process stops all of them at the same step (checked every LOG_EVERY steps when several
        processes run, to keep the per-step path free of host synchronisation)."""
        if not self.env.enabled:
            return local_flag
        if self.state.step % LOG_EVERY and self.state.batch != self.steps_per_epoch:
            return False
        return distributed.any_process(local_flag, self.device)

    def _check_and_show(self, bar: tqdm, sums: _EpochSums) -> None:
        loss_total, correct_total, seen = _global_sums(sums)
        loss = loss_total / seen  # the one host sync per LOG_EVERY steps
        if not math.isfinite(loss):
            raise NonFiniteLoss(
                f"loss became non-finite at step {self.state.step} (epoch {self.state.epoch + 1}); {self._kept()}; "
                "try a lower --lr or --grad-clip"
            )
        lr = self.scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{correct_total / seen:.3f}", lr=f"{lr:.4f}")

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
        self.folder.plot(s.history, title=f"{self.cfg.model} on {self.cfg.data}")
        log.info("epoch %d: %s", row["epoch"], ", ".join(f"{k}={v:.4f}" for k, v in row.items() if "top1" in k))
        if self.cfg.early_stopping and s.stale >= self.cfg.early_stopping:
            log.info("early stopping: no better %s for %d epochs", self.data.selection_split, s.stale)
            return "early_stopping"
        return "completed"

    def _evaluate_into(self, row: dict[str, Any]) -> None:
        """Each held-out split's metrics (and the weight EMA's, prefixed ema_), all-reduced over the processes."""
        models = {"": self.model, "ema_": self.ema.module if self.ema is not None else None}
        for prefix, model in models.items():
            if model is None:
                continue
            distributed.broadcast_buffers(model)  # BatchNorm statistics of rank 0 on every rank, as saved
            for name, loader in self.eval_loaders.items():
                result: EvalResult = evaluate(model, loader, len(self.data.classes))
                key = f"{prefix}{name}"
                row.update({f"{key}_loss": result.loss, f"{key}_top1": result.top1, f"{key}_top5": result.top5})
                row[f"{key}_n"] = result.n

    def _track_best(self, row: dict[str, Any]) -> bool:
        # the weights `eval` will use: the EMA's when the run keeps one
        key = f"{'ema_' if self.ema is not None else ''}{self.data.selection_split}_top1"
        if key not in row:
            return False
        if self.state.best is None or row[key] > self.state.best[key]:
            self.state.best, self.state.stale = dict(row), 0
            return True
        self.state.stale += 1
        return False


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if not cfg.weights:
        groups = param_groups(model, cfg.weight_decay, cfg.no_decay_bn_bias)
    else:
        groups = finetune_param_groups(model, cfg.lr, cfg.backbone_lr_mult, cfg.weight_decay, cfg.no_decay_bn_bias)
    return build_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum, cfg.nesterov)


def _waited_for(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]], sums: _EpochSums
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`batches`, adding the time spent waiting for each one to `sums.data_wait`."""
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        sums.data_wait += time.perf_counter() - t0
        if batch is None:
            return
        yield batch


def _global_sums(sums: _EpochSums) -> tuple[float, float, int]:
    """This epoch's loss sum, correct count and images so far, summed over all processes."""
    device = sums.loss.device
    totals = torch.stack([sums.loss.double(), sums.correct.double(), torch.tensor(float(sums.seen), device=device)])
    totals = distributed.all_reduce_sum(totals).tolist()
    return totals[0], totals[1], int(totals[2])
