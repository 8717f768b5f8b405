"""`--exclude FILE`: leave listed images out of the training set (an audit's findings, or a hand-made list).

The file is one of `resnetkit audit`'s CSVs or a plain list. Which column names the images to drop:

- `train_index` / `train_path` (duplicates_test_train.csv): the training copy of a test image (the leak);
- `index_b` / `path_b` (duplicates_train.csv): the second image of each pair, so one copy stays;
- `index` / `path` (label_issues.csv, odd_files.csv, a fold's held-out list).

A `split` column, where there is one, keeps the rows of the training split only (CIFAR's test index 5 is not its
training index 5). A plain list holds one CIFAR index (counting from 0 in the official files) or one image path
(relative to the data folder) per line; `#` starts a comment. Image folders are matched by path, CIFAR by index.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from resnetkit.errors import DataError

# (index column, path column) in the order they are looked for
_COLUMNS = (("train_index", "train_path"), ("index_b", "path_b"), ("index", "path"))


@dataclass(frozen=True)
class Exclusions:
    """The images a file lists: CIFAR indices or folder paths (relative to the data folder), as text."""

    file: str
    items: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.items)


def read_exclusions(path: str | Path) -> Exclusions:
    """The images `path` lists (see the module's rules); DataError for a missing file, an audit CSV without a
    column that names images, or a file that lists nothing."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"--exclude {path}: no such file")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"--exclude {path}: cannot read it as text ({e})") from e
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if lines and "," in lines[0]:
        items = _csv_items(file, lines)
    else:
        items = lines
    if not items:
        raise DataError(f"--exclude {path} lists no images")
    return Exclusions(str(file), tuple(dict.fromkeys(items)))


def _csv_items(file: Path, lines: list[str]) -> list[str]:
    rows = list(csv.DictReader(lines))
    header = set(rows[0]) if rows else set(next(csv.reader(lines[:1])))
    for index_col, path_col in _COLUMNS:
        column = next((c for c in (index_col, path_col) if c in header), None)
        if column is not None:
            break
    else:
        wanted = ", ".join(c for pair in _COLUMNS for c in pair)
        raise DataError(f"--exclude {file}: a CSV needs one of the columns {wanted}; it has {', '.join(header)}")
    if "split" in header:
        rows = [r for r in rows if r["split"] == "train"]
    return [r[column].strip() for r in rows if (r.get(column) or "").strip()]


def image_ids(dataset: Any, data: str) -> list[str]:
    """What names each image of `dataset` in an exclusion list or an audit: CIFAR's index in its official files,
    an image folder's path relative to the data folder."""
    if data != "folder":
        return [str(i) for i in range(len(dataset))]
    files = dataset.info.get("files")
    if files is not None and len(files) == len(dataset):
        return list(files)
    root = Path(dataset.info["source"])  # a streamed folder: its samples hold full paths
    return [Path(p).relative_to(root).as_posix() for p, _ in dataset.samples]


def exclude_images(dataset: Any, exclusions: Exclusions, data: str) -> Any:
    """`dataset` without the listed images, its `info["excluded"]` saying from which file and how many (run.json
    keeps it). A CIFAR index outside the training set, or a list none of whose images is in it, is a DataError."""
    ids = image_ids(dataset, data)
    if data != "folder":
        bad = [i for i in exclusions.items if not i.isdigit() or int(i) >= len(ids)]
        if bad:
            raise DataError(
                f"--exclude {exclusions.file}: {bad[0]!r} is not an index of the {len(ids)} {data} training images"
                + (f" ({len(bad) - 1} more)" if len(bad) > 1 else "")
            )
    listed = set(exclusions.items)
    keep = [i for i, name in enumerate(ids) if name not in listed]
    removed = len(ids) - len(keep)
    if removed == 0:
        raise DataError(
            f"--exclude {exclusions.file}: none of its {len(exclusions)} images is in the training set "
            f"(paths are relative to the data folder, e.g. {ids[0]!r})"
        )
    if not keep:
        raise DataError(f"--exclude {exclusions.file} lists every training image: nothing would be left to train on")
    record = {"file": str(Path(exclusions.file).resolve()), "listed": len(exclusions), "removed": removed}
    record["not_in_training_set"] = len(exclusions) - removed
    out = dataset.subset(torch.tensor(keep, dtype=torch.int64), excluded=record)
    if "files" in dataset.info and len(dataset.info["files"]) == len(ids):
        out.info["files"] = [ids[i] for i in keep]
    if "class_counts" in dataset.info:
        per_class = torch.bincount(out.labels, minlength=len(out.classes)).tolist()
        out.info.update(count=len(out), class_counts=dict(zip(out.classes, per_class, strict=True)))
    return out
