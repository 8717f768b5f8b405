"""`resnetkit audit`: the data audit as one pass — broken and odd files, exact and near duplicates (within each split
and between test and training data), label issues from out-of-sample probabilities, class balance — written as
`report.html`, `audit.json` and one CSV per finding (audit.report)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from resnetkit.audit import duplicates as dup
from resnetkit.audit.files import FilePass, check_files
from resnetkit.audit.labels import find_label_issues
from resnetkit.audit.options import AUDIT_DATA, AuditOptions
from resnetkit.audit.probabilities import OutOfSample, from_checkpoint, out_of_fold, save_probabilities, trained_splits
from resnetkit.config import ConfigError, TrainConfig
from resnetkit.data.exclude import image_ids
from resnetkit.data.factory import folder_streams, load_eval_split
from resnetkit.errors import DataError
from resnetkit.runtime import Predictor

log = logging.getLogger(__name__)

SPLITS = ("train", "test")  # an image folder's held-out part (val/, or the seeded split) is its "test" split
DEFAULT_EMBED = "resnet20.rk_cifar10"
DEFAULT_RECIPES = {"cifar10": "cifar10_fast_cpu", "cifar100": "cifar10_fast_cpu", "folder": "cats_vs_dogs"}


@dataclass
class AuditSplit:
    """One split as the audit sees it: the dataset (at the embedding model's preprocessing), ids and labels."""

    name: str
    dataset: Any
    ids: list[str]
    labels: torch.Tensor


@dataclass
class Findings:
    """Everything the audit found, for audit.report to write."""

    options: AuditOptions
    classes: list[str]
    splits: dict[str, AuditSplit]
    files: FilePass | None = None
    pairs: dict[str, list[dup.Pair]] = field(default_factory=dict)  # "train", "test", "test_train"
    nearest: dict[str, torch.Tensor] = field(default_factory=dict)  # each image's highest similarity
    labels: dict[str, Any] = field(default_factory=dict)  # split -> LabelIssues
    oos: OutOfSample | None = None
    embed_model: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    source: str = ""


def check_options(opts: AuditOptions) -> None:
    """One-line errors for what cannot be audited, before anything slow starts."""
    if opts.checkpoint and opts.folds:
        raise ConfigError("--checkpoint and --folds are two ways to get out-of-sample probabilities: choose one")
    if opts.folds is not None and opts.folds < 2:
        raise ConfigError(f"--folds needs at least 2 folds, got {opts.folds}")
    if not 0.0 < opts.threshold <= 1.0:
        raise ConfigError(f"--threshold is a cosine similarity in (0, 1], got {opts.threshold}")
    if opts.data not in AUDIT_DATA:
        raise ConfigError(f"--data {opts.data}: the audit reads {', '.join(AUDIT_DATA)}")
    if opts.data == "folder" and not opts.data_dir:
        raise ConfigError("--data folder needs --data-dir")
    if opts.data_dir and not Path(opts.data_dir).is_dir():
        raise DataError(f"--data-dir {opts.data_dir}: no such folder")


def run_audit(opts: AuditOptions) -> Findings:
    """Audit the data `opts` names; the caller writes the result with `audit.report.write_report`."""
    check_options(opts)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    oos = None
    if opts.folds or opts.checkpoint:
        t = time.perf_counter()
        oos = _fold_probabilities(opts, out) if opts.folds else None
        seconds["probabilities"] = time.perf_counter() - t
    embedder = Predictor.load(_embed_source(opts, oos))
    splits = load_splits(opts, embedder)
    classes = list(splits["train"].dataset.classes)
    if opts.checkpoint:
        t = time.perf_counter()
        oos = _checkpoint_probabilities(opts, embedder, splits, classes)
        seconds["probabilities"] = time.perf_counter() - t
    findings = Findings(opts, classes, splits, oos=oos, embed_model=embedder.source, seconds=seconds)
    findings.source = str(Path(opts.data_dir).resolve()) if opts.data_dir else opts.data
    if opts.data == "folder":
        t = time.perf_counter()
        findings.files = _file_pass(opts, splits)
        seconds["files"] = time.perf_counter() - t
    t = time.perf_counter()
    _duplicates(findings, embedder)
    seconds["duplicates"] = time.perf_counter() - t
    if oos is not None:
        save_probabilities(oos, out)
        for name, split in oos.splits.items():
            findings.labels[name] = find_label_issues(split.labels, split.probs, opts.method)
    return findings


def _fold_probabilities(opts: AuditOptions, out: Path) -> OutOfSample:
    recipe = opts.recipe or DEFAULT_RECIPES.get(opts.data, "sample_quick")
    defaults = {"data": opts.data, "data_dir": opts.data_dir, "seed": opts.seed, "progress": opts.progress}
    defaults |= {"download": opts.download, "val_fraction": opts.val_fraction}
    cfg = TrainConfig.merged(recipe, None, {**defaults, **opts.overrides})
    if cfg.exclude or cfg.train_subset or cfg.val_size:
        raise ConfigError("--folds audits every training image: drop exclude, train_subset and val_size")
    return out_of_fold(cfg, int(opts.folds or 0), out)


def _checkpoint_probabilities(
    opts: AuditOptions, embedder: Predictor, splits: dict[str, AuditSplit], classes: list[str]
) -> OutOfSample:
    """The checkpoint's probabilities on the splits it did not train on, each image prepared as the checkpoint
    wants it (the splits are loaded again when --embed-model has another preprocessing)."""
    predictor = embedder if opts.checkpoint == embedder.source else Predictor.load(str(opts.checkpoint))
    _check_classes(predictor, classes)
    if predictor.preprocessing != embedder.preprocessing:
        splits = load_splits(opts, predictor)
    unseen = [s for s in SPLITS if s not in trained_splits(predictor, opts.data, opts.data_dir)]
    return from_checkpoint(predictor, {s: splits[s].dataset for s in SPLITS}, opts.data, unseen)


def _embed_source(opts: AuditOptions, oos: OutOfSample | None) -> str:
    """The model whose features find near duplicates: --embed-model, else the checkpoint, else the first fold's
    model, else resnetkit's CIFAR-10 ResNet-20."""
    if opts.embed_model:
        return opts.embed_model
    if opts.checkpoint:
        return opts.checkpoint
    if oos is not None:
        return str(Path(oos.models[0]) / "checkpoints" / "last.pt")
    return DEFAULT_EMBED


def _check_classes(predictor: Predictor, classes: list[str]) -> None:
    if list(predictor.classes) != classes:
        raise DataError(
            f"{predictor.source} predicts {len(predictor.classes)} classes {_short(predictor.classes)}, the data has "
            f"{len(classes)} {_short(classes)}: audit with a checkpoint trained on these classes, or with --folds"
        )


def _short(names: list[str]) -> str:
    return str(names[:5])[:-1] + (", ...]" if len(names) > 5 else "]")


def load_splits(opts: AuditOptions, predictor: Predictor) -> dict[str, AuditSplit]:
    """The training and held-out split at `predictor`'s preprocessing, in memory or (large folders) streamed."""
    pre = predictor.preprocessing
    splits = {}
    for name in SPLITS:
        if opts.data == "folder" and folder_streams(opts.data, opts.data_dir, "auto", pre):
            from resnetkit.data.stream import stream_folder_split, transforms_for

            evaluate = transforms_for(pre)[1]
            ds: Any = stream_folder_split(
                str(opts.data_dir), name, evaluate, val_fraction=opts.val_fraction, seed=opts.seed
            )
        else:
            ds = load_eval_split(
                opts.data,
                opts.data_dir,
                name,
                pre,
                download=opts.download,
                progress=opts.progress,
                val_fraction=opts.val_fraction,
                seed=opts.seed,
            )
        splits[name] = AuditSplit(name, ds, image_ids(ds, opts.data), ds.labels.clone())
    if list(splits["train"].dataset.classes) != list(splits["test"].dataset.classes):
        raise DataError("the training and held-out splits have different classes")
    return splits


def _file_pass(opts: AuditOptions, splits: dict[str, AuditSplit]) -> FilePass:
    """Every file of the folder, the unreadable ones too (the loaded splits skip those)."""
    from resnetkit.data.folder import folder_files

    root = Path(str(opts.data_dir))
    files, not_images = folder_files(root)
    held_out = set(splits["test"].ids)

    def split_of(path: Path, part: str) -> str:
        return "test" if part == "val" or path.relative_to(root).as_posix() in held_out else "train"

    listed = [(path, split_of(path, part), label) for path, part, label in files]
    odd = [(path, split_of(path, part), label) for path, part, label in not_images]
    return check_files(root, listed, odd, progress=opts.progress)


def _hashes(findings: Findings, split: AuditSplit) -> list[str | None]:
    if findings.files is not None:
        return [findings.files.hashes.get(i) for i in split.ids]
    return dup.pixel_hashes(split.dataset.images)


def _duplicates(findings: Findings, embedder: Predictor) -> None:
    """Exact pairs by pixel hash, near pairs by embedding similarity: within each split and test x train."""
    opts, splits = findings.options, findings.splits
    unit, mirror = {}, {}
    for name, s in splits.items():
        plain, flipped = dup.embed(embedder, s.dataset, opts.embedding, workers=opts.workers, progress=opts.progress)
        unit[name], mirror[name] = plain, flipped
    centre = unit["train"].nanmean(dim=0) if opts.embedding == "model" else None
    unit = {name: dup.normalised(e, centre) for name, e in unit.items()}
    mirror = {name: dup.normalised(e, centre) for name, e in mirror.items()}
    hashes = {name: _hashes(findings, s) for name, s in splits.items()}
    options = {"top_k": opts.top_k, "progress": opts.progress}
    for name in SPLITS:
        near, best = dup.similar_pairs(unit[name], None, opts.threshold, mirrored=mirror[name], **options)
        findings.pairs[name] = dup.merged(dup.exact_pairs(hashes[name]), near)
        findings.nearest[name] = best
    keys = (unit["train"], mirror["train"])
    near, best = dup.similar_pairs(unit["test"], keys, opts.threshold, desc="test vs train", **options)
    findings.pairs["test_train"] = dup.merged(dup.exact_pairs(hashes["test"], hashes["train"]), near)
    findings.nearest["test_train"] = best
