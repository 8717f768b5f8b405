"""Detection training (`resnetkit train --task detection --data coco --data-dir D`): a torchvision detector on a
resnetkit backbone (tasks.detection) fine-tuned on a COCO-format folder (data.coco), in the same kind of run folder
as classification (config.yaml, run.json, metrics.jsonl, curves.png, checkpoints/last.pt and best.pt), resumable
with `--resume RUN` at an epoch boundary and run under torchrun (DistributedDataParallel, each image once per epoch).

Validation mAP each epoch is torchmetrics' MeanAveragePrecision on pycocotools (the COCO protocol), not a
hand-written one. The backbone can start from classification weights (`--weights resnet50.tv_in1k`, the backbone
only) or the whole detector from registered COCO weights (`--weights fasterrcnn_resnet50_fpn.tv_coco`: every layer
but the class-dependent ones of the head).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from resnetkit import distributed
from resnetkit.checkpoint import save_checkpoint
from resnetkit.config import TrainConfig
from resnetkit.data.coco import DetectionDataset, collate_detection, find_coco_split, read_coco
from resnetkit.engine.interrupt import InterruptFlag, graceful_interrupt
from resnetkit.engine.run_dir import RunFolder
from resnetkit.engine.runner import started_run
from resnetkit.engine.trainer import RunResult
from resnetkit.errors import DataError, NonFiniteLoss, TrainingInterrupted, WeightsError
from resnetkit.extras import require_extra
from resnetkit.optim import build_optimizer, build_schedule, lr_factor, param_groups
from resnetkit.plots import plot_detection_curves
from resnetkit.tasks.detection import create_detector
from resnetkit.tasks.pretrained import load_task_weights
from resnetkit.weights.registry import get_weights, is_weights_name

log = logging.getLogger(__name__)


@dataclass
class DetectionData:
    classes: list[str]  # "__background__" first
    train: DetectionDataset
    val: DetectionDataset | None
    info: dict[str, Any] = field(default_factory=dict)


def load_detection_data(cfg: TrainConfig) -> DetectionData:
    """The checked COCO-format splits of `cfg.data_dir`; `train_subset` / `test_subset` keep the first images."""
    found = find_coco_split(cfg.data_dir or "", "train")
    if found is None:
        raise DataError(
            f"{cfg.data_dir} has no COCO-format training split: expected annotations/instances_train*.json with "
            "its images, or train/_annotations.coco.json"
        )
    train = read_coco(*found)
    val_found = find_coco_split(cfg.data_dir or "", "val")
    val = read_coco(*val_found, classes=train.classes) if val_found else None
    side = cfg.img_size or 800
    for coco, n in ((train, cfg.train_subset), (val, cfg.test_subset)):
        if coco is not None and n:
            for name in ("files", "image_ids", "boxes", "labels", "sizes"):
                setattr(coco, name, getattr(coco, name)[:n])
    info = {
        split: {"source": c.source, "n": len(c.files), "boxes": sum(len(b) for b in c.boxes)}
        for split, c in (("train", train), ("val", val))
        if c is not None
    }
    return DetectionData(
        train.classes,
        DetectionDataset(train, train=True, seed=cfg.seed, min_side=side),
        DetectionDataset(val, train=False, min_side=side) if val else None,
        info,
    )


def build_detector(cfg: TrainConfig, classes: list[str], pretrained: bool) -> nn.Module:
    """`cfg.detector` on `cfg.model` for `classes`, images resized to `img_size` (default 800) on the short side.
    With `pretrained`, `cfg.weights` seed it: classification weights the backbone, COCO weights all but the head.
    `cfg.model_kwargs` go to torchvision's detector (rpn_post_nms_top_n_train, box_batch_size_per_image, ...)."""
    side = cfg.img_size or 800
    coco = cfg.weights if cfg.weights and is_weights_name(cfg.weights) else None
    whole = coco is not None and get_weights(coco).task == "detection"
    backbone_weights = cfg.weights if pretrained and cfg.weights and not whole else None
    model = create_detector(
        cfg.detector,
        cfg.model,
        num_classes=len(classes),
        weights_backbone=backbone_weights,
        pretrained=bool(cfg.weights),
        **{"min_size": side, "max_size": round(side * 1333 / 800), **cfg.model_kwargs},
    )
    if whole and pretrained:
        entry = get_weights(coco)
        if (entry.build["kind"], entry.build["backbone"]) != (cfg.detector, cfg.model):
            raise WeightsError(
                f"{coco} are {entry.build['kind']} on {entry.build['backbone']}: train with "
                f"--detector {entry.build['kind']} --model {entry.build['backbone']}"
            )
        load_task_weights(model, entry, heads_may_differ=True)
    return model


def run_detection_training(
    cfg: TrainConfig, resume: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> RunResult:
    """Train as `cfg` says (or continue the run at `resume`), writing the run folder (rank 0)."""
    with started_run(cfg, resume, overrides) as start:
        cfg, ckpt, env = start.cfg, start.ckpt, start.env
        torch.manual_seed(cfg.seed)
        data = load_detection_data(cfg)
        model = build_detector(cfg, data.classes, pretrained=ckpt is None).to(start.device)
        trainer = DetectionTrainer(cfg, data, model, start.device, start.folder, env)
        if ckpt is not None:
            trainer.restore(ckpt)
        else:
            start.folder.start(
                cfg,
                {
                    "task": "detection",
                    "classes": data.classes,
                    "datasets": data.info,
                    "steps_per_epoch": trainer.steps_per_epoch,
                    "world_size": env.world_size,
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                },
            )
        return trainer.fit()


class DetectionTrainer:
    """The epochs of one detection run: SGD (or AdamW) with the run's schedule over the summed detector losses."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: DetectionData,
        model: nn.Module,
        device: torch.device,
        folder: RunFolder,
        env: distributed.DistEnv,
    ) -> None:
        self.cfg, self.data, self.model, self.device, self.folder, self.env = cfg, data, model, device, folder, env
        self.per_process = max(1, cfg.batch_size // env.world_size)
        self.images_per_rank = len(data.train) // env.world_size  # equal shares: DDP steps in lockstep
        if self.images_per_rank == 0:
            raise DataError(f"{len(data.train)} training images cannot be shared by {env.world_size} processes")
        self.steps_per_epoch = math.ceil(self.images_per_rank / self.per_process)
        planned = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(planned, cfg.max_steps) if cfg.max_steps else planned
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        groups = param_groups(model, cfg.weight_decay, cfg.no_decay_bn_bias)
        self.optimizer = build_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum, cfg.nesterov)
        warmup = cfg.warmup_steps or round(cfg.warmup_epochs * self.steps_per_epoch)
        factor = lr_factor(cfg.schedule, self.total_steps, warmup, cfg.milestones, cfg.warmup_constant_factor)
        self.scheduler = build_schedule(self.optimizer, factor)
        self.forward_model = distributed.wrap_model(model, device)
        self.epoch, self.step, self.history, self.best = 0, 0, [], None
        self.batch, self.partial = 0, {}  # the next batch of `epoch`; its training sums so far (a Ctrl-C checkpoint)

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch, self.step, self.history, self.best = ckpt["epoch"], ckpt["step"], ckpt["history"], ckpt["best"]
        self.batch, self.partial = ckpt.get("batch", 0), dict(ckpt.get("partial") or {})
        self.folder.rewrite_metrics(self.history)
        log.info("resuming %s at epoch %d, step %d", self.folder.path, self.epoch + 1, self.step)

    def fit(self) -> RunResult:
        """The epochs; Ctrl-C (on any process) stops every process after the same step, and rank 0 saves a
        checkpoint from which `--resume` continues mid-epoch to the weights of a run that never stopped."""
        with graceful_interrupt() as interrupted:
            while self.epoch < self.epochs and self.step < self.total_steps:
                row = self._train_epoch(interrupted)
                if row is None:
                    path = self._save("last.pt")
                    raise TrainingInterrupted(
                        f"interrupted at epoch {self.epoch + 1}, step {self.step}; checkpoint {path} is intact: "
                        f"continue with `resnetkit train --resume {self.folder.path}`"
                    )
                self.epoch, self.batch, self.partial = self.epoch + 1, 0, {}
                row |= self._evaluate()
                self._end_epoch(row)
        stopped = "max_steps" if self.cfg.max_steps and self.step >= self.cfg.max_steps else "completed"
        return RunResult(self.folder.path, self.history, stopped, self.best, self.step)

    def _loader(self) -> DataLoader:
        """This rank's share of a fresh permutation (seeded by the run's seed and the epoch), from batch
        `self.batch` on (a run resumed mid-epoch skips the batches it took)."""
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.data.train), generator=g)
        own = order[self.env.rank :: self.env.world_size][: self.images_per_rank].tolist()
        own = own[self.batch * self.per_process :]
        self.data.train.epoch = self.epoch  # the flips of this epoch (workers copy the dataset when they start)
        workers = self.cfg.workers or 0
        return DataLoader(
            Subset(self.data.train, own),
            batch_size=self.per_process,
            collate_fn=collate_detection,
            num_workers=workers,
            persistent_workers=False,
        )

    def _train_epoch(self, interrupted: InterruptFlag) -> dict[str, Any] | None:
        """The epoch's training row, or None when a Ctrl-C stopped it (its sums so far in `self.partial`)."""
        self.model.train()
        part = dict(self.partial)
        done, seen = int(part.pop("done", 0)), int(part.pop("seen", 0))
        t0 = time.perf_counter() - part.pop("time", 0.0)
        sums: dict[str, float] = part  # the losses' sums (this process's; rank 0's are reported and saved)
        show = self.cfg.progress and self.env.is_main
        steps = min(self.steps_per_epoch - self.batch, self.total_steps - self.step)
        with tqdm(total=steps, desc=f"epoch {self.epoch + 1}/{self.epochs}", disable=not show, unit="step") as bar:
            for images, targets in self._loader():
                losses = self._step([i.to(self.device) for i in images], targets)
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                seen, done, self.batch = seen + len(images), done + 1, self.batch + 1
                bar.update(1)
                bar.set_postfix(loss=f"{losses['loss']:.3f}")
                # a detection step takes long: the processes agree on stopping after every step
                stop = distributed.any_process(interrupted.requested, self.device) if self.env.enabled else None
                if stop or (stop is None and interrupted.requested):
                    self.partial = {**sums, "done": done, "seen": seen, "time": time.perf_counter() - t0}
                    return None
                if self.step >= self.total_steps:
                    break
        n = max(1, done)  # not bar.n: a disabled bar (--no-progress) does not count
        seconds = time.perf_counter() - t0
        row = {"epoch": self.epoch + 1, "step": self.step, "lr": self.scheduler.get_last_lr()[0]}
        row |= {f"train_{k}": v / n for k, v in sums.items()}
        return row | {"train_time_s": seconds, "train_images_per_s": seen * self.env.world_size / seconds}

    def _step(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        targets = [{k: v.to(self.device) for k, v in t.items()} for t in targets]
        # the samplers of the RPN and box head draw from torch's RNG: seeded by the step, a resumed run draws the same
        torch.manual_seed(self.cfg.seed * 1_000_003 + self.step * max(1, self.env.world_size) + self.env.rank)
        parts = self.forward_model(images, targets)
        loss = sum(parts.values())
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"the detection loss became {float(loss)} at step {self.step}; try a lower --lr")
        loss.backward()
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}}

    def _evaluate(self) -> dict[str, Any]:
        """Validation mAP (COCO protocol) on rank 0; the other ranks wait."""
        out: dict[str, Any] = {}
        if self.data.val is not None and self.env.is_main:
            out = evaluate_detector(self.model, self.data.val, self.device, self.per_process)
        distributed.barrier()
        return out

    def _end_epoch(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        self.folder.append_metrics(row)
        if "val_map" in row and (self.best is None or row["val_map"] > self.best["val_map"]):
            self.best = {"epoch": row["epoch"], "val_map": row["val_map"]}
            self._save("best.pt")
        self._save("last.pt")
        if self.env.is_main:
            title = f"{self.cfg.detector} on {self.cfg.model}"
            plot_detection_curves(self.history, self.folder.path / "curves.png", title)
        scores = ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k.startswith("val_") or k == "train_loss")
        log.info("epoch %d: %s", row["epoch"], scores)

    def _save(self, name: str) -> Path:
        path = self.folder.checkpoint(name)
        if not self.env.is_main:
            return path
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise NonFiniteLoss(f"weights became non-finite by step {self.step}; try a lower --lr")
        return save_checkpoint(
            path,
            self.model,
            task="detection",
            classes=self.data.classes,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            epoch=self.epoch,
            batch=self.batch,
            step=self.step,
            history=self.history,
            best=self.best,
            partial=self.partial,
            config=self.cfg.to_dict(),
        )


def evaluate_detector(model: nn.Module, data: DetectionDataset, device: torch.device, batch: int) -> dict[str, Any]:
    """COCO-protocol mAP of `model` on `data`: torchmetrics' MeanAveragePrecision (pycocotools backend)."""
    detection = require_extra("torchmetrics.detection", "tasks", "detection mAP", DataError)
    # rank 0 evaluates alone under torchrun: torchmetrics must not gather from the other (waiting) processes
    metric = detection.MeanAveragePrecision(iou_type="bbox", box_format="xyxy", sync_on_compute=False)
    model.eval()
    loader = DataLoader(data, batch_size=batch, collate_fn=collate_detection)
    with torch.inference_mode():
        for images, targets in loader:
            found = model([i.to(device) for i in images])
            metric.update(
                [{k: v.cpu() for k, v in f.items()} for f in found],
                [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets],
            )
    result = metric.compute()
    return {
        "val_map": float(result["map"]),
        "val_map_50": float(result["map_50"]),
        "val_map_75": float(result["map_75"]),
        "val_n": len(data),
    }
