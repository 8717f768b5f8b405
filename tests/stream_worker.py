"""Worker for tests/test_stream.py, launched by torchrun: streams one epoch of an image folder through the real
StreamLoader (its DataLoader reading the real files) and writes which images this process decoded."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from resnetkit import distributed
from resnetkit.data.stream import StreamingFolder, StreamLoader, stream_image_folder, transforms_for
from resnetkit.models import create_model
from resnetkit.transforms import preprocessing_for


class Recording(StreamingFolder):
    """Remembers every image index it is asked to decode (in this process: the loader runs with 0 workers)."""

    seen: list[int] = []

    def __getitem__(self, key: tuple[int, int]):  # type: ignore[override]
        Recording.seen.append(key[0])
        return super().__getitem__(key)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epoch", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with distributed.process_group("cpu") as env:
        pre = preprocessing_for(create_model("resnet18").default_cfg, "imagenet", 32)
        train, _ = stream_image_folder(args.folder, *transforms_for(pre))
        data = Recording([(Path(p), y) for p, y in train.samples], train.classes, train.info, train.transform)
        loader = StreamLoader(
            data,
            pre,
            batch_size=args.batch_size,
            train=True,
            seed=0,
            rank=env.rank,
            world_size=env.world_size,
            workers=0,
        )
        shapes = [tuple(x.shape) for x, _ in loader.epoch(args.epoch)]
        files = [data.samples[i][0] for i in Recording.seen]
        args.out.mkdir(parents=True, exist_ok=True)
        record = {"files": files, "batches": shapes, "world_size": env.world_size, "n": len(data)}
        (args.out / f"rank{env.rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
