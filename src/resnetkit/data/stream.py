"""Image folders read from disk every epoch (issue 19): for folders too large to hold decoded in memory.

DataLoader worker processes decode each photo (PIL, with `draft` letting the JPEG decoder downscale big photos
while decoding) and augment it alone (torchvision transforms v2 on uint8 tensors: a random-resized crop of the
whole photo, a flip, an optional TrivialAugment / RandAugment / AutoAugment policy and random erasing); uint8
batches cross to the main process (a quarter of float32's bytes), which normalises them into the layout the
training step takes. The batch order is `BatchLoader`'s (the same seeded permutation per epoch, the same split
of each global batch across torchrun processes), and every image's augmentation is seeded by (seed, epoch,
image), whichever worker decodes it: a run resumed at batch k continues exactly, with no image twice or skipped.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from resnetkit.config import AUGMENT_POLICIES
from resnetkit.data.folder import FOLDER_SPLITS, _check_same_classes, _scan, _split_dirs, no_training_part
from resnetkit.data.images import decode_error_reason, read_image
from resnetkit.data.loader import BatchLoader, mix_seed
from resnetkit.data.paths import require_folder
from resnetkit.data.splits import stratified_split
from resnetkit.errors import DataError
from resnetkit.hardware import release_free_memory
from resnetkit.transforms import Preprocessing

log = logging.getLogger(__name__)

WORKER_TIMEOUT_S = 300  # a worker that delivers nothing for this long is reported, not waited on forever


@dataclass(frozen=True)
class StreamTransform:
    """What a worker does to one photo: training (random crop of the whole photo, flip, policy, erasing) or
    evaluation (short side resized to `resize`, center crop of `size`)."""

    size: int
    train: bool
    resize: int  # evaluation's short side (size / crop_pct, or a FixRes resize)
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    policy: str = "none"
    erasing: float = 0.0

    def __post_init__(self) -> None:
        if self.policy not in AUGMENT_POLICIES:
            raise DataError(f"unknown augmentation policy {self.policy!r}; choose one of {', '.join(AUGMENT_POLICIES)}")

    def pipeline(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """photo (uint8, 3 x H x W) -> the view the model sees (uint8, 3 x size x size)."""
        if not self.train:
            return self._eval_view
        from torchvision.transforms import v2  # torchvision's import costs ~1.4 s: only the paths that use it pay

        extra: list[Any] = {
            "none": [],
            "trivial": [v2.TrivialAugmentWide()],
            "rand": [v2.RandAugment()],
            "auto": [v2.AutoAugment()],
        }[self.policy]
        if self.erasing:
            extra.append(v2.RandomErasing(self.erasing, value=0))
        policy = v2.Compose(extra) if extra else None
        return lambda photo: self._train_view(photo) if policy is None else policy(self._train_view(photo))

    def _train_view(self, photo: torch.Tensor) -> torch.Tensor:
        """torchvision's RandomResizedCrop (its parameter draw) and a horizontal flip. The resize runs on a
        channels-last uint8 crop: PyTorch's antialiased uint8 kernel is ~4x faster there than on a CHW view."""
        from torchvision.transforms import RandomResizedCrop

        i, j, h, w = RandomResizedCrop.get_params(photo, list(self.rrc_scale), [3 / 4, 4 / 3])
        view = _resized(photo[:, i : i + h, j : j + w], (self.size, self.size))
        return view.flip(-1) if bool(torch.rand(1) < 0.5) else view

    def _eval_view(self, photo: torch.Tensor) -> torch.Tensor:
        """The short side resized to `resize`, then the center `size` square."""
        h, w = photo.shape[-2:]
        short = min(h, w)
        resized = _resized(
            photo, (max(self.resize, round(h * self.resize / short)), max(self.resize, round(w * self.resize / short)))
        )
        top, left = (resized.shape[-2] - self.size) // 2, (resized.shape[-1] - self.size) // 2
        return resized[:, top : top + self.size, left : left + self.size]

    def draft_side(self) -> int:
        """The shortest short side the decoder may downscale a photo to without losing what the crop needs:
        evaluation's resize; for training, the side of the smallest crop's square at full output size."""
        return self.resize if not self.train else math.ceil(self.size / math.sqrt(self.rrc_scale[0]))


def _resized(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of a uint8 (3, H, W) image, computed in channels-last uint8."""
    batch = image.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    return F.interpolate(batch, size=size, mode="bilinear", antialias=True)[0]


class StreamingFolder(Dataset):
    """(file, label) samples of a scanned image folder, decoded on demand. Items are asked for as
    (index, seed): the seed fixes the image's augmentation in whichever process decodes it."""

    def __init__(
        self, samples: Sequence[tuple[Path, int]], classes: list[str], info: dict[str, Any], transform: StreamTransform
    ) -> None:
        self.samples = [(str(p), int(label)) for p, label in samples]
        self.classes, self.info, self.transform = list(classes), dict(info), transform
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.int64)
        self._pipeline: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: torch.Tensor, **info: Any) -> StreamingFolder:
        picked = [self.samples[i] for i in indices.tolist()]
        return StreamingFolder([(Path(p), y) for p, y in picked], self.classes, {**self.info, **info}, self.transform)

    def with_transform(self, transform: StreamTransform) -> StreamingFolder:
        return StreamingFolder([(Path(p), y) for p, y in self.samples], self.classes, self.info, transform)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor | None, int, tuple[int, str] | None]:
        index, seed = key
        path, label = self.samples[index]
        if self._pipeline is None:
            self._pipeline = self.transform.pipeline()
        try:
            photo = read_image(path, draft_side=self.transform.draft_side())
        except Exception as e:  # noqa: BLE001  any unreadable file is reported by name, never fatal to a worker
            return None, label, (index, f"{path}: {decode_error_reason(e)}")
        # transforms v2 draw from the global CPU generator: this process's, seeded per image (torch.manual_seed
        # would also visit every accelerator backend: 0.06-0.1 ms per image, measured, for the same CPU draws)
        torch.default_generator.manual_seed(seed)
        return self._pipeline(photo), label, None


def collate(
    items: list[tuple[torch.Tensor | None, int, tuple[int, str] | None]],
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    """The readable images of a batch stacked as uint8 (N, H, W, C) in memory, their labels, and the unreadable
    files' (index, reason). Channels-last memory is what the worker's resize wrote (a straight copy, not a transposing
    one) and what the training step takes; torch's default_collate writes a worker's batch straight into shared
    memory instead of copying it there when it is sent."""
    good = [(x, y) for x, y, _ in items if x is not None]
    failed = [error for x, _, error in items if x is None and error is not None]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), failed
    images = default_collate([x.permute(1, 2, 0) for x, _ in good])
    return images, torch.tensor([y for _, y in good]), failed


class _Batches(Sampler[list[tuple[int, int]]]):
    """This process's (index, augmentation seed) lists for batches `start`.. of `epoch`, in BatchLoader's order."""

    def __init__(self, loader: StreamLoader, epoch: int, start: int) -> None:
        self.loader, self.epoch, self.start = loader, epoch, start

    def __len__(self) -> int:
        return len(self.loader) - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        ld, size = self.loader, self.loader.batch_size
        order = ld.order(self.epoch)
        for index in range(self.start, len(ld)):
            take = order[index * size : (index + 1) * size]
            if ld.train and ld.world_size > 1:
                take = take[ld.local_rows.start : ld.local_rows.stop]
            yield [(i, mix_seed(ld.seed, self.epoch, i)) for i in take.tolist()]


class StreamLoader(BatchLoader):
    """BatchLoader's batches of a `StreamingFolder`, decoded and augmented by `workers` processes (0: in this
    process). Unreadable files are left out of their batch with a warning (an error with `strict`); a worker that
    dies or stalls is one clear DataError, not a hang."""

    def __init__(
        self,
        dataset: StreamingFolder,
        preprocessing: Preprocessing,
        *,
        workers: int = 2,
        strict: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, preprocessing, **kwargs)  # type: ignore[arg-type]
        self.workers, self.strict = workers, strict
        self._warned: set[str] = set()
        self.skipped: list[int] = []  # dataset indices of the unreadable images the latest epoch left out

    def order(self, epoch: int) -> torch.Tensor:
        return self._order(epoch)

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.skipped = []
        if self.workers:
            release_free_memory()  # the workers are forked when the loop starts: not with the kept free heap
        loader = DataLoader(
            self.dataset,
            batch_sampler=_Batches(self, epoch, start),
            num_workers=self.workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            timeout=WORKER_TIMEOUT_S if self.workers else 0,
        )
        layout = torch.channels_last if self.train else self.memory_format
        for images, labels, failed in _surfaced(loader):
            self._report(failed)
            if len(labels):  # images: (N, H, W, C) in memory; the (N, C, H, W) view is channels_last
                # to a GPU as uint8 (a quarter of float32's bytes, from pinned memory) and normalised there
                images = images.permute(0, 3, 1, 2).to(self.device, non_blocking=True)
                with _threads(1 if self.workers and images.device.type == "cpu" else torch.get_num_threads()):
                    x = self.preprocessing.normalize(images, layout)
                yield x.to(self.dtype), labels.to(self.device, non_blocking=True)

    def _report(self, failed: list[tuple[int, str]]) -> None:
        for index, reason in failed:
            self.skipped.append(index)
            if self.strict:
                raise DataError(f"unreadable image {reason} (without --strict it is skipped with a warning)")
            if reason not in self._warned:
                self._warned.add(reason)
                log.warning("skipped unreadable image %s", reason)


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` inside the block. While workers decode on every core, the hand-off's
    normalisation (one pass over memory) runs on one thread: woken, the other threads spin-wait (OpenMP) on the
    cores the workers need, which measured 1,520-1,760 against 1,960-2,160 images/s on 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _surfaced(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]]:
    """The loader's batches; a worker killed (out of memory, a signal) or stalled becomes one DataError line."""
    try:
        yield from loader
    except RuntimeError as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "DataLoader" not in text and "worker" not in text:
            raise
        raise DataError(
            f"an image-loading worker failed: {text} (fewer --workers, or --workers 0 to see why)"
        ) from None


def loader_for(dataset: Any, preprocessing: Preprocessing, *, workers: int, strict: bool, **kwargs: Any) -> BatchLoader:
    """The loader for `dataset`: streamed from disk for a StreamingFolder, batched in memory otherwise."""
    if isinstance(dataset, StreamingFolder):
        return StreamLoader(dataset, preprocessing, workers=workers, strict=strict, **kwargs)
    return BatchLoader(dataset, preprocessing, **kwargs)


def stream_image_folder(
    data_dir: str | Path,
    train: StreamTransform,
    evaluate: StreamTransform,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[StreamingFolder, StreamingFolder]:
    """(train, held-out) of an image folder, as `folder.load_image_folder` splits it (train/ + val/, or a seeded
    stratified `val_fraction` of class folders), nothing decoded yet. Files are only scanned here: an unreadable
    one is found when its batch is read (and, unlike in memory mode, still counts in the held-out draw)."""
    root = require_folder(data_dir, "image folder")
    train_dir, val_dir = _split_dirs(root)
    if val_dir is not None:
        scans = [_scan(train_dir), _scan(val_dir)]
        _check_same_classes(*scans)
        return _streamed(root, scans[0], "train", train), _streamed(root, scans[1], "val", evaluate)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    full = _streamed(root, _scan(train_dir), "all", train)
    val_idx, train_idx = stratified_split(full.labels, full.classes, val_fraction, seed)
    held_out = [Path(full.samples[i][0]).relative_to(root).as_posix() for i in val_idx.tolist()]
    record = {"val_seed": seed, "val_fraction": val_fraction, "held_out": held_out}
    val = full.subset(val_idx, split="val", **record).with_transform(evaluate)
    return full.subset(train_idx, split="train", **record), val


def stream_folder_split(
    data_dir: str | Path,
    split: str,
    evaluate: StreamTransform,
    *,
    trained_on: bool = True,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> StreamingFolder:
    """`folder.load_image_folder_split`'s part of an image folder (the same choice of images, the same `info`
    keys, with `files` relative to the folder), streamed: nothing is decoded until it is evaluated."""
    if split not in FOLDER_SPLITS:
        raise DataError(f"unknown split {split!r} for an image folder; choose from {', '.join(FOLDER_SPLITS)}")
    root = require_folder(data_dir, "image folder")
    train_dir, val_dir = _split_dirs(root)
    if val_dir is None and trained_on and split != "all":
        train, val = stream_image_folder(root, evaluate, evaluate, val_fraction=val_fraction, seed=seed)
        part = train if split == "train" else val
    elif val_dir is None and split == "train":
        raise no_training_part(root)
    elif val_dir is None:
        part = _streamed(root, _scan(train_dir), "all", evaluate)
    elif split == "all":
        scans = [_scan(train_dir), _scan(val_dir)]
        _check_same_classes(*scans)
        parts = [_streamed(root, s, name, evaluate) for s, name in zip(scans, ("train", "val"), strict=True)]
        info = {
            **parts[0].info,
            "split": "all",
            "folder": ".",
            "parts": [p.info["folder"] for p in parts],
            "not_images": parts[0].info["not_images"] + parts[1].info["not_images"],
        }
        part = StreamingFolder([(Path(p), y) for q in parts for p, y in q.samples], parts[0].classes, info, evaluate)
    else:
        chosen = (train_dir, "train") if split == "train" else (val_dir, "val")
        part = _streamed(root, _scan(chosen[0]), chosen[1], evaluate)
    part.info["files"] = [Path(p).relative_to(root).as_posix() for p, _ in part.samples]
    return part


def _streamed(root: Path, scan: Any, split: str, transform: StreamTransform) -> StreamingFolder:
    prefix = scan.root.relative_to(root).as_posix()
    info = {
        "source": str(root.resolve()),
        "split": split,
        "folder": prefix,
        "streamed": True,
        "not_images": [f.relative_to(root).as_posix() for f in scan.not_images],
    }
    if scan.not_images:
        log.warning("%s: ignored %d file(s) that are not images", root, len(scan.not_images))
    return StreamingFolder(scan.samples, scan.classes, info, transform)


def count_images(data_dir: str | Path) -> int:
    """Image files under an image folder's class folders (train/ and the held-out folder, or the class folders)."""
    root = require_folder(data_dir, "image folder")
    train_dir, val_dir = _split_dirs(root)
    return sum(len(_scan(d).samples) for d in (train_dir, val_dir) if d is not None)


def transforms_for(pre: Preprocessing, policy: str = "none", erasing: float = 0.0) -> tuple[StreamTransform, ...]:
    """(training, evaluation) worker transforms equivalent to `pre`'s ImageNet-style preset."""
    resize = pre.storage_size
    train = StreamTransform(pre.train_crop, True, resize, tuple(pre.rrc_scale), policy, erasing)
    return train, StreamTransform(pre.size, False, resize)


def stream_workers(asked: int | None) -> int:
    """Decoding processes: as asked, else one per CPU core (at most 8)."""
    if asked is not None:
        return asked
    return min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1), 8)
