"""COCO-format detection datasets (`resnetkit train --task detection --data coco --data-dir D`).

Two layouts are found in D, for each split (train, val):
- COCO's own: `D/annotations/instances_<split>*.json` with the images in `D/<split>*` (named like the JSON's
  suffix: instances_train2017.json -> train2017/) or `D/images/`;
- Roboflow's export: `D/<split>/_annotations.coco.json` beside its images.

Everything is checked before training starts, with one-line errors: the JSON's structure, category and image ids,
image files that are missing or of another size than the JSON says, and boxes that are empty or reach outside their
image. Crowd annotations (`iscrowd: 1`) are left out of the targets, as torchvision's reference scripts do.
Category ids become contiguous labels 1..K in id order; label 0 is the background, as torchvision's detectors expect.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from resnetkit.data.images import decode_error_reason, image_header, read_image
from resnetkit.errors import DataError

BOX_TOLERANCE = 1.0  # pixels a box may reach past the image edge (rounding in exporters) before it is an error
_SHOW = 3  # names spelled out in an error before "and N more"


@dataclass
class CocoSet:
    """One split: class names (background first), image files and each image's boxes (x1, y1, x2, y2) and labels."""

    classes: list[str]
    files: list[Path]
    image_ids: list[int]
    boxes: list[torch.Tensor]  # float32 (N, 4) per image
    labels: list[torch.Tensor]  # int64 (N,) per image
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) as listed (and checked)
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def find_coco_split(data_dir: str | Path, split: str) -> tuple[Path, Path] | None:
    """(annotation JSON, image folder) of `split` in one of the two layouts, or None when the split is absent."""
    root = Path(data_dir)
    roboflow = root / split / "_annotations.coco.json"
    if roboflow.is_file():
        return roboflow, roboflow.parent
    found = sorted((root / "annotations").glob(f"instances_{split}*.json"))
    if not found:
        return None
    suffix = found[0].stem.removeprefix("instances_")
    for images in (root / suffix, root / split, root / "images"):
        if images.is_dir():
            return found[0], images
    raise DataError(f"{found[0]} has no image folder: expected {root / suffix}/ or {root / 'images'}/")


def read_coco(json_path: Path, image_root: Path, classes: list[str] | None = None) -> CocoSet:
    """The checked split. `classes` (the training split's) makes a validation split use the same labels."""
    doc = _load_json(json_path)
    names = _categories(doc, json_path)
    if classes is not None and ["__background__", *names.values()] != classes:
        raise DataError(f"{json_path} has other categories than the training split: {list(names.values())}")
    label_of = {cid: i + 1 for i, cid in enumerate(names)}
    images = _images(doc, json_path, image_root)
    per_image: dict[int, list[tuple[list[float], int]]] = {i: [] for i in images}
    for ann in _list(doc, "annotations", json_path):
        box = _checked_box(ann, images, label_of, json_path)
        if box is not None:
            per_image[ann["image_id"]].append((box, label_of[ann["category_id"]]))
    ids = sorted(images)
    return CocoSet(
        classes=["__background__", *names.values()],
        files=[images[i][0] for i in ids],
        image_ids=ids,
        boxes=[torch.tensor([b for b, _ in per_image[i]], dtype=torch.float32).reshape(-1, 4) for i in ids],
        labels=[torch.tensor([c for _, c in per_image[i]], dtype=torch.int64) for i in ids],
        sizes=[images[i][1:] for i in ids],
        source=str(json_path),
    )


def _load_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path} is not a COCO annotation file (expected an object with images/annotations/categories)")
    return doc


def _list(doc: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    value = doc.get(key)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise DataError(f"{path} has no {key!r} list of objects (a COCO file has images, annotations, categories)")
    return value


def _categories(doc: dict[str, Any], path: Path) -> dict[int, str]:
    cats = _list(doc, "categories", path)
    if not cats:
        raise DataError(f"{path} defines no categories")
    try:
        return {int(c["id"]): str(c["name"]) for c in sorted(cats, key=lambda c: int(c["id"]))}
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: every category needs an integer 'id' and a 'name'") from None


def _images(doc: dict[str, Any], path: Path, root: Path) -> dict[int, tuple[Path, int, int]]:
    """image id -> (file, width, height), every file present with the size the JSON gives it."""
    out, missing, wrong = {}, [], []
    for im in _list(doc, "images", path):
        try:
            image_id, file, w, h = int(im["id"]), root / im["file_name"], int(im["width"]), int(im["height"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: every image needs an integer 'id', 'file_name', 'width' and 'height'") from None
        if not file.is_file():
            missing.append(im["file_name"])
            continue
        try:
            size = image_header(file)[1:]  # the header only: nothing is decoded
        except DataError as e:  # a file that is not an image: say which, in one line
            raise DataError(f"{path}: image {im['file_name']} cannot be read ({decode_error_reason(e)})") from None
        if size != (w, h):
            wrong.append(f"{im['file_name']} is {size[0]}x{size[1]}, not {w}x{h}")
        out[image_id] = (file, w, h)
    if missing:
        raise DataError(f"{path} references {len(missing)} image(s) missing from {root}: {_some(missing)}")
    if wrong:
        raise DataError(f"{path}: {len(wrong)} image(s) have another size than the JSON says: {_some(wrong)}")
    if not out:
        raise DataError(f"{path} lists no images")
    return out


def _checked_box(
    ann: dict[str, Any], images: dict[int, tuple[Path, int, int]], label_of: dict[int, int], path: Path
) -> list[float] | None:
    """The annotation's box as x1, y1, x2, y2 (None for a crowd region); errors name the annotation and image."""
    aid = ann.get("id", "?")
    if ann.get("image_id") not in images:
        raise DataError(f"{path}: annotation {aid} refers to image {ann.get('image_id')!r}, which is not listed")
    if ann.get("category_id") not in label_of:
        raise DataError(f"{path}: annotation {aid} has category {ann.get('category_id')!r}, which is not defined")
    if ann.get("iscrowd"):
        return None
    file, w, h = images[ann["image_id"]]
    try:
        x, y, bw, bh = (float(v) for v in ann["bbox"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: annotation {aid} needs a 'bbox' of four numbers [x, y, width, height]") from None
    if bw <= 0 or bh <= 0:
        raise DataError(f"{path}: annotation {aid} ({file.name}) has an empty box {ann['bbox']}")
    t = BOX_TOLERANCE
    if x < -t or y < -t or x + bw > w + t or y + bh > h + t:
        raise DataError(f"{path}: annotation {aid} box {ann['bbox']} lies outside its image {file.name} ({w}x{h})")
    return [max(x, 0.0), max(y, 0.0), min(x + bw, float(w)), min(y + bh, float(h))]


def _some(items: list[str]) -> str:
    more = f" and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


class DetectionDataset(Dataset):
    """(image as float 0..1 (3, H, W), target {"boxes", "labels", "image_id"}) per index; training flips a photo
    and its boxes horizontally with probability 0.5, decided by (seed, epoch, index) so that workers and resumed
    runs draw the same flips."""

    def __init__(self, coco: CocoSet, train: bool, seed: int = 0, min_side: int = 800) -> None:
        self.coco, self.train, self.seed, self.epoch, self.min_side = coco, train, seed, 0, min_side

    def __len__(self) -> int:
        return len(self.coco.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = read_image(self.coco.files[i], draft_side=self.min_side)  # one-line DataError if it does not decode
        boxes = self.coco.boxes[i] * (image.shape[2] / self.coco.sizes[i][0])  # a JPEG decoded at reduced scale
        if self.train and random.Random(f"{self.seed}/{self.epoch}/{i}").random() < 0.5:
            image = image.flip(-1)
            boxes[:, [0, 2]] = image.shape[2] - boxes[:, [2, 0]]
        image_id = torch.tensor(self.coco.image_ids[i])
        return image.float() / 255, {"boxes": boxes, "labels": self.coco.labels[i].clone(), "image_id": image_id}


def collate_detection(batch: list[Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Detectors take lists (images of different sizes): no stacking."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
