"""The standard PyTorch way, written plainly as a user would: the baseline of `resnetkit bench`.

Training: a torchvision-style Dataset handing out PIL images, RandomCrop(32, 4) + RandomHorizontalFlip +
ToTensor + Normalize per image, a DataLoader with 2 worker processes, the eager model, SGD.
Inference: the eager model (torchvision's own where it has the architecture), NCHW, torch.no_grad().
Evaluation: the same Dataset with ToTensor + Normalize per image, a DataLoader with 2 workers, the eager model.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset


class CIFAR10Images(Dataset):
    """What torchvision.datasets.CIFAR10 does: HWC uint8 arrays in memory, a PIL image per item."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:  # type: ignore[no-untyped-def]
        self.data = images.permute(0, 2, 3, 1).numpy()
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):  # type: ignore[no-untyped-def]
        img = Image.fromarray(np.asarray(self.data[index]))
        return self.transform(img), self.targets[index]


CIFAR10_NORMALIZE = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))  # as users copy it from tutorials


def standard_train_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128) -> DataLoader:
    import torchvision.transforms as T

    transform = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(*CIFAR10_NORMALIZE),
        ]
    )
    dataset = CIFAR10Images(images, labels, transform)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=2, drop_last=True, persistent_workers=True
    )


def standard_train_steps(model: nn.Module, loader: DataLoader, steps: int) -> int:
    """`steps` plain SGD steps; returns the number of images processed."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()
    model.train()
    seen = 0
    while seen < steps * loader.batch_size:
        for x, y in loader:
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += x.shape[0]
            if seen >= steps * loader.batch_size:
                break
    return seen


def standard_eval_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int = 250) -> DataLoader:
    import torchvision.transforms as T

    transform = T.Compose([T.ToTensor(), T.Normalize(*CIFAR10_NORMALIZE)])
    return DataLoader(CIFAR10Images(images, labels, transform), batch_size=batch_size, shuffle=False, num_workers=2)


@torch.no_grad()
def standard_evaluate(model: nn.Module, loader: DataLoader) -> torch.Tensor:
    """The logits of every image, in order."""
    model.eval()
    return torch.cat([model(x) for x, _ in loader])


def standard_model(name: str, num_classes: int | None = None) -> nn.Module:
    """torchvision's model where torchvision has the architecture, else resnetkit's, eager and in eval mode."""
    import torchvision

    import resnetkit

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if name in torchvision.models.list_models(module=torchvision.models):
        return torchvision.models.get_model(name, **kwargs).eval()
    return resnetkit.create_model(name, **kwargs).eval()


IMAGENET_NORMALIZE = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def standard_folder_loader(folder: str, size: int, batch_size: int, workers: int) -> DataLoader:
    """torchvision's ImageFolder with the standard ImageNet training transforms (RandomResizedCrop, flip,
    ToTensor, Normalize per image), shuffled by a DataLoader with `workers` processes: the usual training input."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    transform = T.Compose(
        [T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(*IMAGENET_NORMALIZE)]
    )
    return DataLoader(
        ImageFolder(folder, transform), batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True
    )
