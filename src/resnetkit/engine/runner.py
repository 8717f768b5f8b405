"""A training run from a TrainConfig: data, model and run folder set up, then the Trainer's loop.

Each job has its own home: the device and precision rules (engine.device), resuming and torchrun restarts
(engine.resume), the run folder's files (engine.run_dir), Ctrl-C (engine.interrupt) and the epoch loop
(engine.trainer).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetkit import distributed
from resnetkit.checkpoint import load_checkpoint
from resnetkit.config import ConfigError, TrainConfig
from resnetkit.data.factory import TrainingData, load_training_data
from resnetkit.engine.classification import classification_trainer
from resnetkit.engine.device import default_amp, resolve_device
from resnetkit.engine.finetune import apply_strategy
from resnetkit.engine.resume import restart_point, resumed_config
from resnetkit.engine.run_dir import RunFolder, choose_run_dir, provenance
from resnetkit.engine.teacher import distillation_for
from resnetkit.engine.trainer import RunResult, StepCallback, StepInfo, Trainer
from resnetkit.models import create_model, resolve_data_config

log = logging.getLogger(__name__)

__all__ = ["RunResult", "RunStart", "StepCallback", "StepInfo", "resolve_device", "run_training", "started_run"]


def run_training(
    cfg: TrainConfig,
    resume: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    callbacks: Sequence[StepCallback] = (),
) -> RunResult:
    """Train as `cfg` says (or continue the run at `resume`), writing everything into the run folder.

    Under torchrun every process calls this with the same arguments; rank 0 alone writes the run folder. After
    a torchrun restart (--max-restarts) the run continues from the `out` folder's last checkpoint. `callbacks`
    are called after every optimisation step with a `StepInfo`.
    """
    with started_run(cfg, resume, overrides) as start:
        cfg, ckpt, device, env = start.cfg, start.ckpt, start.device, start.env
        precision = "autocast: asked for (--amp)" if cfg.amp else "fp32: asked for (--no-amp)"
        if cfg.amp is None:  # decided once, by rank 0, and kept in the run's config: a resumed run keeps it
            amp, precision = distributed.decided_on_main(lambda: default_amp(device, cfg.dtype))
            cfg = dataclasses.replace(cfg, amp=amp)
            if env.is_main:
                log.info("precision: %s (--amp / --no-amp to choose)", precision)
        torch.manual_seed(cfg.seed)
        data = _load_data_once(cfg, env)
        model = _build_model(cfg, data, device, env, pretrained=ckpt is None).to(device, getattr(torch, cfg.dtype))
        distill = distillation_for(cfg, data.classes, device)
        trainer = classification_trainer(cfg, data, model, device, start.folder, env, callbacks, distill)
        if ckpt is not None:
            trainer.restore(ckpt)
        else:
            start.folder.start(cfg, _run_record(cfg, data, trainer) | {"precision": precision})
        return trainer.fit()


@dataclasses.dataclass(frozen=True)
class RunStart:
    """What every training run begins with: its config (a resumed run's own), the checkpoint it continues from (or
    None), the device, the process group and the run folder (not yet written)."""

    cfg: TrainConfig
    ckpt: dict[str, Any] | None
    device: torch.device
    env: distributed.DistEnv
    folder: RunFolder


@contextmanager
def started_run(
    cfg: TrainConfig, resume: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Iterator[RunStart]:
    """The set-up every task's training shares (classification here, detection in tasks.train), so the two cannot
    drift: `--resume`'s checkpoint and its config, the global batch checked against the processes before joining
    them, the device, the process group (for the block), a torchrun restart's checkpoint, threads, the run folder."""
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        cfg = resumed_config(ckpt, overrides or {})
    launch = distributed.env_from_os()
    _check_world_size(cfg, launch)  # before joining: a wrong batch fails at once, not after the rendezvous
    device = resolve_device(cfg.device, launch.local_rank)
    with distributed.process_group(device.type, cfg.dist_timeout) as env:
        restart = restart_point(cfg, env) if ckpt is None else None
        if restart is not None:
            ckpt = load_checkpoint(restart)
            cfg = resumed_config(ckpt, {})
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        resuming = ckpt is not None
        folder = RunFolder(distributed.decided_on_main(lambda: choose_run_dir(cfg, resuming)), env.is_main)
        yield RunStart(cfg, ckpt, device, env, folder)


def _load_data_once(cfg: TrainConfig, env: distributed.DistEnv) -> TrainingData:
    """Rank 0 loads first (a download or a decoded-image cache is written once), then the others read it."""
    if not env.is_main:
        distributed.barrier()
    data = load_training_data(cfg, resolve_data_config(cfg.model, cfg.weights, **cfg.model_kwargs))
    if env.is_main:
        distributed.barrier()
    if env.enabled and len(data.train) < cfg.batch_size:
        raise ConfigError(
            f"the training set has {len(data.train)} images, fewer than the global batch {cfg.batch_size}: "
            "lower --batch-size"
        )
    return data


def _build_model(
    cfg: TrainConfig, data: TrainingData, device: torch.device, env: distributed.DistEnv, pretrained: bool
) -> nn.Module:
    """The registered model for the data's classes, with the fine-tuning policy applied. A resumed run restores
    its own weights, so `pretrained` is False then."""
    weights = cfg.weights if pretrained else None
    model = create_model(cfg.model, num_classes=len(data.classes), weights=weights, **cfg.model_kwargs)
    apply_strategy(model, cfg.finetune, cfg.trainable_stages)
    if cfg.sync_bn and env.enabled:
        model = distributed.convert_sync_batchnorm(model, device.type)
    return model


def _check_world_size(cfg: TrainConfig, env: distributed.DistEnv) -> None:
    if cfg.batch_size % env.world_size:
        raise ConfigError(
            f"batch_size {cfg.batch_size} (the global batch) is not divisible by the {env.world_size} processes; "
            f"choose a multiple of {env.world_size}"
        )


def _run_record(cfg: TrainConfig, data: TrainingData, trainer: Trainer) -> dict[str, Any]:
    """run.json: what was trained on (each split's source, size and held-out files) and how."""
    return {
        "classes": data.classes,
        "preprocessing": data.preprocessing.to_dict(),
        "datasets": {k: provenance(v.info) | {"n": len(v)} for k, v in data.splits().items()},
        "steps_per_epoch": trainer.steps_per_epoch,
        "total_steps": trainer.total_steps,
        "device": str(trainer.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "world_size": trainer.env.world_size,
        "batch_size_per_process": cfg.batch_size // trainer.env.world_size,
    }
