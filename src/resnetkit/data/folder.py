"""Image-folder datasets (`root/<class>/<image>`), decoded once into memory as uint8 tensors.

Every image is decoded, oriented, converted to RGB and resized to one square storage size when the folder
is loaded; augmentation then runs on whole batches of tensors (random crops, flips, random-resized-crops)
instead of per image through PIL. Decoding is the slow part, so JPEGs are decoded at reduced scale
(`Image.draft`), a small thread pool decodes in parallel (PIL releases the GIL) and the result can be cached.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from resnetkit.data.datasets import ImageTensorDataset
from resnetkit.data.images import read_image
from resnetkit.data.paths import require_folder
from resnetkit.data.splits import stratified_split
from resnetkit.errors import DataError
from resnetkit.files import atomic_write

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
HELD_OUT_DIRS = ("val", "valid", "validation", "test")  # first one present wins
FOLDER_SPLITS = ("train", "val", "test", "all")  # load_image_folder_split; "test" is "val" (the held-out part)
DECODE_WORKERS = 2
_CACHE_VERSION = "folder-v1"  # bump when decoding changes, so old caches are not reused
_WARN_FIRST = 5  # how many file names a warning spells out before "and N more"


def is_image_file(path: Path) -> bool:
    """Whether `path` has one of the image extensions (case-insensitive) and is not a hidden file."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


# ---------------------------------------------------------------------------------------------------------
# Scanning folders


@dataclass
class _Scan:
    """What a class-folder scan found: classes, (file, label) samples and files that are not images."""

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]]
    not_images: list[Path] = field(default_factory=list)


def _visible_files(folder: Path) -> Iterator[Path]:
    """Files under `folder` (recursive, sorted), skipping hidden files and folders (.DS_Store, ._x.jpg)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            yield path


def _scan(root: Path) -> _Scan:
    require_folder(root, "image folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class sub-folders (expected {root}/<class name>/<image files>)")
    if len(classes) < 2:
        raise DataError(f"{root} needs at least 2 classes (one sub-folder per class), found 1: {classes[0]}")
    scan = _Scan(root, classes, [])
    for label, name in enumerate(classes):
        files = list(_visible_files(root / name))
        images = [f for f in files if is_image_file(f)]
        if not images:
            raise DataError(f"class folder {root / name} has no images ({_extension_list()})")
        scan.samples += [(f, label) for f in images]
        scan.not_images += [f for f in files if not is_image_file(f)]
    return scan


def _extension_list() -> str:
    return "extensions " + " ".join(sorted(IMAGE_EXTENSIONS))


def scan_image_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """The sorted class sub-folder names of `root` and its (image file, label) pairs, files sorted.

    Hidden files and files without an image extension are left out. Raises DataError when the folder is
    missing, has fewer than 2 class sub-folders, or a class folder holds no images."""
    scan = _scan(Path(root))
    return scan.classes, scan.samples


def folder_files(data_dir: str | Path) -> tuple[list[tuple[Path, str, str]], list[tuple[Path, str, str]]]:
    """Every image file of an image folder as (file, part, class name) — part "train" or "val" in the train/ + val/
    layout, "all" for a folder of class sub-folders — and, the same way, the files among them that are not images."""
    root = require_folder(data_dir, "image folder")
    train_dir, val_dir = _split_dirs(root)
    parts = {"train": train_dir, "val": val_dir} if val_dir is not None else {"all": train_dir}
    files: list[tuple[Path, str, str]] = []
    not_images: list[tuple[Path, str, str]] = []
    for part, folder in parts.items():
        scan = _scan(folder)
        files += [(path, part, scan.classes[label]) for path, label in scan.samples]
        not_images += [(path, part, path.relative_to(folder).parts[0]) for path in scan.not_images]
    return files, not_images


def list_image_files(paths: Sequence[str | Path]) -> list[Path]:
    """Image files named by `paths`: files as given, folders expanded recursively (sorted), duplicates dropped.

    Used by `resnetkit predict IMAGE_OR_FOLDER...`. A missing path, an explicit file without an image
    extension, or finding no image at all raises DataError."""
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise DataError(f"{path} does not exist")
        if path.is_dir():
            found.update(dict.fromkeys(f for f in _visible_files(path) if is_image_file(f)))
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            found[path] = None
        else:
            raise DataError(f"{path} is not an image file ({_extension_list()})")
    if not found:
        raise DataError(f"no image files found in {', '.join(str(p) for p in paths) or 'no paths'}")
    return list(found)


# ---------------------------------------------------------------------------------------------------------
# Decoding a folder (with an optional cache)


@dataclass
class _Decoded:
    """The decoded images of one scanned folder; `files` are relative to the folder, one per image."""

    images: torch.Tensor
    labels: torch.Tensor
    files: list[str]
    skipped: list[str]  # "relative/path: reason"

    def payload(self) -> dict[str, Any]:
        return {"images": self.images, "labels": self.labels, "files": self.files, "skipped": self.skipped}


def _try_load(path: Path, size: int) -> torch.Tensor | str:
    try:
        return read_image(path, size=size)
    except DataError as e:
        return str(e.__cause__ or e)


def _decode(scan: _Scan, size: int, *, strict: bool, progress: bool, desc: str) -> _Decoded:
    """Decode every sample of `scan` on a small thread pool, keeping the file order."""
    n = len(scan.samples)
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    keep = torch.zeros(n, dtype=torch.bool)
    skipped = []
    pool = ThreadPoolExecutor(max_workers=DECODE_WORKERS)
    try:
        results = pool.map(_try_load, [f for f, _ in scan.samples], [size] * n)
        with tqdm(results, total=n, desc=desc, unit="img", disable=None if progress else True) as bar:
            for i, (result, (path, _)) in enumerate(zip(bar, scan.samples, strict=True)):
                if isinstance(result, str):
                    if strict:
                        raise DataError(f"cannot read image {path}: {result} (strict mode)")
                    skipped.append(f"{path.relative_to(scan.root).as_posix()}: {result}")
                else:
                    images[i], keep[i] = result, True
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    labels = torch.tensor([label for _, label in scan.samples], dtype=torch.int64)
    files = [f.relative_to(scan.root).as_posix() for (f, _), k in zip(scan.samples, keep.tolist(), strict=True) if k]
    return _Decoded(images[keep] if skipped else images, labels[keep], files, skipped)


def _cache_path(scan: _Scan, size: int, cache_dir: Path) -> Path:
    """cache_dir/folder-<sha1>.pt, keyed by the folder, the storage size and every file's size and mtime."""
    entries = []
    for path, _ in scan.samples:
        stat = path.stat()
        entries.append((path.relative_to(scan.root).as_posix(), stat.st_size, stat.st_mtime_ns))
    key = repr((_CACHE_VERSION, str(scan.root.resolve()), size, sorted(entries)))
    return Path(cache_dir) / f"folder-{hashlib.sha1(key.encode()).hexdigest()}.pt"


def _read_cache(path: Path, scan: _Scan, size: int) -> _Decoded | None:
    """The cached decode, or None when it is missing or unusable (a corrupt file is rebuilt, not fatal)."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, weights_only=True)
        decoded = _Decoded(data["images"], data["labels"], list(data["files"]), list(data["skipped"]))
        n = len(decoded.files)
        if (
            decoded.images.shape != (n, 3, size, size)
            or decoded.labels.shape != (n,)
            or decoded.images.dtype != torch.uint8
        ):
            raise ValueError(f"unexpected shapes {tuple(decoded.images.shape)}, {tuple(decoded.labels.shape)}")
        if n and int(decoded.labels.max()) >= len(scan.classes):
            raise ValueError("label out of range")
    except Exception as e:  # torch.load raises many types on a damaged file; any of them means "rebuild"
        logger.warning("ignoring unreadable cache %s (%s); rebuilding it", path, e)
        return None
    return decoded


def _write_cache(path: Path, decoded: _Decoded) -> None:
    """Written atomically, so an interrupted run never leaves a half cache."""
    payload = decoded.payload()
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _decode_cached(scan: _Scan, size: int, *, strict: bool, progress: bool, cache_dir: Path | None) -> _Decoded:
    cache = _cache_path(scan, size, cache_dir) if cache_dir is not None else None
    decoded = _read_cache(cache, scan, size) if cache is not None else None
    if decoded is not None:
        logger.info("loaded %d decoded images of %s from cache %s", len(decoded.files), scan.root, cache)
        if strict and decoded.skipped:
            raise DataError(f"cannot read image {scan.root / decoded.skipped[0]} (strict mode)")
        return decoded
    decoded = _decode(scan, size, strict=strict, progress=progress, desc=f"decoding {scan.root.name}")
    if cache is not None:
        _write_cache(cache, decoded)
    return decoded


# ---------------------------------------------------------------------------------------------------------
# Public loader


def load_image_folder(
    data_dir: str | Path,
    *,
    size: int,
    val_fraction: float = 0.1,
    seed: int = 0,
    strict: bool = False,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    """Decode an image folder into (train, val) in-memory datasets stored at `size` x `size`.

    Layouts: `data_dir/train/<class>/...` with `val/` (or `valid/`, `validation/`, `test/`) as the held-out
    part; or `data_dir/<class>/...` (or `data_dir/train/` alone), from which a stratified, seeded
    `val_fraction` is held out per class (at least one image on each side) and recorded in `info`.
    Unreadable files are skipped with one warning, or raise DataError with `strict=True`. With `cache_dir`,
    the decoded tensors are saved there and reused while no file changes."""
    root = require_folder(data_dir, "image folder")
    train_dir, val_dir = _split_dirs(root)
    opts: dict[str, Any] = dict(size=size, strict=strict, cache_dir=cache_dir, progress=progress)
    if val_dir is not None:
        train, val = _load_parts(root, {"train": train_dir, "val": val_dir}, **opts)
        return train, val
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    [full] = _load_parts(root, {"all": train_dir}, **opts)
    return _split_held_out(full, val_fraction=val_fraction, seed=seed)


def load_image_folder_split(
    data_dir: str | Path,
    split: str,
    *,
    size: int,
    trained_on: bool = True,
    val_fraction: float = 0.1,
    seed: int = 0,
    strict: bool = False,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> ImageTensorDataset:
    """One part of an image folder, to evaluate a model on; `info["split"]` says which part was taken.

    "all": every image (train/ and val/ together in that layout). "val" (or "test"): the held-out part: the
    held-out folder (val/ ...) when there is one; else, in a folder of class sub-folders, the seeded
    `val_fraction` that `load_image_folder` holds out when the model was `trained_on` this folder, and every image
    when it was not (it saw none of them). "train": train/, or the rest of that seeded split. Options as in
    `load_image_folder`; only the folders the part needs are decoded."""
    if split not in FOLDER_SPLITS:
        raise DataError(f"unknown split {split!r} for an image folder; choose from {', '.join(FOLDER_SPLITS)}")
    root = require_folder(data_dir, "image folder")
    train_dir, val_dir = _split_dirs(root)
    opts: dict[str, Any] = dict(size=size, strict=strict, cache_dir=cache_dir, progress=progress)
    if val_dir is None and trained_on and split != "all":
        train, val = load_image_folder(root, val_fraction=val_fraction, seed=seed, **opts)
        return train if split == "train" else val
    if val_dir is None and split == "train":
        raise no_training_part(root)
    if val_dir is None:
        return _load_parts(root, {"all": train_dir}, **opts)[0]
    if split == "all":
        return _concat(root, _load_parts(root, {"train": train_dir, "val": val_dir}, **opts))
    return _load_parts(root, {"train": train_dir} if split == "train" else {"val": val_dir}, **opts)[0]


def no_training_part(root: Path) -> DataError:
    return DataError(
        f"{root} has class sub-folders only and the model was not trained on it, so it has no training part; "
        "split 'all' scores every image"
    )


def _load_parts(
    root: Path, dirs: dict[str, Path], *, size: int, strict: bool, cache_dir: Path | None, progress: bool
) -> list[ImageTensorDataset]:
    """Scan and decode each folder of `dirs` (split name -> folder); with two, their classes must agree."""
    if size < 1:
        raise DataError(f"image size must be positive, got {size}")
    scans = [_scan(d) for d in dirs.values()]
    if len(scans) == 2:
        _check_same_classes(scans[0], scans[1])
    decoded = [_decode_cached(s, size, strict=strict, progress=progress, cache_dir=cache_dir) for s in scans]
    _warn_skipped(root, scans, decoded)
    return [_to_dataset(root, s, d, size, split) for s, d, split in zip(scans, decoded, dirs, strict=True)]


def _concat(root: Path, parts: list[ImageTensorDataset]) -> ImageTensorDataset:
    """The parts of a train/ + val/ folder as one dataset (train/ first), to score every image of it."""
    info: dict[str, Any] = {"source": str(root.resolve()), "split": "all", "folder": "."}
    info.update(parts=[p.info["folder"] for p in parts], storage_size=parts[0].info["storage_size"])
    for key in ("files", "skipped", "not_images"):
        info[key] = [item for p in parts for item in p.info[key]]
    images, labels = torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts])
    return _with_counts(ImageTensorDataset(images, labels, list(parts[0].classes), info))


def _split_dirs(root: Path) -> tuple[Path, Path | None]:
    """(train folder, held-out folder or None) for the layout found in `root`."""
    train = root / "train"
    if not train.is_dir():
        return root, None
    held_out = next((root / name for name in HELD_OUT_DIRS if (root / name).is_dir()), None)
    return train, held_out


def _check_same_classes(train: _Scan, val: _Scan) -> None:
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise DataError(
            f"classes differ between {train.root} and {val.root}: only in {train.root.name}: {only_train or '-'}; "
            f"only in {val.root.name}: {only_val or '-'}"
        )


def _warn_skipped(root: Path, scans: list[_Scan], decoded: list[_Decoded]) -> None:
    """One warning line for the whole load: unreadable files and non-image files, first few of each."""
    skipped = [f"{_prefix(root, s)}{entry}" for s, d in zip(scans, decoded, strict=True) for entry in d.skipped]
    not_images = [f.relative_to(root).as_posix() for s in scans for f in s.not_images]
    parts = []
    if skipped:
        parts.append(f"skipped {len(skipped)} unreadable file(s): {_first_few(skipped)}")
    if not_images:
        parts.append(f"ignored {len(not_images)} file(s) that are not images: {_first_few(not_images)}")
    if parts:
        logger.warning("%s: %s", root, "; ".join(parts))


def _prefix(root: Path, scan: _Scan) -> str:
    rel = scan.root.relative_to(root).as_posix()
    return "" if rel == "." else f"{rel}/"


def _first_few(items: list[str]) -> str:
    shown = ", ".join(items[:_WARN_FIRST])
    return shown if len(items) <= _WARN_FIRST else f"{shown} and {len(items) - _WARN_FIRST} more"


def _to_dataset(root: Path, scan: _Scan, decoded: _Decoded, size: int, split: str) -> ImageTensorDataset:
    """The decoded folder as a dataset; files in `info` are relative to `root` (the data_dir)."""
    prefix = _prefix(root, scan)
    for label, name in enumerate(scan.classes):
        if not bool((decoded.labels == label).any()):
            raise DataError(f"class folder {scan.root / name} has no readable images")
    info = {
        "source": str(root.resolve()),
        "split": split,
        "folder": prefix.rstrip("/") or ".",
        "storage_size": size,
        "files": [prefix + f for f in decoded.files],
        "skipped": [prefix + s for s in decoded.skipped],
        "not_images": [f.relative_to(root).as_posix() for f in scan.not_images],
    }
    return _with_counts(ImageTensorDataset(decoded.images, decoded.labels, list(scan.classes), info))


def _split_held_out(
    full: ImageTensorDataset, *, val_fraction: float, seed: int
) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    """Hold out `val_fraction` of every class (at least 1 image each side), chosen by a seeded permutation."""
    val_idx, train_idx = stratified_split(full.labels, full.classes, val_fraction, seed)
    held_out = _pick(full.info["files"], val_idx)
    record = {"val_seed": seed, "val_fraction": val_fraction, "held_out": held_out}
    train = full.subset(train_idx, split="train", files=_pick(full.info["files"], train_idx), **record)
    val = full.subset(val_idx, split="val", files=held_out, **record)
    return _with_counts(train), _with_counts(val)


def _pick(items: list[str], indices: torch.Tensor) -> list[str]:
    return [items[i] for i in indices.tolist()]


def _with_counts(dataset: ImageTensorDataset) -> ImageTensorDataset:
    """Record the number of images, overall and per class, in `dataset.info`."""
    per_class = torch.bincount(dataset.labels, minlength=dataset.num_classes).tolist()
    dataset.info.update(count=len(dataset), class_counts=dict(zip(dataset.classes, per_class, strict=True)))
    return dataset
