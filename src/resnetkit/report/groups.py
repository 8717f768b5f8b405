"""Group attributes for fairness tables: a CSV that maps every evaluated image to a group."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

from resnetkit.errors import ResnetkitError

log = logging.getLogger(__name__)

IMAGE_COLUMN = "image"
GROUP_COLUMN = "group"
_SHOW = 3  # how many missing image names an error spells out


class ReportError(ResnetkitError):
    """A report that cannot be made as asked."""


class GroupFileError(ReportError):
    """A group CSV that cannot be read, lacks a column, or does not cover every evaluated image."""


@dataclass
class GroupAssignment:
    """The group of every evaluated image: `index[i]` points into `names` (sorted)."""

    column: str
    names: list[str]
    index: torch.Tensor


def normalise_image_id(value: str) -> str:
    """How ids are compared: paths with forward slashes and no leading "./", CIFAR indices without leading zeros."""
    text = value.strip().replace("\\", "/")
    if text.isdigit():
        return str(int(text))
    return PurePosixPath(text).as_posix().removeprefix("./")


def read_groups(
    path: str | Path,
    image_ids: Sequence[str],
    *,
    image_column: str = IMAGE_COLUMN,
    group_column: str = GROUP_COLUMN,
) -> GroupAssignment:
    """Read `path` (a header row, then one row per image) and give each of `image_ids` its group.

    The image column holds the file path relative to the data folder (image folders, e.g. `val/cat/1.jpg`) or
    the index in the evaluated split (CIFAR). Other columns are allowed (e.g. several attributes; pick one with
    `group_column`); rows for images that were not evaluated are ignored. Errors: a missing file or column, a
    duplicate or empty entry, and any evaluated image without a row.
    """
    rows = _read_rows(Path(path), image_column, group_column)
    groups: dict[str, str] = {}
    for line, row in rows:
        image, group = normalise_image_id(row[image_column] or ""), (row[group_column] or "").strip()
        if not image or not group:
            raise GroupFileError(f"{path} line {line}: empty {image_column if not image else group_column!r} value")
        if image in groups:
            raise GroupFileError(f"{path} line {line}: image {image!r} appears twice")
        groups[image] = group
    wanted = [normalise_image_id(i) for i in image_ids]
    missing = [i for i in wanted if i not in groups]
    if missing:
        shown = ", ".join(missing[:_SHOW]) + (f" and {len(missing) - _SHOW} more" if len(missing) > _SHOW else "")
        raise GroupFileError(f"{path} has no row for {len(missing)} of the {len(wanted)} evaluated images: {shown}")
    extra = len(groups) - len(set(wanted))
    if extra:
        log.info("%s: %d rows name images outside the evaluated split; ignored", path, extra)
    names = sorted({groups[i] for i in wanted})
    position = {name: k for k, name in enumerate(names)}
    return GroupAssignment(group_column, names, torch.tensor([position[groups[i]] for i in wanted], dtype=torch.long))


def _read_rows(path: Path, image_column: str, group_column: str) -> list[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise GroupFileError(f"group CSV not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise GroupFileError(f"cannot read {path} as CSV: {e}") from None
    if not header:
        raise GroupFileError(f"{path} is empty; expected a header row with {image_column!r} and {group_column!r}")
    absent = [c for c in (image_column, group_column) if c not in header]
    if absent:
        raise GroupFileError(
            f"{path} has no column {' or '.join(repr(c) for c in absent)}; its columns are {', '.join(header)} "
            "(choose them with --image-column / --group-column)"
        )
    if not rows:
        raise GroupFileError(f"{path} has a header but no rows")
    return rows
