"""Detection training (`resnetkit train --task detection --data coco --data-dir D`): a torchvision detector on a
resnetkit backbone (tasks.detection) fine-tuned on a COCO-format folder (data.coco), in the same kind of run folder
as classification (config.yaml, run.json, metrics.jsonl, curves.png, checkpoints/last.pt and best.pt), by the same
loop (engine.trainer: Ctrl-C saves, `--resume RUN` continues mid-epoch exactly, early stopping, torchrun with
DistributedDataParallel, each image once per epoch); `DetectionTask` supplies the batches, the step and the mAP.

Validation mAP each epoch is torchmetrics' MeanAveragePrecision on pycocotools (the COCO protocol), not a
hand-written one. The backbone can start from classification weights (`--weights resnet50.tv_in1k`, the backbone
only) or the whole detector from registered COCO weights (`--weights fasterrcnn_resnet50_fpn.tv_coco`: every layer
but the class-dependent ones of the head).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from resnetkit import distributed
from resnetkit.config import TrainConfig
from resnetkit.data.coco import DetectionDataset, collate_detection, find_coco_split, read_coco
from resnetkit.engine.run_dir import RunFolder
from resnetkit.engine.runner import started_run
from resnetkit.engine.trainer import RunResult, StepContext, Trainer, TrainingTask
from resnetkit.errors import DataError, NonFiniteLoss, WeightsError
from resnetkit.extras import require_extra
from resnetkit.optim import param_groups
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
        trainer = Trainer(cfg, DetectionTask(cfg, data, start.device, env), model, start.device, start.folder, env)
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


class DetectionTask(TrainingTask):
    """Detection as a task of the one training loop (engine.trainer): each process's share of a seeded permutation
    of the training images, a step over the detector's summed losses (float32), COCO-protocol mAP on rank 0."""

    selection_key = "val_map"
    stop_check_every = 1  # a detection step takes long: the processes agree on stopping after every step

    def __init__(self, cfg: TrainConfig, data: DetectionData, device: torch.device, env: distributed.DistEnv) -> None:
        self.cfg, self.data, self.device, self.env = cfg, data, device, env
        self.classes = data.classes
        self.per_process = max(1, cfg.batch_size // env.world_size)
        self.images_per_rank = len(data.train) // env.world_size  # equal shares: DDP steps in lockstep
        if self.images_per_rank == 0:
            raise DataError(f"{len(data.train)} training images cannot be shared by {env.world_size} processes")

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.images_per_rank / self.per_process)

    @property
    def images_per_step(self) -> int:
        return self.per_process

    def batches(self, epoch: int, start_batch: int) -> DataLoader:
        """This rank's share of a fresh permutation (seeded by the run's seed and the epoch), from batch
        `start_batch` on (a run resumed mid-epoch skips the batches it took)."""
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.data.train), generator=g)
        own = order[self.env.rank :: self.env.world_size][: self.images_per_rank].tolist()
        own = own[start_batch * self.per_process :]
        self.data.train.epoch = epoch  # the flips of this epoch (workers copy the dataset when they start)
        return DataLoader(
            Subset(self.data.train, own),
            batch_size=self.per_process,
            collate_fn=collate_detection,
            num_workers=self.cfg.workers or 0,
            persistent_workers=False,
        )

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return param_groups(model, self.cfg.weight_decay, self.cfg.no_decay_bn_bias)

    def forward_model(self, model: nn.Module, device: torch.device, total_steps: int) -> nn.Module:
        return distributed.wrap_model(model, device)

    def step(self, batch: Any, ctx: StepContext) -> tuple[dict[str, torch.Tensor], int]:
        """Forward (the detector returns its losses in training mode), backward, clip, step: each loss's value is
        added to the epoch's sums (the row reports their per-step means)."""
        images = [i.to(self.device) for i in batch[0]]
        targets = [{k: v.to(self.device) for k, v in t.items()} for t in batch[1]]
        parts = ctx.forward_model(images, targets)
        loss = sum(parts.values())
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"the detection loss became {float(loss)} at step {ctx.state.step}; try a lower --lr")
        loss.backward()
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(ctx.model.parameters(), self.cfg.grad_clip)
        ctx.optimizer.step()
        ctx.optimizer.zero_grad(set_to_none=True)
        added = {"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}}
        return {k: v.double() for k, v in added.items()}, len(images)

    def train_metrics(self, sums: dict[str, float], seen: int, steps: int) -> dict[str, float]:
        return {f"train_{k}": v / max(steps, 1) for k, v in sums.items()}

    def running_loss(self, sums: dict[str, float], seen: int, steps: int) -> tuple[float, dict[str, str]]:
        loss = sums["loss"] / max(steps, 1)
        return loss, {"loss": f"{loss:.3f}"}

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """Validation mAP (COCO protocol) on rank 0; the other ranks wait."""
        out: dict[str, Any] = {}
        if self.data.val is not None and self.env.is_main:
            out = evaluate_detector(model, self.data.val, self.device, self.per_process)
        distributed.barrier()
        return out

    def checkpoint_fields(self) -> dict[str, Any]:
        return {"task": "detection", "classes": self.classes}

    def plot(self, history: list[dict[str, Any]], folder: RunFolder, cfg: TrainConfig) -> None:
        if self.env.is_main:
            plot_detection_curves(history, folder.path / "curves.png", f"{cfg.detector} on {cfg.model}")

    def logged(self, key: str) -> bool:
        return key.startswith("val_") or key == "train_loss"


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
