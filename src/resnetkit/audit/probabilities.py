"""Out-of-sample predicted probabilities, what confident learning needs: no image may be scored by a model that
trained on it (a model fits its training labels, wrong ones included, so it would vouch for them).

- `--folds K`: the training images are split into K stratified, seeded folds; K models train, each on the other
  K-1 folds (`run_training` with the fold as `--exclude`, the usual recipe), and score their own held-out fold. The
  test images, which none of them saw, get the mean of the K models' probabilities. Each fold is a run folder under
  `OUT/folds/`: an interrupted audit continues where it stopped (finished folds are kept, a fold stopped midway
  resumes from its checkpoint).
- `--checkpoint C`: one model scores the splits it did not train on (CIFAR's test set for a model trained on CIFAR's
  training set; every split of a data set it never saw).

Every image is scored with flip TTA (the mean of the image's and its mirror's probabilities).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from resnetkit.config import TrainConfig
from resnetkit.data.exclude import image_ids
from resnetkit.data.factory import load_training_data
from resnetkit.data.splits import seeded_order
from resnetkit.data.stream import StreamingFolder, loader_for, stream_workers, transforms_for
from resnetkit.engine.predictions import collect_logits
from resnetkit.errors import DataError, ResnetkitError
from resnetkit.models import resolve_data_config
from resnetkit.runtime import Predictor

log = logging.getLogger(__name__)

EVAL_BATCH = 250


@dataclass
class SplitProbs:
    """Probabilities (float64, N x C) of the images of one split, in the split's order, with their ids and given
    labels. A row of NaN: an image the pass could not read (streamed folders)."""

    ids: list[str]
    labels: torch.Tensor
    probs: torch.Tensor


@dataclass
class OutOfSample:
    """Out-of-sample probabilities per split ("train", "test"), the class names and how they were obtained."""

    splits: dict[str, SplitProbs]
    classes: list[str]
    method: str  # "folds" or "checkpoint"
    models: list[str]
    details: dict[str, Any] = field(default_factory=dict)


class FoldInterrupted(ResnetkitError):
    """A fold's training stopped before its last epoch (Ctrl-C): the audit resumes it when run again."""


def fold_assignment(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """The fold (0..k-1) of each image: every class dealt round-robin over the folds in a seeded order, so each fold
    holds 1/k of every class (within one image)."""
    folds = torch.empty(len(labels), dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    offset = 0
    for label in labels.unique().tolist():
        members = torch.nonzero(labels == label).flatten()
        order = members[seeded_order(len(members), generator)]
        folds[order] = (torch.arange(len(order)) + offset) % k
        offset += len(order)
    return folds


def eval_loader(predictor: Predictor, dataset: Any, workers: int | None = None) -> Any:
    """Evaluation batches of `dataset` (in memory or streamed) as `predictor` takes them; a streamed loader's
    `skipped` lists the unreadable images it left out."""
    if isinstance(dataset, StreamingFolder):
        dataset = dataset.with_transform(transforms_for(predictor.preprocessing)[1])
    return loader_for(
        dataset,
        predictor.preprocessing,
        workers=stream_workers(workers),
        strict=False,
        batch_size=EVAL_BATCH,
        train=False,
        memory_format=predictor.memory_format,
    )


def placed(rows: torch.Tensor, loader: Any, n: int) -> torch.Tensor:
    """`rows` of the images `loader` read, at their places among all `n`; the images it skipped get rows of NaN."""
    out = torch.full((n, rows.shape[1]), float("nan"), dtype=rows.dtype)
    read = torch.ones(n, dtype=torch.bool)
    read[list(getattr(loader, "skipped", []))] = False
    out[read] = rows
    return out


def split_probs(predictor: Predictor, dataset: Any, ids: list[str], *, workers: int | None = None) -> SplitProbs:
    """`predictor`'s flip-TTA probabilities for every image of `dataset` (in memory or streamed)."""
    model = predictor.runnable(predictor.should_compile(len(dataset)))
    loader = eval_loader(predictor, dataset, workers)
    with predictor.running():
        logits, _, _ = collect_logits(model, loader, tta_flip=True)
    probs = placed(logits.double().softmax(dim=1), loader, len(dataset))
    return SplitProbs(ids, dataset.labels.clone(), probs)


def out_of_fold(cfg: TrainConfig, k: int, out: Path) -> OutOfSample:
    """Train `k` models of `cfg`, each without one fold of the training images, and score each image with the model
    that did not see it (test images: the mean of all k). Runs and their probabilities are kept under `out/folds`."""
    if k < 2:
        raise DataError(f"--folds needs at least 2 folds, got {k}")
    data = load_training_data(cfg, resolve_data_config(cfg.model, cfg.weights, **cfg.model_kwargs))
    train_ids, test_ids = image_ids(data.train, cfg.data), image_ids(data.test, cfg.data)
    counts = torch.bincount(data.train.labels, minlength=len(data.classes))
    if int(counts.min()) < k:
        small = data.classes[int(counts.argmin())]
        raise DataError(f"class {small!r} has {int(counts.min())} training image(s), fewer than the {k} folds")
    folds = fold_assignment(data.train.labels, k, cfg.seed)
    train = torch.full((len(train_ids), len(data.classes)), float("nan"), dtype=torch.float64)
    test = torch.zeros((len(test_ids), len(data.classes)), dtype=torch.float64)
    models = []
    for fold in range(k):
        held = torch.nonzero(folds == fold).flatten()
        run_dir, held_probs, test_probs = _fold(cfg, data, fold, k, held, [train_ids[i] for i in held.tolist()], out)
        train[held] = held_probs
        test += test_probs / k
        models.append(str(run_dir))
    splits = {
        "train": SplitProbs(train_ids, data.train.labels.clone(), train),
        "test": SplitProbs(test_ids, data.test.labels.clone(), test),
    }
    details = {"folds": k, "fold_seed": cfg.seed, "recipe": _recipe_summary(cfg)}
    return OutOfSample(splits, list(data.classes), "folds", models, details)


def _fold(
    cfg: TrainConfig, data: Any, fold: int, k: int, held: torch.Tensor, held_ids: list[str], out: Path
) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """One fold: train (or resume, or reuse) its model and score its held-out images and the test set."""
    from resnetkit.engine.runner import run_training

    folder = out / "folds" / f"fold{fold}"
    folder.mkdir(parents=True, exist_ok=True)
    held_file, probs_file, run_dir = folder / "held_out.txt", folder / "probs.pt", folder / "run"
    listing = "\n".join(held_ids) + "\n"
    if probs_file.is_file() and held_file.is_file() and held_file.read_text() == listing:
        saved = torch.load(probs_file, weights_only=True)
        log.info("fold %d/%d: reusing %s", fold + 1, k, probs_file)
        return run_dir, saved["held_out"], saved["test"]
    if held_file.is_file() and held_file.read_text() != listing:
        raise DataError(f"{folder} holds a fold of another data set or fold split: audit into an empty --out folder")
    held_file.write_text(listing)
    last = run_dir / "checkpoints" / "last.pt"
    log.info("fold %d/%d: training on %d images, %d held out", fold + 1, k, len(data.train) - len(held), len(held))
    if last.is_file():
        result = run_training(cfg, resume=last)
    else:
        result = run_training(dataclasses.replace(cfg, exclude=str(held_file.resolve()), out=str(run_dir)))
    if result.stopped not in ("completed", "early_stopping"):
        raise FoldInterrupted(f"fold {fold + 1} of {k} stopped ({result.stopped}): run the same audit again to resume")
    predictor = Predictor.load(last)
    held_probs = split_probs(predictor, data.train.subset(held), held_ids, workers=cfg.workers).probs
    test_probs = split_probs(predictor, data.test, image_ids(data.test, cfg.data), workers=cfg.workers).probs
    torch.save({"held_out": held_probs, "test": test_probs}, probs_file)
    return run_dir, held_probs, test_probs


def _recipe_summary(cfg: TrainConfig) -> dict[str, Any]:
    keys = ("model", "epochs", "batch_size", "lr", "amp", "augment", "label_smoothing", "img_size", "weights")
    return {key: getattr(cfg, key) for key in keys}


def from_checkpoint(predictor: Predictor, datasets: dict[str, Any], data: str, unseen: list[str]) -> OutOfSample:
    """`predictor`'s probabilities on the splits it did not train on (`unseen`)."""
    if not unseen:
        raise DataError(
            f"{predictor.source} was trained on every split of this data set: no image is out of sample for it "
            "(audit with --folds K, or a checkpoint trained elsewhere)"
        )
    splits = {name: split_probs(predictor, datasets[name], image_ids(datasets[name], data)) for name in unseen}
    return OutOfSample(splits, list(predictor.classes), "checkpoint", [predictor.source])


def trained_splits(predictor: Predictor, data: str, data_dir: str | None) -> set[str]:
    """The splits of (`data`, `data_dir`) a model was trained on, from its config (a checkpoint) or its registered
    name (`resnet20.rk_cifar10` trained on CIFAR-10's training set)."""
    config = predictor.config
    same = {"sample": "cifar10"}  # the embedded sample is drawn from CIFAR-10's own splits
    data = same.get(data, data)
    if config:
        if same.get(config.get("data"), config.get("data")) != data:
            return set()
        if data != "folder":
            return {"train"}
        recorded = ((predictor.run_record().get("datasets") or {}).get("train") or {}).get("source")
        here = Path(data_dir or ".").resolve()
        sources = [p for p in (config.get("data_dir"), recorded) if p]
        return {"train"} if any(Path(p).resolve() == here for p in sources) else set()
    tag = predictor.source.rsplit(".", 1)[-1] if "." in predictor.source else ""
    return {"train"} if data != "folder" and tag.endswith(data) else set()


def save_probabilities(oos: OutOfSample, out: Path) -> None:
    """`out/probabilities/{split}.pt` ({"ids", "labels", "probs"}) and an index: what a reference implementation
    (benchmarks/) or a user's own analysis reads."""
    folder = out / "probabilities"
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in oos.splits.items():
        torch.save({"labels": split.labels, "probs": split.probs}, folder / f"{name}.pt")
        (folder / f"{name}_ids.txt").write_text("\n".join(split.ids) + "\n")
    index = {"classes": oos.classes, "method": oos.method, "models": oos.models, **oos.details}
    (folder / "index.json").write_text(json.dumps(index, indent=2) + "\n")
