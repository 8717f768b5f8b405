"""Batches of an in-memory dataset, augmented as whole batches, reproducible and resumable at any batch."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from resnetkit.data.datasets import ImageTensorDataset
from resnetkit.transforms import Preprocessing


class BatchLoader:
    """Shuffled (train) or sequential (eval) batches of normalised, augmented images.

    All randomness comes from generators seeded by (seed, epoch, batch), so a run resumed at batch k of an
    epoch sees exactly the batches an uninterrupted run would have seen.
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
    ) -> None:
        if len(dataset) == 0:
            raise ValueError("cannot batch an empty dataset")
        self.dataset = dataset
        self.preprocessing = preprocessing
        self.batch_size = min(batch_size, len(dataset)) if train else batch_size
        self.train = train
        self.seed = seed
        self.device = torch.device(device)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.train else -(-n // self.batch_size)  # train drops the ragged tail

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.train:
            return torch.arange(len(self.dataset))
        return torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(_mix(self.seed, epoch)))

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches `start`.. of `epoch` as (images float32 channels_last, labels int64) on the device."""
        order = self._order(epoch)
        for index in range(start, len(self)):
            take = order[index * self.batch_size : (index + 1) * self.batch_size]
            images, labels = self.dataset.images[take], self.dataset.labels[take]
            if self.train:
                gen = torch.Generator().manual_seed(_mix(self.seed, epoch, index + 1))
                x = self.preprocessing.train_batch(images, gen)
            else:
                x = self.preprocessing.eval_batch(images)
            yield x.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)


def _mix(*values: int) -> int:
    """A 63-bit seed from several integers (stable across processes, unlike hash())."""
    h = 1469598103934665603
    for v in values:
        h = ((h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0x7FFFFFFFFFFFFFFF
    return h
