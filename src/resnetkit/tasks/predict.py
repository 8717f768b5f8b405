"""`resnetkit detect` / `segment`: a detector's boxes, labels, scores (masks, keypoints) or a segmenter's per-pixel
classes for image files, as JSON records and PNG overlays drawn with torchvision.utils (boxes, masks, keypoints)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from resnetkit.data.folder import list_image_files
from resnetkit.data.images import read_image
from resnetkit.errors import DataError
from resnetkit.files import atomic_write
from resnetkit.tasks.detection import set_score_threshold
from resnetkit.tasks.pretrained import TaskModel

PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
)
# COCO's 17 person keypoints joined into a skeleton (torchvision's keypoint_names order).
COCO_SKELETON = (
    (0, 1),
    (0, 2),
    (1, 3),
    (2, 4),
    (5, 6),
    (5, 7),
    (7, 9),
    (6, 8),
    (8, 10),
    (5, 11),
    (6, 12),
    (11, 12),
    (11, 13),
    (13, 15),
    (12, 14),
    (14, 16),
)


def run_on_files(
    tm: TaskModel, paths: Sequence[str | Path], *, out: Path | None, threshold: float = 0.5, strict: bool = False
) -> list[dict[str, Any]]:
    """One record per image file (folders expanded): detections scoring at least `threshold`, or the classes
    covering at least that share of the image; and the overlay's path when `out` is given. An unreadable file is
    `{"path", "error"}` (raised with `strict`)."""
    files = list_image_files(paths)
    if tm.task == "detection":
        set_score_threshold(tm.model, threshold)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, path in enumerate(files):
        try:
            image = read_image(path, draft_side=800)
        except DataError as e:
            if strict:
                raise
            records.append({"path": str(path), "error": str(e)})
            continue
        with torch.inference_mode():
            run = _detect if tm.task == "detection" else _segment
            record, overlay = run(tm, image, threshold)
        record = {"path": str(path), "width": image.shape[2], "height": image.shape[1], **record}
        if out is not None:
            record["overlay"] = str(_save_png(overlay, out / f"{i:04d}_{path.stem}.png"))
        records.append(record)
    return records


def _detect(tm: TaskModel, image: torch.Tensor, score: float) -> tuple[dict[str, Any], torch.Tensor]:
    found = tm.model([image.float() / 255])[0]
    keep = found["scores"] >= score
    found = {k: v[keep] for k, v in found.items()}
    detections = []
    for j in range(len(found["boxes"])):
        label = int(found["labels"][j])
        box = [round(float(v), 1) for v in found["boxes"][j]]
        name = tm.classes[label] if label < len(tm.classes) else str(label)
        d = {"label": name, "label_id": label, "score": round(float(found["scores"][j]), 4), "box": box}
        if "masks" in found:
            d["mask_pixels"] = int((found["masks"][j, 0] > 0.5).sum())
        if "keypoints" in found:
            d["keypoints"] = [[round(float(x), 1), round(float(y), 1), int(v > 0)] for x, y, v in found["keypoints"][j]]
        detections.append(d)
    return {"detections": detections}, draw_detections(image, found, detections)


def draw_detections(
    image: torch.Tensor, found: dict[str, torch.Tensor], detections: list[dict[str, Any]]
) -> torch.Tensor:
    """Masks (translucent), boxes, keypoints with COCO's skeleton, then a "label score" tag over each box."""
    from torchvision.utils import draw_bounding_boxes, draw_keypoints, draw_segmentation_masks

    colors = [PALETTE[d["label_id"] % len(PALETTE)] for d in detections]
    if not detections:
        return image
    if "masks" in found:
        image = draw_segmentation_masks(image, found["masks"][:, 0] > 0.5, alpha=0.45, colors=colors)
    width = max(2, min(image.shape[1:]) // 200)
    image = draw_bounding_boxes(image, found["boxes"], colors=colors, width=width)
    if "keypoints" in found:
        skeleton = list(COCO_SKELETON) if found["keypoints"].shape[1] == 17 else None
        visible = found["keypoints"][..., 2] > 0
        image = draw_keypoints(
            image,
            found["keypoints"][..., :2],
            skeleton,
            colors="yellow",
            radius=width + 1,
            width=width,
            visibility=visible,
        )
    tags = [(d["box"][:2], f"{d['label']} {d['score']:.2f}", c) for d, c in zip(detections, colors, strict=True)]
    return _tag(image, tags)


def _tag(image: torch.Tensor, tags: list[tuple[list[float], str, tuple[int, int, int]]]) -> torch.Tensor:
    """Text on a filled box at each position, in a font scaled to the image (Pillow's built-in scalable font)."""
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default(size=max(12, min(pil.size) // 30))
    for (x, y), text, color in tags:
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        y_shift = min(bottom - top + 4, y)  # above the box, unless the box touches the top edge
        draw.rectangle((left - 2, top - y_shift - 2, right + 2, bottom - y_shift + 2), fill=color)
        draw.text((x, y - y_shift), text, fill="white", font=font)
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)


def _segment(tm: TaskModel, image: torch.Tensor, min_share: float) -> tuple[dict[str, Any], torch.Tensor]:
    """Per-pixel classes at the photo's own size (logits upsampled from the resized input); `min_share` is the least
    share of the image a class must cover to be listed and drawn (background, class 0, is never drawn)."""
    from torchvision.transforms.v2.functional import resize
    from torchvision.utils import draw_segmentation_masks

    x = resize(image, [tm.resize], antialias=True).float() / 255
    mean, std = torch.tensor(tm.mean).view(3, 1, 1), torch.tensor(tm.std).view(3, 1, 1)
    logits = tm.model(((x - mean) / std).unsqueeze(0))["out"]
    labels = F.interpolate(logits, size=image.shape[1:], mode="bilinear", align_corners=False)[0].argmax(0)
    counts = torch.bincount(labels.flatten(), minlength=len(tm.classes))
    total = labels.numel()
    present = [c for c in range(len(counts)) if counts[c] > 0 and (c == 0 or counts[c] / total >= min_share)]
    record = {
        "classes": [
            {"label": tm.classes[c], "label_id": c, "share": round(float(counts[c] / total), 4)} for c in present
        ]
    }
    drawn = [c for c in present if c != 0]
    if not drawn:
        return record, image
    masks = torch.stack([labels == c for c in drawn])
    overlay = draw_segmentation_masks(image, masks, alpha=0.5, colors=[PALETTE[c % len(PALETTE)] for c in drawn])
    tags = []
    for c, mask in zip(drawn, masks, strict=True):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        where = [float(xs.float().median()), float(ys.float().median())]
        tags.append((where, tm.classes[c], PALETTE[c % len(PALETTE)]))
    return record, _tag(overlay, tags)


def _save_png(image: torch.Tensor, path: Path) -> Path:
    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    return atomic_write(path, lambda tmp: pil.save(tmp, format="PNG"))
