"""Regenerate the CIFAR-10 sample shipped in the package (src/resnetkit/data/sample/) from the binary release.

Deterministic: the first 200 images of each class in data_batch_1..5 (file order) for train, the first 50
of each class in test_batch for test, written in the CIFAR-10 binary record format and gzipped without a
timestamp, so the same input always gives byte-identical files. SOURCE.md is rewritten with their sha256.

    python scripts/make_cifar_sample.py [--source ../shared/data/cifar-10-batches-bin]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "cifar-10-batches-bin"
OUT = REPO / "src" / "resnetkit" / "data" / "sample"
RECORD = 1 + 3 * 32 * 32  # label byte, then the R, G and B planes
PER_CLASS = {"train": 200, "test": 50}
FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}


def select(records: np.ndarray, per_class: int, num_classes: int = 10) -> np.ndarray:
    """Indices of the first `per_class` records of each class, in file order."""
    labels = records[:, 0]
    keep = np.zeros(len(records), dtype=bool)
    for c in range(num_classes):
        keep[np.flatnonzero(labels == c)[:per_class]] = True
    if np.bincount(labels[keep], minlength=num_classes).min() < per_class:
        raise SystemExit(f"fewer than {per_class} images of some class in the source")
    return np.flatnonzero(keep)


def read_records(source: Path, names: list[str]) -> np.ndarray:
    raw = b"".join((source / n).read_bytes() for n in names)
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)


def write_split(source: Path, split: str) -> tuple[str, str]:
    """Write one split; its file name and a description of the records it holds."""
    records = read_records(source, FILES[split])
    chosen = select(records, PER_CLASS[split])
    name = f"cifar10_sample_{split}.bin.gz"
    (OUT / name).write_bytes(gzip.compress(records[chosen].tobytes(), compresslevel=9, mtime=0))
    last = int(chosen[-1])
    where = f"{FILES[split][last // 10000]} record {last % 10000}"
    return name, f"{len(chosen)} images, the first {PER_CLASS[split]} of each class; the last one taken is {where}"


def write_source_md(described: dict[str, str]) -> None:
    rows = "\n".join(
        f"| `{p.name}` | {p.stat().st_size:,} | `{hashlib.sha256(p.read_bytes()).hexdigest()}` |"
        for p in sorted(OUT.iterdir())
        if p.name != "SOURCE.md"
    )
    text = SOURCE_MD.format(
        train=described["cifar10_sample_train.bin.gz"], test=described["cifar10_sample_test.bin.gz"], rows=rows
    )
    (OUT / "SOURCE.md").write_text(text)


SOURCE_MD = """\
# Embedded CIFAR-10 sample

Real CIFAR-10 images, so that the quickstart and the tests of the data path run offline.

Origin: CIFAR-10, A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", technical report,
University of Toronto, 2009 (https://www.cs.toronto.edu/~kriz/cifar.html), official binary release
`cifar-10-binary.tar.gz` (md5 c32a1d4ab5d03f1284b67883e8d87530). CIFAR-10 has no formal licence; its authors
ask users to cite the report above.

Contents (records copied byte for byte, in file order):
- `cifar10_sample_train.bin.gz`: from `data_batch_1.bin` .. `data_batch_5.bin`, {train}.
- `cifar10_sample_test.bin.gz`: from `test_batch.bin`, {test}.
- `batches.meta.txt`: the 10 class names of the release (labels 0..9), copied unchanged.

Format: gzip of the CIFAR-10 binary records: 1 label byte, then 1024 red, 1024 green and 1024 blue bytes, each
channel a 32x32 image in row-major order. Read by `resnetkit.data.cifar.load_sample`.

Regenerate (the gzip header carries no timestamp or file name, so a given zlib writes byte-identical files):

    python scripts/make_cifar_sample.py --source ../shared/data/cifar-10-batches-bin

| file | bytes | sha256 |
|---|---:|---|
{rows}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the cifar-10-batches-bin folder")
    source = parser.parse_args().source
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "batches.meta.txt").write_bytes((source / "batches.meta.txt").read_bytes())
    described = dict(write_split(source, split) for split in ("train", "test"))
    write_source_md(described)
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
