"""Batches of an in-memory dataset, augmented as whole batches, reproducible and resumable at any batch."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from resnetkit.data.datasets import ImageTensorDataset
from resnetkit.distributed import shard
from resnetkit.transforms import Preprocessing


class BatchLoader:
    """Shuffled (train) or sequential (eval) batches of normalised, augmented images.

    All randomness comes from generators seeded by (seed, epoch, batch), so a run resumed at batch k of an
    epoch sees exactly the batches an uninterrupted run would have seen.

    Across `world_size` processes (torchrun), `batch_size` is the global batch: every process draws the same
    permutation and augmentation randomness and takes its own `batch_size / world_size` rows of each global
    batch (DistributedSampler's sharding of one shared order, with set_epoch built in), so N processes see the
    batches one process would. Evaluation splits the set into contiguous shards: every image exactly once.
    """

    def __init__(
        self,
        dataset: ImageTensorDataset,
        preprocessing: Preprocessing,
        *,
        batch_size: int,
        train: bool,
        seed: int = 0,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype = torch.float32,
        memory_format: torch.memory_format = torch.channels_last,
    ) -> None:
        if len(dataset) == 0:
            raise ValueError("cannot batch an empty dataset")
        self.dataset = dataset
        self.preprocessing = preprocessing
        self.batch_size = min(batch_size, len(dataset)) if train else batch_size
        if train and self.batch_size % world_size:
            raise ValueError(f"the global batch {self.batch_size} is not divisible by {world_size} processes")
        self.train = train
        self.seed = seed
        self.device = torch.device(device)
        self.dtype, self.memory_format = dtype, memory_format  # evaluation batches' layout
        self.rank, self.world_size = rank, world_size
        self.local_rows = shard(self.batch_size, rank, world_size)  # this process's rows of each train batch
        self.eval_items = shard(len(dataset), rank, world_size)  # this process's share of an evaluation

    def __len__(self) -> int:
        """Global batches per epoch (training drops the ragged tail); this process's batches for evaluation."""
        if self.train:
            return len(self.dataset) // self.batch_size
        return -(-len(self.eval_items) // self.batch_size)

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.train:
            return torch.arange(self.eval_items.start, self.eval_items.stop)
        return torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches `start`.. of `epoch` as (images in `dtype`, labels int64) on the device; images channels_last,
        evaluation batches in `memory_format`."""
        order = self._order(epoch)
        rows = self.local_rows
        for index in range(start, len(self)):
            take = order[index * self.batch_size : (index + 1) * self.batch_size]
            if self.train and self.world_size > 1:
                take = take[rows.start : rows.stop]
            if not self.train:  # consecutive images: a view of the stored ones, not a gathered copy
                take = slice(int(take[0]), int(take[-1]) + 1)
            images, labels = self.dataset.images[take], self.dataset.labels[take]
            if self.train:
                gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch, index + 1))
                part = (rows.start, self.batch_size) if self.world_size > 1 else None
                x = self.preprocessing.train_batch(images, gen, part)
            else:
                x = self.preprocessing.eval_batch(images, self.memory_format)
            yield to_device(x, self.device, self.dtype), to_device(labels, self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)


def to_device(batch: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`batch` on `device` (in `dtype`). A host batch bound for a GPU is first pinned (page-locked): from pageable
    memory the driver stages the copy through a pinned buffer of its own and may first wait for the GPU's queued work
    (the previous training step); from pinned memory the copy is queued like a kernel (non_blocking) and the host
    goes on to prepare the next batch while the GPU computes. Nothing is pinned for the CPU (it would add a copy)."""
    if device.type == "cuda" and batch.device.type == "cpu" and not batch.is_pinned():
        batch = batch.pin_memory()
    return batch.to(device, dtype, non_blocking=True)


def mix_seed(*values: int) -> int:
    """A 63-bit seed from several integers (FNV-1a: stable across processes and runs, unlike hash()), e.g.
    mix_seed(seed, epoch) for an epoch's shuffle, mix_seed(seed, epoch, batch + 1) for a batch's augmentation."""
    h = 1469598103934665603
    for v in values:
        h = ((h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0x7FFFFFFFFFFFFFFF
    return h
