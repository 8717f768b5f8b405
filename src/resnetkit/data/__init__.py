"""Datasets held in memory as uint8 tensors, their readers, and batched augmentation."""

from resnetkit.data.datasets import ImageTensorDataset

__all__ = ["ImageTensorDataset"]
