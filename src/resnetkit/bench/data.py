"""`resnetkit bench data`: the training input pipeline alone at a real image size, resnetkit's streamed folder
against torchvision's `ImageFolder` + standard transforms + `DataLoader`, with the same number of workers."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from resnetkit.bench.baseline import IMAGENET_NORMALIZE, standard_folder_loader
from resnetkit.bench.run import BenchResult
from resnetkit.data.stream import StreamLoader, stream_image_folder, transforms_for
from resnetkit.errors import DataError
from resnetkit.transforms import Preprocessing


def _rate(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], images: int) -> float:
    """Images per second from the second batch on (worker start-up left out) until `images` were delivered."""
    seen, start = 0, None
    for x, _ in batches:
        if start is None:
            start = time.perf_counter()
            continue
        seen += x.shape[0]
        if seen >= images:
            break
    if start is None or seen == 0:
        raise DataError("the folder gave fewer than two batches: lower --batch-size or add images")
    return seen / (time.perf_counter() - start)


def bench_data(
    data_dir: str, img_size: int = 224, workers: int = 2, batch_size: int = 64, images: int = 1024, rounds: int = 3
) -> BenchResult:
    """Median images/s over `rounds` alternating rounds of each pipeline, each delivering `images` training
    images (random-resized crops and flips, normalised float batches in the training process)."""
    train_dir = Path(data_dir) / "train" if (Path(data_dir) / "train").is_dir() else Path(data_dir)
    pre = Preprocessing("imagenet", img_size, *IMAGENET_NORMALIZE, crop_pct=0.875)
    train, _ = stream_image_folder(data_dir, *transforms_for(pre))
    ours = StreamLoader(train, pre, batch_size=batch_size, train=True, workers=workers)
    baseline = standard_folder_loader(str(train_dir), img_size, batch_size, workers)
    rates: dict[str, list[float]] = {"ours": [], "baseline": []}
    for r in range(rounds):
        rates["baseline"].append(_rate(baseline, images))
        rates["ours"].append(_rate(ours.epoch(r), images))
    ips, base = statistics.median(rates["ours"]), statistics.median(rates["baseline"])
    extra = {
        "workers": workers,
        "img_size": img_size,
        "images": images,
        "rounds": rounds,
        "rates": rates,
        "folder": str(train_dir),
    }
    return BenchResult(
        "data",
        "input pipeline",
        batch_size,
        torch.get_num_threads(),
        ips,
        base,
        ips / base,
        0.0,
        0.0,
        False,
        extra=extra,
    )
