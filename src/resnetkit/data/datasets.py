"""In-memory image datasets: every image as uint8 (N, C, H, W), augmented later in whole batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ImageTensorDataset:
    """Images held in memory as one uint8 tensor (N, C, H, W) with int64 labels (N,) and class names.

    Small-image datasets (CIFAR, decoded image folders) fit in memory; holding them as one tensor lets
    augmentation run on whole batches with tensor ops instead of per image through PIL (issue 3, 4).
    `info` records provenance (source folder, split, skipped files) for the run folder.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.labels.shape[0]} labels for {self.images.shape[0]} images")
        self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: torch.Tensor, **info: Any) -> ImageTensorDataset:
        """The images at `indices` (a copy), with `info` added to the provenance record."""
        return ImageTensorDataset(self.images[indices], self.labels[indices], list(self.classes), {**self.info, **info})
