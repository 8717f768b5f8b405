"""Preprocessing presets. `DataConfig` is the single record of how a model wants its input prepared."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DataConfig:
    """What a data pipeline needs to feed a model: read from `model.default_cfg`, never retyped.

    `crop_pct` follows timm: evaluation resizes the short side to size / crop_pct, then center-crops `size`.
    `preset` says which preprocessing the model's weights were made with, explicitly (never guessed from crop_pct).
    `first_conv` and `classifier` (timm's pretrained_cfg fields) name the model's first convolution and its
    head, the two modules that loading weights adapts to another number of input channels or classes; the
    model sets them, so the weights layer never hard-codes an architecture's module names.
    """

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    first_conv: str | None = None
    classifier: str | None = None
    preset: str = "imagenet"  # the preprocessing its weights expect: "cifar" (pad-and-crop, no resize) or "imagenet"

    def with_channels(self, in_chans: int) -> DataConfig:
        """The same config for an input with `in_chans` channels (mean/std averaged when they no longer fit)."""
        if in_chans == len(self.mean):
            return self
        mean = (sum(self.mean) / len(self.mean),) * in_chans
        std = (sum(self.std) / len(self.std),) * in_chans
        return replace(self, input_size=(in_chans, *self.input_size[1:]), mean=mean, std=std)

    def with_model_names(self, model_cfg: DataConfig | None) -> DataConfig:
        """This preprocessing with the module names of `model_cfg` (a model's own default_cfg): the config of
        pretrained weights, placed on the model they were loaded into."""
        if model_cfg is None:
            return self
        return replace(self, first_conv=model_cfg.first_conv, classifier=model_cfg.classifier)

    def to_dict(self) -> dict[str, Any]:
        """Plain types, for JSON and checkpoints (module names that are not set are left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


# --- Batched preprocessing on uint8 tensors (issue 3): one definition for train, eval and predict ---------------

CHANNELS_LAST = torch.channels_last  # the layout of the batches PyTorch models get

PRESETS = ("cifar", "imagenet", "none")
Part = tuple[int, int] | None  # (first row, rows in the whole batch) when a batch is split across processes


@dataclass(frozen=True)
class Preprocessing:
    """How images are stored, augmented for training and prepared for evaluation, from a model's DataConfig.

    `cifar`: the paper's augmentation (4-pixel zero pad, random crop back to size, horizontal flip).
    `imagenet`: random-resized crop + flip for training; resize to size / crop_pct and center crop for
    evaluation. Images are stored once, at `storage_size`, as uint8; everything else runs on whole batches.
    """

    kind: str
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0
    pad: int = 4
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    cutout: int = 0
    train_size: int | None = None  # FixRes (Touvron et al., 2019): train crops smaller than `size`, the eval input

    @property
    def train_crop(self) -> int:
        """The side of a training crop: `train_size` when set (torchvision's 176 for an eval at 224), else `size`."""
        return self.train_size or self.size

    @property
    def storage_size(self) -> int:
        return self.size if self.kind != "imagenet" else int(round(self.size / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocessing:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def normalize(self, images: torch.Tensor, memory_format: torch.memory_format = CHANNELS_LAST) -> torch.Tensor:
        """uint8 or [0, 255] float (N, C, H, W) -> normalised float32, channels_last (faster convolutions on CPU;
        `torch.contiguous_format` for runtimes that take NCHW arrays, such as ONNX Runtime)."""
        scale = [1.0 / (255.0 * s) for s in self.std]
        shift = [m / s for m, s in zip(self.mean, self.std, strict=True)]
        # the layout change on the uint8 batch (a quarter of the bytes), then one float copy scaled in place: the
        # same arithmetic as `images.float() * scale - shift`, in 3 passes over memory instead of 4 with 3 allocations
        x = images.contiguous(memory_format=memory_format).to(torch.float32, copy=True)
        n, c, h, w = x.shape
        if memory_format == torch.channels_last and x.numel():
            # in memory an (N*H, W*C) matrix: broadcasting a W*C row keeps the innermost loop long and vectorised
            # (a per-channel (1, C, 1, 1) broadcast makes it C = 3 long: 3.5x slower, measured on 224 px batches)
            rows = x.permute(0, 2, 3, 1).view(n * h, w * c)
            rows.mul_(torch.tensor(scale * w, device=x.device)).sub_(torch.tensor(shift * w, device=x.device))
            return x
        return x.mul_(torch.tensor(scale, device=x.device).view(1, -1, 1, 1)).sub_(
            torch.tensor(shift, device=x.device).view(1, -1, 1, 1)
        )

    def eval_batch(self, images: torch.Tensor, memory_format: torch.memory_format = CHANNELS_LAST) -> torch.Tensor:
        """Deterministic view: the center `size` crop of the stored images, normalised."""
        return self.normalize(center_crop(images, self.size), memory_format)

    def train_batch(self, images: torch.Tensor, gen: torch.Generator, part: Part = None) -> torch.Tensor:
        """Random augmentation drawn per image from `gen` (seeded per batch, so runs are reproducible).

        `part=(start, total)`: these images are rows start.. of a batch of `total` (one process's share of a
        distributed global batch); the random draws are the whole batch's, so N processes augment exactly as
        one process would.
        """
        if self.kind == "cifar":
            x = self.normalize(random_flip(random_crop(images, self.pad, gen, part), gen, part))
        elif self.kind == "imagenet":
            x = self.normalize(random_resized_crop(images, self.train_crop, self.rrc_scale, gen, part))
        else:
            x = self.eval_batch(images)
        return cutout(x, self.cutout, gen, part) if self.cutout else x


def _draw_rows(n: int, part: Part) -> tuple[int, slice]:
    """How many per-image random values to draw, and which of them belong to these n images."""
    if part is None:
        return n, slice(0, n)
    start, total = part
    return total, slice(start, start + n)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    h, w = images.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"images of {h}x{w} are smaller than the crop {size}")
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]


def random_crop(images: torch.Tensor, pad: int, gen: torch.Generator, part: Part = None) -> torch.Tensor:
    """Zero-pad by `pad` and crop back to the original size at an offset drawn per image (one gather)."""
    n, _, h, w = images.shape
    m, mine = _draw_rows(n, part)
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (m, 1), generator=gen)[mine]
    dx = torch.randint(0, 2 * pad + 1, (m, 1), generator=gen)[mine]
    rows = (dy + torch.arange(h)).view(n, 1, h, 1)
    cols = (dx + torch.arange(w)).view(n, 1, 1, w)
    batch = torch.arange(n).view(n, 1, 1, 1)
    chans = torch.arange(images.shape[1]).view(1, -1, 1, 1)
    return padded[batch, chans, rows, cols]


def random_flip(images: torch.Tensor, gen: torch.Generator, part: Part = None) -> torch.Tensor:
    m, rows = _draw_rows(images.shape[0], part)
    flip = torch.rand(m, generator=gen)[rows] < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def random_resized_crop(
    images: torch.Tensor, size: int, scale: tuple[float, float], gen: torch.Generator, part: Part = None
) -> torch.Tensor:
    """Inception-style crop (area fraction in `scale`, aspect ratio 3/4..4/3) and flip, as one grid_sample."""
    n = images.shape[0]
    m, rows = _draw_rows(n, part)
    area = torch.empty(m).uniform_(scale[0], scale[1], generator=gen)[rows]
    log_ratio = torch.empty(m).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)[rows]
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(m, generator=gen)[rows] * 2 - 1) * (1 - w)
    cy = (torch.rand(m, generator=gen)[rows] * 2 - 1) * (1 - h)
    sign = torch.where(torch.rand(m, generator=gen)[rows] < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * sign, cx, h, cy
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def cutout(x: torch.Tensor, size: int, gen: torch.Generator, part: Part = None) -> torch.Tensor:
    """Zero (the mean, after normalisation) one size x size square per image (DeVries & Taylor, 2017)."""
    n, _, h, w = x.shape
    m, rows = _draw_rows(n, part)
    cy = torch.randint(0, h, (m, 1, 1), generator=gen)[rows]
    cx = torch.randint(0, w, (m, 1, 1), generator=gen)[rows]
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    # rows cy - size // 2 .. cy - size // 2 + size - 1: exactly `size` of them (|d| <= size // 2 gave 9 for size 8)
    top, left = cy - size // 2, cx - size // 2
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return x.masked_fill(inside.unsqueeze(1), 0.0)


def preprocessing_for(cfg: DataConfig, kind: str, size: int | None = None, **options: Any) -> Preprocessing:
    """The preset `kind` at `size` (default: the model's input size) with the model's mean and std."""
    if kind not in PRESETS:
        raise ValueError(f"unknown preprocessing {kind!r}; choose one of {', '.join(PRESETS)}")
    return Preprocessing(kind, size or cfg.input_size[-1], cfg.mean, cfg.std, cfg.crop_pct, **options)
