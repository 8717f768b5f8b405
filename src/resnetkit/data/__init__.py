"""Datasets held in memory as uint8 tensors, their readers, and batched augmentation."""

from resnetkit.data.cifar import load_cifar, load_sample, paper_split
from resnetkit.data.datasets import ImageTensorDataset
from resnetkit.data.folder import list_image_files, load_image_folder
from resnetkit.data.images import read_image
from resnetkit.data.loader import BatchLoader

__all__ = [
    "BatchLoader",
    "ImageTensorDataset",
    "list_image_files",
    "load_cifar",
    "load_image_folder",
    "load_sample",
    "paper_split",
    "read_image",
]
