"""From a TrainConfig to datasets: which reader, which split, which preprocessing preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from resnetkit.config import DATA_MODES, ConfigError, TrainConfig
from resnetkit.data.datasets import ImageTensorDataset
from resnetkit.data.splits import seeded_order, seeded_split
from resnetkit.errors import DataError
from resnetkit.files import cache_dir
from resnetkit.transforms import DataConfig, Preprocessing, preprocessing_for


@dataclass
class TrainingData:
    """The datasets of a run. `test` is the held-out set reported each epoch (CIFAR test, or an image
    folder's val/); `val`, when asked for, is carved out of the training set and used for model selection."""

    train: ImageTensorDataset
    test: ImageTensorDataset
    classes: list[str]
    preprocessing: Preprocessing
    val: ImageTensorDataset | None = None

    @property
    def selection_split(self) -> str:
        """Where best.pt and early stopping look: the validation split if there is one, else the test set."""
        return "val" if self.val is not None else "test"

    def eval_splits(self) -> dict[str, ImageTensorDataset]:
        return {"val": self.val, "test": self.test} if self.val is not None else {"test": self.test}

    def splits(self) -> dict[str, ImageTensorDataset]:
        return {"train": self.train, **self.eval_splits()}


def default_data_root() -> Path:
    """$RESNETKIT_HOME/data: where CIFAR is looked for (and downloaded to) without --data-dir."""
    return cache_dir() / "data"


def preprocessing_from_config(cfg: TrainConfig, model_cfg: DataConfig) -> Preprocessing:
    kind = cfg.augment
    if kind == "auto":
        kind = "imagenet" if cfg.data == "folder" else "cifar"
    pre = preprocessing_for(
        model_cfg, kind, cfg.img_size, rrc_scale=tuple(cfg.rrc_scale), cutout=cfg.cutout, train_size=cfg.train_img_size
    )
    if cfg.eval_resize:
        if cfg.eval_resize < pre.size:
            raise ConfigError(f"eval_resize {cfg.eval_resize} is smaller than the {pre.size}-pixel evaluation crop")
        pre = dataclasses.replace(pre, crop_pct=pre.size / cfg.eval_resize)
    return pre


def load_eval_split(
    data: str,
    data_dir: str | None,
    split: str,
    preprocessing: Preprocessing,
    *,
    download: bool = False,
    progress: bool = True,
    strict: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    trained_on: bool = True,
) -> ImageTensorDataset:
    """One split stored at the preprocessing's storage size: CIFAR "train" or "test" ("val" is "test"); image
    folders "train", "val" (= "test") or "all", chosen as in `folder.load_image_folder_split`, where `trained_on`
    says whether the model to evaluate was trained on `data_dir` (then its seeded held-out split is kept out)."""
    size = preprocessing.storage_size
    if data == "folder":
        from resnetkit.data.folder import load_image_folder_split

        return load_image_folder_split(
            _folder_dir(data_dir),
            split,
            size=size,
            trained_on=trained_on,
            val_fraction=val_fraction,
            seed=seed,
            strict=strict,
            cache_dir=cache_dir() / "cache",
            progress=progress,
        )
    if split == "all":
        raise DataError(f"split 'all' (every image) is for image folders; {data} has the splits train and test")
    from resnetkit.data.cifar import load_cifar, load_sample

    split = "test" if split == "val" else split
    if data == "sample":
        ds = load_sample(split)
    else:
        root = Path(data_dir) if data_dir else default_data_root()
        ds = load_cifar(root, data, split, download=download, progress=progress)
    return _resize(ds, size)


def describe_split(info: dict[str, Any]) -> str:
    """Which images a dataset of `load_eval_split` holds, in words, from its provenance record (`info`)."""
    source, split = info.get("source", "?"), info.get("split", "?")
    if "paper_split" in info:
        p, name = info["paper_split"], info["dataset"]
        return f"the {p['val_size']} validation images (seed {p['seed']}) held out of {name} train in {source}"
    if "dataset" in info:  # CIFAR and the embedded sample
        return f"the {info['dataset']} {split} set in {source}"
    if split == "all":
        parts = info.get("parts") or ([] if info.get("folder", ".") == "." else [info["folder"]])
        return f"all of {source}" + (f": {' and '.join(f'{p}/' for p in parts)}" if parts else "")
    if "held_out" in info:
        pct, seed = f"{100 * info['val_fraction']:g}%", info["val_seed"]
        which = f"the held-out {pct} (seed {seed})" if split == "val" else f"all but the held-out {pct} (seed {seed})"
        return f"{which} of {source}"
    return f"the {info.get('folder', split)}/ folder of {source}"


def load_training_data(cfg: TrainConfig, model_cfg: DataConfig) -> TrainingData:
    """Train and held-out sets for `cfg`, with the images `cfg.exclude` lists left out of training (before the
    optional validation split and training subset)."""
    pre = preprocessing_from_config(cfg, model_cfg)
    opts = dict(
        download=cfg.download, progress=cfg.progress, strict=cfg.strict, val_fraction=cfg.val_fraction, seed=cfg.seed
    )
    if cfg.data == "folder" and streams(cfg, pre):
        from resnetkit.data.stream import stream_image_folder, transforms_for

        train_tf, eval_tf = transforms_for(pre, cfg.augment_policy, cfg.random_erasing)
        train, test = stream_image_folder(
            _folder_dir(cfg.data_dir), train_tf, eval_tf, val_fraction=cfg.val_fraction, seed=cfg.seed
        )
    elif cfg.data == "folder":
        train, test = _load_folder(cfg.data_dir, pre.storage_size, cfg.val_fraction, cfg.seed, cfg.strict, cfg.progress)
    else:
        train = load_eval_split(cfg.data, cfg.data_dir, "train", pre, **opts)
        test = load_eval_split(cfg.data, cfg.data_dir, "test", pre, **opts)
    if cfg.exclude:
        from resnetkit.data.exclude import exclude_images, read_exclusions

        train = exclude_images(train, read_exclusions(cfg.exclude), cfg.data)
    val = None
    if cfg.val_size:
        from resnetkit.data.cifar import paper_split

        if cfg.val_size >= len(train):
            raise ConfigError(f"val_size {cfg.val_size} leaves no training images (the set has {len(train)})")
        train, val = paper_split(train, cfg.val_size, seed=cfg.seed)
    if cfg.train_subset:
        # In the drawn order, not sorted: the runs trained so far saw their batches in this order.
        train = train.subset(seeded_order(len(train), cfg.seed)[: cfg.train_subset], train_subset=cfg.train_subset)
    if cfg.test_subset and cfg.test_subset < len(test):
        # One draw for every run and seed, so that runs compared with each other are scored on the same images.
        test = test.subset(seeded_split(len(test), cfg.test_subset, 0)[0], test_subset=cfg.test_subset)
    return TrainingData(train, test, list(train.classes), pre, val)


def streams(cfg: TrainConfig, pre: Preprocessing) -> bool:
    """Whether the run reads its image folder from disk each epoch: asked for (`data_mode: stream`, or a per-image
    augmentation policy, which needs the workers), or (auto) the decoded images would exceed `memory_budget_gb`."""
    per_image = cfg.augment_policy != "none" or cfg.random_erasing > 0
    return folder_streams(cfg.data, cfg.data_dir, cfg.data_mode, pre, cfg.memory_budget_gb, per_image=per_image)


def folder_streams(
    data: str,
    data_dir: str | None,
    data_mode: str,
    pre: Preprocessing,
    budget_gb: float = 4.0,
    *,
    per_image: bool = False,
) -> bool:
    """Whether training or evaluation reads an image folder from disk rather than decoding it into memory first:
    asked for (`stream`, or `per_image` augmentation), or (`auto`) the decoded images (uint8, 3 x storage size^2
    bytes each) would need more than `budget_gb`. Only image folders with ImageNet-style preprocessing stream."""
    if data_mode not in DATA_MODES:
        raise ConfigError(f"unknown data mode {data_mode!r}; choose one of {', '.join(DATA_MODES)}")
    if data != "folder" or pre.kind != "imagenet" or data_mode == "memory":
        if data_mode == "stream" or per_image:
            raise ConfigError(
                "--data-mode stream (and augment_policy, random_erasing) is for image folders streamed from disk "
                "(--data folder, ImageNet-style preprocessing: --augment imagenet or auto, not --data-mode memory)"
            )
        return False
    _folder_dir(data_dir)  # --data folder needs --data-dir
    return data_mode == "stream" or per_image or _exceeds_budget(data_dir, pre, budget_gb)


def _exceeds_budget(data_dir: str | None, pre: Preprocessing, budget_gb: float) -> bool:
    """The folder's images, decoded (uint8, 3 x storage size^2 bytes each), would need more than `budget_gb`."""
    from resnetkit.data.stream import count_images

    return count_images(_folder_dir(data_dir)) * 3 * pre.storage_size**2 > budget_gb * 1e9


def _resize(ds: ImageTensorDataset, size: int) -> ImageTensorDataset:
    """Store 32x32 CIFAR images at another size once (e.g. an ImageNet-style model at 64x64)."""
    if ds.images.shape[-1] == size:
        return ds
    resized = torch.nn.functional.interpolate(ds.images.float(), size=(size, size), mode="bilinear", antialias=True)
    images = resized.round().clamp(0, 255).to(torch.uint8)
    return ImageTensorDataset(images, ds.labels, ds.classes, {**ds.info, "stored_size": size})


def _load_folder(
    data_dir: str | None, size: int, val_fraction: float, seed: int, strict: bool, progress: bool
) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    from resnetkit.data.folder import load_image_folder

    cache = cache_dir() / "cache"
    return load_image_folder(
        _folder_dir(data_dir),
        size=size,
        val_fraction=val_fraction,
        seed=seed,
        strict=strict,
        cache_dir=cache,
        progress=progress,
    )


def _folder_dir(data_dir: str | None) -> str:
    if not data_dir:
        raise ConfigError("--data folder needs --data-dir")
    return data_dir
