"""Issue 18's table: each model's MACs, parameters, size, top-1 on the 10,000 CIFAR-10 test images and CPU
inference speed, measured in ONE process so the speed ratios compare like with like.

    python benchmarks/compress_table.py --data-dir ../shared/data/cifar-10-batches-bin \\
        resnet56.rk_cifar10 runs/r56_pruned_l1 resnet20.rk_cifar10 runs/r20_kd_seed0 runs/deploy/resnet56.int8.onnx ...

Every model runs as `resnetkit eval` runs it (checkpoints on the fast path: BatchNorm folded, channels_last, no
compile; exported files on ONNX Runtime). Speed: `--rounds` rounds, each timing every model once over the same
`--images` test images at `--batch-size` (interleaved, so a slow moment of the machine hits all models alike); the
median round per model, and its ratio to the first model. Prints one JSON line per model, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from resnetkit.data.factory import load_eval_split
from resnetkit.models import create_model
from resnetkit.models.complexity import count_macs, count_parameters
from resnetkit.runtime import load_model
from resnetkit.runtime.exported import host_threads


def counts(loaded) -> tuple[int, int]:
    """MACs and parameters of the architecture (an exported file's from the architecture its metadata names)."""
    if loaded.exported is None:
        return count_macs(loaded.model, (3, 32, 32)), count_parameters(loaded.model)
    meta = loaded.exported.meta
    net = create_model(meta.architecture, **dict(meta.model_kwargs))
    return count_macs(net, (3, 32, 32)), count_parameters(net)


def size_mb(source: str, loaded) -> float:
    """The file a user would ship: an exported file's bytes; for a checkpoint, its weights as fp32 safetensors."""
    if loaded.exported is not None:
        return Path(source).stat().st_size / 1e6
    return sum(t.numel() * t.element_size() for t in loaded.model.state_dict().values()) / 1e6


def batches(loaded, images: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    pre = loaded.preprocessing
    return [pre.eval_batch(images[i : i + batch_size]).contiguous(memory_format=loaded.memory_format)
            for i in range(0, len(images), batch_size)]  # fmt: skip


@torch.no_grad()
def run_all(model, xs: list[torch.Tensor]) -> torch.Tensor:
    with host_threads(model):
        return torch.cat([model(x).float() for x in xs])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="+")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--images", type=int, default=2000, help="test images per timed pass")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    rows = []
    for source in args.sources:
        loaded = load_model(source)
        ds = load_eval_split("cifar10", args.data_dir, "test", loaded.preprocessing, progress=False)
        model = loaded.fast(compile=False)
        xs = batches(loaded, ds.images, args.batch_size)
        top1 = float((run_all(model, xs).argmax(1) == ds.labels).float().mean())
        macs, params = counts(loaded)
        timed = xs[: max(1, args.images // args.batch_size)]
        rows.append(dict(source=source, macs=macs, params=params, size_mb=size_mb(source, loaded), top1=top1,
                         model=model, timed=timed, seconds=[]))  # fmt: skip
    for _ in range(args.rounds):
        for r in rows:
            run_all(r["model"], r["timed"][:1])  # warm the caches of this model after the previous one ran
            t0 = time.perf_counter()
            run_all(r["model"], r["timed"])
            r["seconds"].append(time.perf_counter() - t0)
    table(rows)


def table(rows: list[dict]) -> None:
    from resnetkit.hardware import cpu_info

    for r in rows:
        n = sum(x.shape[0] for x in r["timed"])
        r["images_per_s"] = n / statistics.median(r["seconds"])
    base = rows[0]["images_per_s"]
    for r in rows:
        keep = ("source", "macs", "params", "size_mb", "top1", "images_per_s")
        print(json.dumps({k: r[k] for k in keep} | {"x_first": r["images_per_s"] / base, "cpu": cpu_info()[0]}))
    print("\n| model | MACs | params | size MB | top-1 (10k test) | CPU img/s (x first row) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['source']} | {r['macs'] / 1e6:.1f}M | {r['params'] / 1e6:.3f}M | {r['size_mb']:.2f} | "
              f"{100 * r['top1']:.2f}% | {r['images_per_s']:.0f} ({r['images_per_s'] / base:.2f}x) |")  # fmt: skip


if __name__ == "__main__":
    main()
