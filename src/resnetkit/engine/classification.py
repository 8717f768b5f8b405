"""Image classification as a task of the one training loop (engine.trainer): batches from the data's loaders, the
step (mixing, label smoothing, autocast, loss scaling, distillation), top-1/top-5 on each held-out split."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from resnetkit import distributed
from resnetkit.compress.distill import Distillation
from resnetkit.config import TrainConfig
from resnetkit.data.factory import TrainingData
from resnetkit.data.loader import mix_seed
from resnetkit.data.stream import loader_for, stream_workers
from resnetkit.engine.device import compile_pays_off, make_grad_scaler, run_autocast_dtype
from resnetkit.engine.fastpath import speed_up_for_training
from resnetkit.engine.finetune import finetune_param_groups, freeze_batchnorm
from resnetkit.engine.loop import Mixing, evaluate, train_step
from resnetkit.engine.run_dir import RunFolder
from resnetkit.engine.trainer import StepCallback, StepContext, Trainer, TrainingTask
from resnetkit.optim import param_groups

MIXING_RNG_STREAM = 7  # mix_seed tag of a batch's mixing generator


class ClassificationTask(TrainingTask):
    """One classification run's data, precision and step. `distill` adds a teacher's soft targets to every step's
    loss (compress.distill)."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: TrainingData,
        device: torch.device,
        env: distributed.DistEnv,
        distill: Distillation | None = None,
    ) -> None:
        self.cfg, self.data, self.device, self.env, self.distill = cfg, data, device, env, distill
        self.classes = data.classes
        self.selection_key = f"{data.selection_split}_top1"
        shard = {"device": device, "rank": env.rank, "world_size": env.world_size, "dtype": getattr(torch, cfg.dtype)}
        shard |= {"workers": stream_workers(cfg.workers), "strict": cfg.strict}  # streamed folders only
        self.train_loader = loader_for(
            data.train, data.preprocessing, batch_size=cfg.batch_size, train=True, seed=cfg.seed, **shard
        )
        self.eval_loaders = {
            name: loader_for(ds, data.preprocessing, batch_size=max(cfg.batch_size, 256), train=False, **shard)
            for name, ds in data.eval_splits().items()
        }
        self.mixing = Mixing(cfg.mixup, cfg.cutmix) if (cfg.mixup or cfg.cutmix) else None
        self.amp_dtype = run_autocast_dtype(cfg.amp, cfg.amp_dtype, device)
        self.scaler = make_grad_scaler(self.amp_dtype, device)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    @property
    def images_per_step(self) -> int:
        return self.train_loader.batch_size

    def batches(self, epoch: int, start_batch: int) -> Iterable[Any]:
        return self.train_loader.epoch(epoch, start_batch)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        cfg = self.cfg
        if not cfg.weights:
            return param_groups(model, cfg.weight_decay, cfg.no_decay_bn_bias)
        return finetune_param_groups(model, cfg.lr, cfg.backbone_lr_mult, cfg.weight_decay, cfg.no_decay_bn_bias)

    def forward_model(self, model: nn.Module, device: torch.device, total_steps: int) -> nn.Module:
        cfg = self.cfg
        compile_ = cfg.compile if cfg.compile is not None else compile_pays_off(device, total_steps * cfg.batch_size)
        return speed_up_for_training(model, compile_, wrap=lambda m: distributed.wrap_model(m, device))

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        if self.cfg.weights:  # frozen layers keep their pretrained statistics; --freeze-bn keeps them all
            freeze_batchnorm(model, only_frozen_params=not self.cfg.freeze_bn)

    def zero_sums(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {"loss_sum": torch.tensor(0.0, device=device), "correct": torch.tensor(0, device=device)}

    def step(self, batch: Any, ctx: StepContext) -> tuple[dict[str, torch.Tensor], int]:
        x, y = batch
        cfg, s = self.cfg, ctx.state
        seed = mix_seed(cfg.seed, s.epoch, s.batch, MIXING_RNG_STREAM)
        loss, hits = train_step(
            ctx.forward_model,
            x,
            y,
            ctx.optimizer,
            label_smoothing=cfg.label_smoothing,
            mixing=self.mixing,
            gen=torch.Generator().manual_seed(seed) if self.mixing else None,
            grad_clip=cfg.grad_clip,
            amp_dtype=self.amp_dtype,
            scaler=self.scaler,
            distill=self.distill,
        )
        return {"loss_sum": loss * y.shape[0], "correct": hits}, y.shape[0]

    def train_metrics(self, sums: dict[str, float], seen: int, steps: int) -> dict[str, float]:
        return {"train_loss": sums["loss_sum"] / max(seen, 1), "train_top1": sums["correct"] / max(seen, 1)}

    def running_loss(self, sums: dict[str, float], seen: int, steps: int) -> tuple[float, dict[str, str]]:
        loss = sums["loss_sum"] / seen
        return loss, {"loss": f"{loss:.3f}", "acc": f"{sums['correct'] / seen:.3f}"}

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """Each held-out split's loss, top-1, top-5 and size, all-reduced over the processes."""
        row: dict[str, Any] = {}
        for name, loader in self.eval_loaders.items():
            result = evaluate(model, loader, len(self.classes))
            row |= {f"{name}_loss": result.loss, f"{name}_top1": result.top1, f"{name}_top5": result.top5}
            row[f"{name}_n"] = result.n
        return row

    def checkpoint_fields(self) -> dict[str, Any]:
        preprocessing = self.data.preprocessing.to_dict()
        return {"classes": self.classes, "preprocessing": preprocessing, "scaler": self.scaler.state_dict()}

    def restore(self, ckpt: dict[str, Any]) -> None:
        if ckpt.get("scaler"):  # fp16 runs; checkpoints of bf16/fp32 runs hold an empty (disabled) state
            self.scaler.load_state_dict(ckpt["scaler"])

    def plot(self, history: list[dict[str, Any]], folder: RunFolder, cfg: TrainConfig) -> None:
        folder.plot(history, title=f"{cfg.model} on {cfg.data}")


def classification_trainer(
    cfg: TrainConfig,
    data: TrainingData,
    model: nn.Module,
    device: torch.device,
    folder: RunFolder,
    env: distributed.DistEnv | None = None,
    callbacks: Sequence[StepCallback] = (),
    distill: Distillation | None = None,
) -> Trainer:
    """The training loop over a classification task of `data`."""
    env = env or distributed.DistEnv()
    return Trainer(cfg, ClassificationTask(cfg, data, device, env, distill), model, device, folder, env, callbacks)
