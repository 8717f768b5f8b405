"""A training run from a TrainConfig: data, model, optimiser, the loop, the run folder, resume and interrupts."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from resnetkit import distributed
from resnetkit.checkpoint import load_checkpoint, save_checkpoint
from resnetkit.config import ConfigError, TrainConfig, dump_yaml
from resnetkit.data.factory import TrainingData, load_training_data
from resnetkit.data.loader import BatchLoader, _mix
from resnetkit.engine.fastpath import speed_up_for_training
from resnetkit.engine.finetune import apply_strategy, finetune_param_groups, freeze_batchnorm
from resnetkit.engine.loop import EvalResult, Mixing, evaluate, train_step
from resnetkit.errors import NonFiniteLoss, ResnetkitError, TrainingInterrupted
from resnetkit.models import create_model
from resnetkit.optim import build_schedule, build_sgd, lr_factor
from resnetkit.plots import plot_training_curves
from resnetkit.weights.registry import get_weights, is_weights_name

log = logging.getLogger(__name__)

# Flags a resumed run may change; everything else must stay as the checkpoint recorded it.
RESUME_OVERRIDABLE = {
    "epochs", "max_steps", "progress", "device", "threads", "checkpoint_every", "early_stopping", "dist_timeout",
}  # fmt: skip
INTERRUPT_ENV = "RESNETKIT_INTERRUPT_AT_STEP"  # fault injection for tests: behave as if Ctrl-C after step N
# fault injection for torchrun --max-restarts tests: rank RESNETKIT_KILL_RANK (default 1) dies by SIGKILL after
# step N of the first attempt, as a lost worker would
KILL_ENV, KILL_RANK_ENV = "RESNETKIT_KILL_AT_STEP", "RESNETKIT_KILL_RANK"
# A compile costs about a minute here; below this many training images it would not pay for itself.
COMPILE_AFTER_IMAGES = 200_000
LOG_EVERY = 20  # steps between progress-bar refreshes (each one syncs the host once)


@dataclass
class RunResult:
    run_dir: Path
    history: list[dict[str, Any]]
    stopped: str
    best: dict[str, Any] | None = None
    steps: int = 0


@dataclass
class _State:
    epoch: int = 0
    batch: int = 0  # next batch of `epoch`
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    stale: int = 0  # evaluations without improvement (early stopping)
    partial: dict[str, float] = field(default_factory=dict)  # the current epoch's training sums so far


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


def run_training(
    cfg: TrainConfig, resume: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> RunResult:
    """Train as `cfg` says (or continue the run at `resume`), writing everything into the run folder.

    Under torchrun every process calls this with the same arguments; rank 0 alone writes the run folder. After
    a torchrun restart (--max-restarts) the run continues from the `out` folder's last checkpoint.
    """
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        cfg = _resumed_config(ckpt, overrides or {})
    launch = distributed.env_from_os()
    _check_world_size(cfg, launch)  # before joining: a wrong batch fails at once, not after the rendezvous
    device = resolve_device(cfg.device, launch.local_rank)
    with distributed.process_group(device.type, cfg.dist_timeout) as env:
        restart = _restart_point(cfg, env) if ckpt is None else None
        if restart is not None:
            ckpt = load_checkpoint(restart)
            cfg = _resumed_config(ckpt, {})
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        run_dir = Path(_on_main_process(lambda: str(_run_dir(cfg, ckpt))))
        torch.manual_seed(cfg.seed)
        data = _load_data_once(cfg, env)
        if env.enabled and len(data.train) < cfg.batch_size:
            raise ConfigError(
                f"the training set has {len(data.train)} images, fewer than the global batch {cfg.batch_size}: "
                "lower --batch-size"
            )
        weights = None if ckpt is not None else cfg.weights  # a resumed run restores its own weights
        model = create_model(cfg.model, num_classes=len(data.classes), weights=weights, **cfg.model_kwargs)
        apply_strategy(model, cfg.finetune, cfg.trainable_stages)
        if cfg.sync_bn and env.enabled:
            model = distributed.convert_sync_batchnorm(model, device.type)
        model = model.to(device)
        trainer = _Trainer(cfg, data, model, device, run_dir, env)
        if ckpt is not None:
            trainer.restore(ckpt)
        elif env.is_main:
            _write_run_files(run_dir, cfg, data, trainer)
        return trainer.fit()


def _load_data_once(cfg: TrainConfig, env: distributed.DistEnv) -> TrainingData:
    """Rank 0 loads first (a download or a decoded-image cache is written once), then the others read it."""
    if not env.is_main:
        distributed.barrier()
    data = load_training_data(cfg, _model_data_config(cfg))
    if env.is_main:
        distributed.barrier()
    return data


def _restart_point(cfg: TrainConfig, env: distributed.DistEnv) -> Path | None:
    """After torchrun restarted the workers, the run folder whose last checkpoint to continue from."""
    if env.restart_count == 0:
        return None
    if not cfg.out:
        log.warning("restarted by torchrun, but without --out there is no run folder to continue: starting anew")
        return None
    last = Path(cfg.out) / "checkpoints" / "last.pt"
    if not _on_main_process(last.is_file):
        return None  # lost before its first checkpoint: start again
    log.info("restart %d: continuing from %s", env.restart_count, last)
    return last


def _check_world_size(cfg: TrainConfig, env: distributed.DistEnv) -> None:
    if cfg.batch_size % env.world_size:
        raise ConfigError(
            f"batch_size {cfg.batch_size} (the global batch) is not divisible by the {env.world_size} processes; "
            f"choose a multiple of {env.world_size}"
        )


def _on_main_process(fn: Any) -> Any:
    """fn() on rank 0, its result (or its user error) on every rank, so all processes decide alike."""
    result, error = None, None
    if distributed.rank() == 0:
        try:
            result = fn()
        except ResnetkitError as e:
            error = e
    result, error = distributed.broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def _resumed_config(ckpt: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    saved = dict(ckpt["config"])
    changed = {k for k, v in overrides.items() if v is not None and saved.get(k) != v}
    refused = sorted(changed - RESUME_OVERRIDABLE)
    if refused:
        raise ConfigError(
            f"cannot change {', '.join(refused)} when resuming (only {', '.join(sorted(RESUME_OVERRIDABLE))})"
        )
    saved.update({k: overrides[k] for k in changed})
    saved["out"] = str(Path(ckpt["path"]).parent.parent)
    return TrainConfig.from_dict(saved, source=ckpt["path"])


def _model_data_config(cfg: TrainConfig) -> Any:
    """How inputs are prepared: as the registered weights were trained, else the architecture's default."""
    if cfg.weights and is_weights_name(cfg.weights):
        in_chans = cfg.model_kwargs.get("in_chans", 3)
        return get_weights(cfg.weights).data_config.with_channels(in_chans)
    with torch.device("meta"):
        return create_model(cfg.model, **cfg.model_kwargs).default_cfg


def _run_dir(cfg: TrainConfig, ckpt: dict[str, Any] | None) -> Path:
    if cfg.out:
        run_dir = Path(cfg.out)
    else:
        run_dir = Path("runs") / f"{cfg.model}-{cfg.data}-{time.strftime('%Y%m%d-%H%M%S')}"
    if ckpt is None and (run_dir / "checkpoints" / "last.pt").exists():
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    return run_dir  # created by _write_run_files once data and model are ready: a failed start leaves no folder


def _write_run_files(run_dir: Path, cfg: TrainConfig, data: TrainingData, trainer: _Trainer) -> None:
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg.to_dict(), run_dir / "config.yaml")
    info = {
        "classes": data.classes,
        "preprocessing": data.preprocessing.to_dict(),
        "datasets": {k: _provenance(v.info) | {"n": len(v)} for k, v in data.splits().items()},
        "steps_per_epoch": trainer.steps_per_epoch,
        "total_steps": trainer.total_steps,
        "device": str(trainer.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "world_size": trainer.env.world_size,
        "batch_size_per_process": cfg.batch_size // trainer.env.world_size,
    }
    (run_dir / "run.json").write_text(json.dumps(info, indent=2, default=str))
    (run_dir / "metrics.jsonl").write_text("")


def _provenance(info: dict[str, Any]) -> dict[str, Any]:
    """A dataset's record for run.json, without the full per-file listing (the held-out list stays)."""
    return {k: v for k, v in info.items() if k != "files"}


class _Trainer:
    """Holds the pieces of one run; `fit` is the epoch loop, the step itself lives in engine.loop."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: TrainingData,
        model: nn.Module,
        device: torch.device,
        run_dir: Path,
        env: distributed.DistEnv | None = None,
    ):
        self.cfg, self.data, self.model, self.device, self.run_dir = cfg, data, model, device, run_dir
        self.env = env or distributed.DistEnv()
        shard = {"device": device, "rank": self.env.rank, "world_size": self.env.world_size}
        self.train_loader = BatchLoader(
            data.train, data.preprocessing, batch_size=cfg.batch_size, train=True, seed=cfg.seed, **shard
        )
        self.eval_loaders = {
            name: BatchLoader(ds, data.preprocessing, batch_size=max(cfg.batch_size, 256), train=False, **shard)
            for name, ds in data.eval_splits().items()
        }
        self.steps_per_epoch = len(self.train_loader)
        planned = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(planned, cfg.max_steps) if cfg.max_steps else planned
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        warmup = cfg.warmup_steps or round(cfg.warmup_epochs * self.steps_per_epoch)
        self.optimizer = _optimizer(model, cfg)
        factor = lr_factor(cfg.schedule, self.total_steps, warmup, cfg.milestones, cfg.warmup_constant_factor)
        self.scheduler = build_schedule(self.optimizer, factor)
        self.mixing = Mixing(cfg.mixup, cfg.cutmix) if (cfg.mixup or cfg.cutmix) else None
        compile_ = cfg.compile if cfg.compile is not None else self._compile_pays_off()
        self.forward_model = speed_up_for_training(model, compile_, wrap=lambda m: distributed.wrap_model(m, device))
        self.amp_dtype = _amp_dtype(cfg.amp, device)
        self.state = _State()
        self.interrupt_at = int(os.environ.get(INTERRUPT_ENV, "0") or 0)
        killed_rank = int(os.environ.get(KILL_RANK_ENV, "1") or 1)
        mine = self.env.rank == killed_rank and self.env.restart_count == 0
        self.kill_at = int(os.environ.get(KILL_ENV, "0") or 0) if mine else 0

    def _compile_pays_off(self) -> bool:
        """Measured on the 2-core CPU (benchmarks/RESULTS.md): the compiled ResNet-20 training step ran slower
        than the eager channels_last one (370 vs 399 images/s), so the default compiles only on CUDA, and only
        for runs long enough to repay the compile time."""
        return self.device.type == "cuda" and self.total_steps * self.cfg.batch_size >= COMPILE_AFTER_IMAGES

    # --- checkpoints -----------------------------------------------------------------------------------------
    def _save(self, name: str) -> Path:
        """Checkpoint (rank 0 writes; every rank checks the weights, which DDP keeps identical)."""
        s = self.state
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise NonFiniteLoss(
                f"weights became non-finite by step {s.step}; {self._kept()}; try a lower --lr or --grad-clip"
            )
        path = self.run_dir / "checkpoints" / name
        if not self.env.is_main:
            return path
        return save_checkpoint(
            self.run_dir / "checkpoints" / name,
            self.model,
            classes=self.data.classes,
            preprocessing=self.data.preprocessing.to_dict(),
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
            rng=torch.get_rng_state(),
        )

    def _kept(self) -> str:
        last = self.run_dir / "checkpoints" / "last.pt"
        return f"kept the last good checkpoint {last}" if last.exists() else "no checkpoint was written"

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"])
        if self.env.enabled:  # each process its own stream (e.g. stochastic depth), reproducible from the step
            torch.manual_seed(_mix(self.cfg.seed, self.env.rank, ckpt["step"]))
        if self.env.is_main:  # rows logged after this checkpoint (a worker lost mid-epoch) are logged again
            rows = "".join(json.dumps(row) + "\n" for row in ckpt["history"])
            (self.run_dir / "metrics.jsonl").write_text(rows)
        self.state = _State(
            ckpt["epoch"],
            ckpt["batch"],
            ckpt["step"],
            list(ckpt["history"]),
            ckpt["best"],
            ckpt["stale"],
            ckpt["partial"],
        )
        log.info("resuming %s at epoch %d, step %d", self.run_dir, self.state.epoch + 1, self.state.step)

    # --- the loop --------------------------------------------------------------------------------------------
    def fit(self) -> RunResult:
        if self.env.enabled and self.state.step == 0:
            torch.manual_seed(_mix(self.cfg.seed, self.env.rank, 0))
        stopped = "completed"
        with _graceful_interrupt() as interrupted:
            while self.state.epoch < self.epochs and stopped == "completed":
                stopped = self._train_epoch(interrupted)
                if stopped in ("completed", "max_steps"):
                    stopped = self._end_epoch() if stopped == "completed" else stopped
        if stopped == "max_steps" and self.state.batch:
            self._end_epoch()  # the ragged last epoch still gets its evaluation and checkpoint
        if stopped == "interrupted":
            path = self._save("last.pt")
            raise TrainingInterrupted(
                f"interrupted at epoch {self.state.epoch + 1}, step {self.state.step}; checkpoint {path} is intact: "
                f"continue with `resnetkit train --resume {self.run_dir}`"
            )
        return RunResult(self.run_dir, self.state.history, stopped, self.state.best, self.state.step)

    def _train_epoch(self, interrupted: dict[str, bool]) -> str:
        s, cfg = self.state, self.cfg
        self.model.train()
        if self.cfg.weights:  # frozen layers keep their pretrained statistics; --freeze-bn keeps them all
            freeze_batchnorm(self.model, only_frozen_params=not self.cfg.freeze_bn)
        part = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": s.partial.get("time", 0.0)}
        if self.env.is_main:  # the saved sums are global: one process carries them on
            part.update(s.partial)
        loss_sum = torch.tensor(part["loss_sum"], device=self.device)
        correct = torch.tensor(int(part["correct"]), dtype=torch.int64, device=self.device)
        seen, t0 = int(part["seen"]), time.perf_counter() - part["time"]
        bar = self._bar(s.batch)
        for x, y in self.train_loader.epoch(s.epoch, s.batch):
            gen = torch.Generator().manual_seed(_mix(cfg.seed, s.epoch, s.batch, 7)) if self.mixing else None
            loss, hits = train_step(
                self.forward_model, x, y, self.optimizer, label_smoothing=cfg.label_smoothing, mixing=self.mixing,
                gen=gen, grad_clip=cfg.grad_clip, amp_dtype=self.amp_dtype,
            )  # fmt: skip
            self.scheduler.step()
            loss_sum += loss * y.shape[0]
            correct += hits
            seen += y.shape[0]
            s.batch, s.step = s.batch + 1, s.step + 1
            bar.update(y.shape[0])
            if s.step % LOG_EVERY == 0 or s.batch == self.steps_per_epoch:
                self._check_and_show(bar, loss_sum, correct, seen)
            if cfg.checkpoint_every and s.step % cfg.checkpoint_every == 0 and s.batch < self.steps_per_epoch:
                s.partial = self._partial(loss_sum, correct, seen, t0)
                self._save("last.pt")
            if s.step == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # fault injection: a lost worker (RESNETKIT_KILL_AT_STEP)
            if self._stop_requested(interrupted["flag"]) or s.step == self.interrupt_at:
                bar.close()
                s.partial = self._partial(loss_sum, correct, seen, t0)
                return "interrupted"
            if s.step >= self.total_steps:
                break
        bar.close()
        loss_total, correct_total, seen = _global_sums(loss_sum, correct, seen)
        self._epoch_train = {"train_loss": loss_total / max(seen, 1), "train_top1": correct_total / max(seen, 1)}
        self._epoch_train["train_time_s"] = time.perf_counter() - t0
        self._epoch_train["train_images_per_s"] = seen / max(time.perf_counter() - t0, 1e-9)
        s.partial = {}
        return "max_steps" if s.step >= self.total_steps and s.batch < self.steps_per_epoch else "completed"

    def _bar(self, start_batch: int) -> tqdm:
        total = (self.steps_per_epoch - start_batch) * self.train_loader.batch_size
        desc = f"epoch {self.state.epoch + 1}/{self.epochs}"
        return tqdm(
            total=total,
            desc=desc,
            unit="img",
            unit_scale=True,
            leave=False,
            disable=None if self.cfg.progress and self.env.is_main else True,
        )

    def _partial(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, t0: float) -> dict[str, float]:
        """The epoch's training sums so far (over all processes), kept in a mid-epoch checkpoint."""
        loss_total, correct_total, seen_total = _global_sums(loss_sum, correct, seen)
        elapsed = time.perf_counter() - t0
        return {"loss_sum": loss_total, "correct": int(correct_total), "seen": seen_total, "time": elapsed}

    def _stop_requested(self, local_flag: bool) -> bool:
        """Ctrl-C on any process stops all of them at the same step (checked every LOG_EVERY steps when several
        processes run, to keep the per-step path free of host synchronisation)."""
        if not self.env.enabled:
            return local_flag
        if self.state.step % LOG_EVERY and self.state.batch != self.steps_per_epoch:
            return False
        return distributed.any_process(local_flag, self.device)

    def _check_and_show(self, bar: tqdm, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> None:
        loss_total, correct_total, seen = _global_sums(loss_sum, correct, seen)
        loss = loss_total / seen  # the one host sync per LOG_EVERY steps
        if not math.isfinite(loss):
            raise NonFiniteLoss(
                f"loss became non-finite at step {self.state.step} (epoch {self.state.epoch + 1}); {self._kept()}; "
                "try a lower --lr or --grad-clip"
            )
        bar.set_postfix(
            loss=f"{loss:.3f}", acc=f"{correct_total / seen:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.4f}"
        )

    def _end_epoch(self) -> str:
        s = self.state
        row: dict[str, Any] = {"epoch": s.epoch + 1, "step": s.step, "lr": self.scheduler.get_last_lr()[0]}
        row.update(self._epoch_train)
        distributed.broadcast_buffers(self.model)  # BatchNorm statistics of rank 0 on every rank, as saved
        for name, loader in self.eval_loaders.items():
            result: EvalResult = evaluate(self.model, loader, len(self.data.classes))  # all-reduced over ranks
            row.update({f"{name}_loss": result.loss, f"{name}_top1": result.top1, f"{name}_top5": result.top5})
            row[f"{name}_n"] = result.n
        s.history.append(row)
        s.epoch, s.batch = s.epoch + 1, 0
        improved = self._track_best(row)
        if self.env.is_main:
            with (self.run_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
        self._save("last.pt")
        if improved:
            self._save("best.pt")
        if self.env.is_main:
            plot_training_curves(s.history, self.run_dir / "curves.png", title=f"{self.cfg.model} on {self.cfg.data}")
        log.info("epoch %d: %s", row["epoch"], ", ".join(f"{k}={v:.4f}" for k, v in row.items() if "top1" in k))
        if self.cfg.early_stopping and s.stale >= self.cfg.early_stopping:
            log.info("early stopping: no better %s for %d epochs", self.data.selection_split, s.stale)
            return "early_stopping"
        return "completed"

    def _track_best(self, row: dict[str, Any]) -> bool:
        key = f"{self.data.selection_split}_top1"
        if key not in row:
            return False
        if self.state.best is None or row[key] > self.state.best[key]:
            self.state.best, self.state.stale = dict(row), 0
            return True
        self.state.stale += 1
        return False


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    if not cfg.weights:
        return build_sgd(model, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov, cfg.no_decay_bn_bias)
    groups = finetune_param_groups(model, cfg.lr, cfg.backbone_lr_mult, cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


def _global_sums(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> tuple[float, float, int]:
    """This epoch's loss sum, correct count and images so far, summed over all processes."""
    totals = torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(seen), device=loss_sum.device)])
    totals = distributed.all_reduce_sum(totals).tolist()
    return totals[0], totals[1], int(totals[2])


def _amp_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the device supports it (CUDA with bf16, or CPU when asked for explicitly)."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


@contextmanager
def _graceful_interrupt() -> Iterator[dict[str, bool]]:
    """First Ctrl-C: finish the current step, checkpoint and stop. Second Ctrl-C: stop at once."""
    flag = {"flag": False}

    def handler(signum: int, frame: Any) -> None:
        if flag["flag"]:
            raise KeyboardInterrupt
        flag["flag"] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
