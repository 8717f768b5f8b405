"""Evaluation of a checkpoint on a dataset, and batched prediction on image files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetkit.checkpoint import load_checkpoint, model_from_checkpoint
from resnetkit.data.factory import load_eval_split
from resnetkit.data.loader import BatchLoader
from resnetkit.engine.loop import evaluate
from resnetkit.errors import DataError
from resnetkit.transforms import Preprocessing


def load_for_inference(checkpoint: str | Path) -> tuple[nn.Module, Preprocessing, list[str]]:
    """Model (eval mode), its preprocessing and its class names, from a checkpoint file or run folder."""
    ckpt = load_checkpoint(checkpoint)
    return model_from_checkpoint(ckpt), Preprocessing.from_dict(ckpt["preprocessing"]), list(ckpt["classes"])


def evaluate_checkpoint(
    checkpoint: str | Path, data: str, data_dir: str | None = None, *, split: str = "test",
    batch_size: int = 256, tta_flip: bool = False, download: bool = False, progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """top1, top5, loss, n, per-class accuracy and the confusion matrix of a checkpoint on one split."""
    model, pre, classes = load_for_inference(checkpoint)
    ds = load_eval_split(data, data_dir, split, pre, download=download, progress=progress)
    if list(ds.classes) != classes:
        raise DataError(f"the checkpoint's classes {classes} differ from the data's {list(ds.classes)}")
    model = model.to(memory_format=torch.channels_last)
    loader = BatchLoader(ds, pre, batch_size=batch_size, train=False)
    result = evaluate(model, loader, len(classes), tta_flip=tta_flip)
    return {
        **result.to_dict(classes),
        "split": split,
        "data": data,
        "tta_flip": tta_flip,
        "checkpoint": str(checkpoint),
    }


@torch.no_grad()
def predict_files(
    checkpoint: str | Path, paths: Sequence[str | Path], *, topk: int = 5, batch_size: int = 64
) -> list[dict[str, Any]]:
    """The top-k classes with probabilities for every image file (folders expanded), in file order."""
    from resnetkit.data.folder import list_image_files, load_image

    model, pre, classes = load_for_inference(checkpoint)
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
