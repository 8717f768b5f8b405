"""Evaluation of a checkpoint on a dataset, and batched prediction on image files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetkit.checkpoint import load_checkpoint, model_from_checkpoint
from resnetkit.data.datasets import ImageTensorDataset
from resnetkit.data.factory import load_eval_split
from resnetkit.data.loader import BatchLoader
from resnetkit.engine.fastpath import should_compile, speed_up_for_inference
from resnetkit.engine.predictions import Predictions, collect_logits
from resnetkit.errors import DataError
from resnetkit.models import count_macs, create_model
from resnetkit.transforms import Preprocessing, center_crop, preprocessing_for
from resnetkit.weights.registry import get_weights, is_weights_name


def load_for_inference(checkpoint: str | Path) -> tuple[nn.Module, Preprocessing, list[str]]:
    """Model (eval mode), its preprocessing and its class names, from a checkpoint file, a run folder or the
    name of registered pretrained weights (e.g. "resnet20.rk_cifar10")."""
    model, pre, classes, _ = _load(checkpoint)
    return model, pre, classes


def _load(checkpoint: str | Path) -> tuple[nn.Module, Preprocessing, list[str], dict[str, Any]]:
    """load_for_inference plus the run's recorded config ({} for registered weights)."""
    if isinstance(checkpoint, str) and is_weights_name(checkpoint):
        entry = get_weights(checkpoint)
        model = create_model(entry.architecture, weights=checkpoint).eval()
        kind = "cifar" if entry.data_config.crop_pct >= 1.0 else "imagenet"
        return model, preprocessing_for(entry.data_config, kind), list(entry.classes), {}
    ckpt = load_checkpoint(checkpoint)
    pre = Preprocessing.from_dict(ckpt["preprocessing"])
    return model_from_checkpoint(ckpt), pre, list(ckpt["classes"]), dict(ckpt.get("config") or {})


def evaluate_checkpoint(
    checkpoint: str | Path, data: str, data_dir: str | None = None, *, split: str = "test",
    batch_size: int = 250, tta_flip: bool = False, download: bool = False, progress: bool = True,
    compile: bool | None = None,
) -> dict[str, Any]:  # fmt: skip
    """top1, top5, loss, n, per-class accuracy, the confusion matrix, per-class precision / recall / F1 and the
    expected calibration error of a checkpoint on one split.

    Runs the fast path: BatchNorm folded, channels_last, and (when the evaluation is large enough to pay for
    it, see engine.fastpath.should_compile, or when asked) a frozen compiled graph; outputs equal the eager
    model's within 1e-4.
    """
    preds = predict_split(
        checkpoint, data, data_dir, split=split, batch_size=batch_size, tta_flip=tta_flip, download=download,
        progress=progress, compile=compile,
    )  # fmt: skip
    return {
        **preds.to_eval_result().to_dict(preds.classes),
        **preds.quality(),
        "split": split,
        "data": data,
        "tta_flip": tta_flip,
        "checkpoint": str(checkpoint),
    }


def predict_split(
    checkpoint: str | Path, data: str, data_dir: str | None = None, *, split: str = "test",
    batch_size: int = 250, tta_flip: bool = False, download: bool = False, progress: bool = True,
    compile: bool | None = None, keep_images: bool = False,
) -> Predictions:  # fmt: skip
    """The logits of a checkpoint for every image of one split, with labels and image ids (see Predictions).

    split "val" of CIFAR is the validation split the checkpoint's run held out of the training set (--val-size).
    """
    model, pre, classes, config = _load(checkpoint)
    ds = _load_split(config, data, data_dir, split, pre, download=download, progress=progress)
    if list(ds.classes) != classes:
        raise DataError(f"the checkpoint's classes {classes} differ from the data's {list(ds.classes)}")
    if compile is None:
        compile = should_compile(len(ds), count_macs(model, (ds.images.shape[1], pre.size, pre.size)))
    model = speed_up_for_inference(model, compile=compile)
    loader = BatchLoader(ds, pre, batch_size=batch_size, train=False)
    logits, labels = collect_logits(model, loader, tta_flip=tta_flip)
    # image folders record each image's path (relative to the data folder); CIFAR's `files` are its batch files
    ids = list(ds.info["files"]) if data == "folder" else [str(i) for i in range(len(ds))]
    images = center_crop(ds.images, pre.size) if keep_images else None  # as the model sees them, for figures
    return Predictions(logits, labels, classes, ids, images, {"data": data, "split": split})


def _load_split(
    config: dict[str, Any], data: str, data_dir: str | None, split: str, pre: Preprocessing, **opts: Any
) -> ImageTensorDataset:
    if data == "folder" or split != "val":
        seed, fraction = config.get("seed", 0), config.get("val_fraction", 0.1)
        return load_eval_split(data, data_dir, split, pre, seed=seed, val_fraction=fraction, **opts)
    val_size = int(config.get("val_size") or 0)
    if not val_size:
        raise DataError(f"the checkpoint's run held no validation split out of the {data} training set (--val-size)")
    from resnetkit.data.cifar import paper_split

    train = load_eval_split(data, data_dir, "train", pre, **opts)
    return paper_split(train, val_size, seed=config.get("seed", 0))[1]


@torch.no_grad()
def predict_files(
    checkpoint: str | Path, paths: Sequence[str | Path], *, topk: int = 5, batch_size: int = 64
) -> list[dict[str, Any]]:
    """The top-k classes with probabilities for every image file (folders expanded), in file order."""
    from resnetkit.data.folder import list_image_files, load_image

    model, pre, classes = load_for_inference(checkpoint)
    model = speed_up_for_inference(model, compile=False)  # a few images: a compile would not pay off
    files = list_image_files(paths)
    k = max(1, min(topk, len(classes)))
    results = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        images = torch.stack([load_image(f, pre.storage_size) for f in chunk])
        probs = model(pre.eval_batch(images)).softmax(dim=1)
        top = probs.topk(k, dim=1)
        for f, p, i in zip(chunk, top.values.tolist(), top.indices.tolist(), strict=True):
            results.append(
                {"path": str(f), "top": [{"class": classes[c], "prob": q} for c, q in zip(i, p, strict=True)]}
            )
    return results
