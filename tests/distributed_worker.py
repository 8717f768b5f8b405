"""Worker for tests/test_distributed.py, launched by torchrun with 1 or N processes.

Trains resnet20 on the embedded CIFAR-10 sample for a few steps with the library's own pieces (sharded BatchLoader,
SyncBatchNorm, DDP, train_step) and writes, on rank 0, the global mean loss of every step and the final weights.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from resnetkit import distributed
from resnetkit.data.cifar import load_sample
from resnetkit.data.loader import BatchLoader
from resnetkit.engine.fastpath import speed_up_for_training
from resnetkit.engine.loop import train_step
from resnetkit.models import create_model
from resnetkit.optim import build_sgd
from resnetkit.transforms import preprocessing_for


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sync-bn", action="store_true")
    parser.add_argument("--float64", action="store_true", help="compare algorithms, not fp32 noise")
    parser.add_argument("--widths", type=int, nargs=3, default=[16, 32, 64], help="ResNet-20's stage widths")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with distributed.process_group("cpu") as env:
        torch.manual_seed(0)
        dtype = torch.float64 if args.float64 else torch.float32
        model = create_model("resnet20", num_classes=10, widths=args.widths).to(dtype)
        if args.sync_bn:
            model = distributed.convert_sync_batchnorm(model, "cpu")
        forward = speed_up_for_training(
            model, compile=False, wrap=lambda m: distributed.wrap_model(m, torch.device("cpu"))
        )
        prep = preprocessing_for(model.default_cfg, "cifar")
        loader = BatchLoader(
            load_sample("train"), prep, batch_size=args.batch_size, train=True, seed=0,
            rank=env.rank, world_size=env.world_size,
        )  # fmt: skip
        optimizer = build_sgd(model, 0.05, 0.9, 5e-4, True, True)
        losses = []
        batches = ((x, y) for epoch in range(args.steps) for x, y in loader.epoch(epoch))
        for _, (x, y) in zip(range(args.steps), batches, strict=False):
            loss, _ = train_step(forward, x.to(dtype), y, optimizer, label_smoothing=0.1)
            total = distributed.all_reduce_sum(
                torch.stack([loss.double() * y.shape[0], torch.tensor(float(y.shape[0]))])
            )
            losses.append(float(total[0] / total[1]))
        distributed.broadcast_buffers(model)
        if env.is_main:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "losses.json").write_text(json.dumps({"losses": losses, "world_size": env.world_size}))
            torch.save(model.state_dict(), args.out / "weights.pt")


if __name__ == "__main__":
    main()
