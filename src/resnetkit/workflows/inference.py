"""Evaluation of a checkpoint on a dataset, and batched prediction on image files."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetkit.data.datasets import ImageTensorDataset
from resnetkit.data.factory import describe_split, folder_streams, load_eval_split
from resnetkit.data.stream import StreamingFolder, loader_for, stream_folder_split, stream_workers, transforms_for
from resnetkit.engine.predictions import Predictions, collect_logits
from resnetkit.errors import DataError
from resnetkit.runtime import Predictor
from resnetkit.transforms import Preprocessing, center_crop

log = logging.getLogger(__name__)


def load_for_inference(
    checkpoint: str | Path, *, exported_ok: bool = True
) -> tuple[nn.Module, Preprocessing, list[str]]:
    """Model (eval mode), its preprocessing and its class names, from a checkpoint file, a run folder, the name of
    registered pretrained weights (e.g. "resnet20.rk_cifar10") or an exported `.onnx` / `.pt2` file (its model runs
    on its own runtime; `exported_ok=False` refuses those, for what needs a PyTorch model's gradients)."""
    predictor = Predictor.load(checkpoint, gradients=not exported_ok)
    return predictor.model, predictor.preprocessing, predictor.classes


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str,
    data_dir: str | None = None,
    *,
    split: str = "test",
    batch_size: int = 250,
    tta_flip: bool = False,
    download: bool = False,
    progress: bool = True,
    compile: bool | None = None,
    data_mode: str = "auto",
    workers: int | None = None,
    runtime: str | None = None,
) -> dict[str, Any]:
    """top1, top5, loss, n, per-class accuracy, the confusion matrix, per-class precision / recall / F1 and the
    expected calibration error of a checkpoint on one split (options as in `predict_split`).

    `split` in the result is the part actually scored (image folders: "val" for the held-out part, "all" for every
    image, "train"; see predict_split), `requested_split` the one asked for, `source` the data folder and `scored`
    says which images those are in words.

    Runs the fast path: BatchNorm folded, channels_last, and (when the evaluation is large enough to pay for
    it, see engine.fastpath.should_compile, or when asked) a frozen compiled graph; outputs equal the eager
    model's within 1e-4.
    """
    preds = predict_split(
        checkpoint,
        data,
        data_dir,
        split=split,
        batch_size=batch_size,
        tta_flip=tta_flip,
        download=download,
        progress=progress,
        compile=compile,
        data_mode=data_mode,
        workers=workers,
        runtime=runtime,
    )
    return {
        **preds.to_eval_result().to_dict(preds.classes),
        **preds.quality(),
        **preds.info,  # data, the split actually scored, source and `scored` (which images, in words)
        "requested_split": split,
        "tta_flip": tta_flip,
        **_single_view(preds),
        "checkpoint": str(checkpoint),
    }


def _single_view(preds: Predictions) -> dict[str, float]:
    """With flip TTA, the top-1 of the image alone, from the same pass (`top1` is the TTA's)."""
    if preds.single_view_preds is None:
        return {}
    return {"single_view_top1": float(preds.single_view_preds.eq(preds.labels).double().mean())}


def predict_split(
    checkpoint: str | Path,
    data: str,
    data_dir: str | None = None,
    *,
    split: str = "test",
    batch_size: int = 250,
    tta_flip: bool = False,
    download: bool = False,
    progress: bool = True,
    compile: bool | None = None,
    keep_images: bool = False,
    data_mode: str = "auto",
    workers: int | None = None,
    runtime: str | None = None,
) -> Predictions:
    """The logits of a checkpoint for every image of one split, with labels and image ids (see Predictions).

    split "val" of CIFAR is the validation split the checkpoint's run held out of the training set (--val-size).
    Image folders (issue 13): "test" / "val" is the held-out part of the checkpoint's own training folder (its
    seeded split or val/ folder), and every image of a folder of class sub-folders it was not trained on; "all"
    is every image; "train" the training part. `info` says which: `split`, `source` and `scored` (in words).
    `data_mode` (image folders): "stream" reads the files batch by batch with `workers` decoding processes instead
    of decoding the split into memory first; "auto" streams when the decoded split would exceed 4 GB. Unreadable
    files are left out (with a warning) either way; streamed, `keep_images` keeps none (the report's figure of
    mistakes is then left out). `runtime`: what an exported file runs on (runtime.exported.RUNTIMES).
    """
    predictor = Predictor.load(checkpoint, runtime=runtime)
    pre = predictor.preprocessing
    stream = folder_streams(data, data_dir, data_mode, pre)
    ds, classes, trained_on = _split_of(predictor, data, data_dir, split, stream, download=download, progress=progress)
    model = predictor.runnable(predictor.should_compile(len(ds)) if compile is None else compile)
    loader = loader_for(
        ds,
        pre,
        workers=stream_workers(workers),
        strict=False,
        batch_size=batch_size,
        train=False,
        memory_format=predictor.memory_format,
    )
    with predictor.running():
        logits, labels, single = collect_logits(model, loader, tta_flip=tta_flip)
    # image folders record each image's path (relative to the data folder); CIFAR's `files` are its batch files
    left_out = set(getattr(loader, "skipped", ()))  # streamed: unreadable files found on the way
    ids = [f for i, f in enumerate(ds.info["files"]) if i not in left_out] if data == "folder" else None
    images = center_crop(ds.images, pre.size) if keep_images and not stream else None  # as the model sees them
    return Predictions(
        logits,
        labels,
        classes,
        ids if ids is not None else [str(i) for i in range(len(ds))],
        images,
        _scored(ds, data, trained_on),
        single,
    )


def _split_of(
    predictor: Predictor, data: str, data_dir: str | None, split: str, stream: bool, *, download: bool, progress: bool
) -> tuple[Any, list[str], bool]:
    """The dataset of `split` the predictor scores (streamed or in memory), the class names its outputs take, and
    whether the data is the predictor's own training source (its held-out files then checked against the record)."""
    pre, classes, config = predictor.preprocessing, predictor.classes, predictor.config
    record = predictor.run_record() if config else {}
    trained_on = _trained_on(config, record, data, data_dir)
    if stream:
        ds: Any = _stream_split(config, data_dir, split, pre, trained_on)
    else:
        ds = _load_split(
            config, data, data_dir, split, pre, trained_on=trained_on, download=download, progress=progress
        )
    if trained_on:
        _check_held_out(ds, record)
    if not predictor.named and len(classes) == len(ds.classes):
        classes = list(ds.classes)  # a foreign ONNX file: its outputs take the data's names
    if list(ds.classes) != classes:
        raise DataError(f"the checkpoint's classes {classes} differ from the data's {list(ds.classes)}")
    return ds, classes, trained_on


def _stream_split(
    config: dict[str, Any], data_dir: str | None, split: str, pre: Preprocessing, trained_on: bool
) -> StreamingFolder:
    seed, fraction = config.get("seed", 0), config.get("val_fraction", 0.1)
    evaluate = transforms_for(pre)[1]
    return stream_folder_split(str(data_dir), split, evaluate, trained_on=trained_on, val_fraction=fraction, seed=seed)


def _trained_on(config: dict[str, Any], record: dict[str, Any], data: str, data_dir: str | None) -> bool:
    """Whether image folder `data_dir` is the one the checkpoint was trained on: the data_dir of its config or the
    source its run.json recorded (resolved paths compared). Registered weights have neither: never."""
    if data != "folder" or config.get("data") != "folder" or not data_dir:
        return False
    recorded = (record.get("datasets") or {}).get("train") or {}
    here = Path(data_dir).resolve()
    return any(p and Path(p).resolve() == here for p in (config.get("data_dir"), recorded.get("source")))


def _check_held_out(ds: ImageTensorDataset, record: dict[str, Any]) -> None:
    """Warn when the seeded held-out files differ from those run.json recorded: the folder changed since training,
    so some images scored now may have been trained on."""
    recorded = ((record.get("datasets") or {}).get("test") or {}).get("held_out")
    if recorded is not None and "held_out" in ds.info and list(recorded) != ds.info["held_out"]:
        new = len(set(ds.info["held_out"]) - set(recorded))
        log.warning(
            "%s: %d of the %d held-out images were not held out in training (files added or removed since "
            "run.json was written?)",
            ds.info["source"],
            new,
            len(ds.info["held_out"]),
        )


def _scored(ds: ImageTensorDataset, data: str, trained_on: bool) -> dict[str, str]:
    """Predictions.info: the data, the split actually scored, its folder and which images those are, in words."""
    split = "val" if "paper_split" in ds.info else str(ds.info.get("split", "?"))
    scored = describe_split(ds.info)
    if data == "folder":
        scored += " (the checkpoint's own training folder)" if trained_on else " (not the checkpoint's training folder)"
    return {"data": data, "split": split, "source": str(ds.info.get("source", "")), "scored": scored}


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
    checkpoint: str | Path,
    paths: Sequence[str | Path],
    *,
    topk: int = 5,
    batch_size: int = 64,
    strict: bool = False,
    runtime: str | None = None,
) -> list[dict[str, Any]]:
    """The top-k classes with probabilities for every image file (folders expanded), in file order:
    `{"path", "top": [{"class", "prob"}, ...]}`.

    A file that cannot be decoded (not an image, corrupt, truncated) gets `{"path", "error"}` in its place, the
    error one line naming the file, and every other file is still predicted; `strict=True` raises that DataError
    at the first such file instead. A missing path or no image file at all raises DataError either way."""
    from resnetkit.data.folder import list_image_files

    predictor = Predictor.load(checkpoint, runtime=runtime)  # a few images: no compile (it would not pay off)
    files = list_image_files(paths)
    results: list[dict[str, Any]] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        images = [_read_image(f, predictor.preprocessing.storage_size, strict=strict) for f in chunk]
        decoded = [x for x in images if isinstance(x, torch.Tensor)]
        tops = iter([])
        if decoded:
            with predictor.running():
                tops = iter(predictor.topk(predictor.probabilities(torch.stack(decoded)), topk))
        for f, x in zip(chunk, images, strict=True):
            results.append({"path": str(f), "error": x} if isinstance(x, str) else {"path": str(f), "top": next(tops)})
    return results


def _read_image(path: Path, size: int, *, strict: bool) -> torch.Tensor | str:
    """The decoded image, or the one-line DataError message saying why it cannot be read (raised when strict)."""
    from resnetkit.data.images import read_image

    try:
        return read_image(path, size=size)
    except DataError as e:
        if strict:
            raise
        return str(e)
