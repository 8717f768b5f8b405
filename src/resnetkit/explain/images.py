"""Grad-CAM on image files: each file checked against what the model takes, then a PNG of heat-map overlays.
A file that cannot be read or is refused is reported in its record; the others are still explained."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetkit.data.folder import list_image_files
from resnetkit.data.images import decode_error_reason, image_channels, image_header, read_image
from resnetkit.errors import DataError
from resnetkit.explain.gradcam import METHODS, CamResult, ExplainError, GradCAM, resolve_layer
from resnetkit.plots import plot_cam_overlays
from resnetkit.transforms import Preprocessing, center_crop

# Upscaling an image by more than 2x to reach the input size gives maps of interpolation artefacts.
MAX_UPSCALE = 2


def load_for_model(path: str | Path, pre: Preprocessing, in_chans: int) -> torch.Tensor:
    """One image file as uint8 (in_chans, S, S) at the preprocessing's storage size.

    Refused with one line (ExplainError or read_image's DataError): an unreadable file, an image whose colour
    channels differ from the model's (a greyscale photo given to an RGB model would be explained as something it
    never was trained on), and one smaller than half the model's input size.
    """
    path = Path(path)
    try:
        mode, width, height = image_header(path)
    except DataError as e:  # any decoder failure means "not an image we can read"
        raise ExplainError(f"cannot read image {path}: {decode_error_reason(e)}") from None
    chans = image_channels(mode)
    if chans != in_chans:
        kind = {1: "greyscale", 3: "colour (RGB)"}
        raise ExplainError(
            f"{path} is a {kind.get(chans, str(chans))} image (mode {mode}); the model takes "
            f"{kind.get(in_chans, f'{in_chans}-channel')} images"
        )
    need = -(-pre.size // MAX_UPSCALE)
    if min(width, height) < need:
        raise ExplainError(
            f"{path} is {width}x{height}; the model takes {pre.size}x{pre.size} images and needs at least {need}x{need}"
        )
    image = read_image(path, size=pre.storage_size)
    return image[:in_chans]


def explain_files(
    model: nn.Module,
    pre: Preprocessing,
    classes: Sequence[str],
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    layer: str | None = None,
    methods: Sequence[str] = METHODS,
    target_class: str | None = None,
    batch_size: int = 16,
    strict: bool = False,
) -> list[dict[str, Any]]:
    """Write `out/<name>-cam.png` per image (the image, then one overlay per method, titled with the predicted
    class and probability) and return one record per file, in file order.

    Every file is read and checked (see load_for_model) before any work starts. One that cannot be read or is
    refused gets `{"path", "error"}` (one line naming the file) in its place and the others are explained;
    `strict=True` raises at the first such file instead, before anything is written."""
    layer = resolve_layer(model, layer)[0]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ExplainError(f"unknown method {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
    target = _class_index(classes, target_class)
    in_chans = model.default_cfg.input_size[0] if getattr(model, "default_cfg", None) else 3
    files = list_image_files(paths)
    loaded = [_checked(f, pre, in_chans, strict=strict) for f in files]
    records = {n: {"path": str(files[n]), "error": x} for n, x in enumerate(loaded) if isinstance(x, str)}
    images = {n: x for n, x in enumerate(loaded) if isinstance(x, torch.Tensor)}
    good = list(images)
    names = _output_names(files)  # from every file, so a name does not depend on which others failed
    out = Path(out)
    if good:
        out.mkdir(parents=True, exist_ok=True)
    with GradCAM(model, layer) as cam:
        for start in range(0, len(good), batch_size):
            index = good[start : start + batch_size]
            chunk = torch.stack([images[n] for n in index])
            results = {m: cam(pre.eval_batch(chunk), target, m) for m in methods}
            for i, n in enumerate(index):
                records[n] = _record(files[n], out / names[n], results, i, classes)
                plot_cam_overlays(
                    center_crop(chunk[i], pre.size),
                    {m: r.maps[i] for m, r in results.items()},
                    _title(records[n]),
                    out / names[n],
                )
    return [records[n] for n in range(len(files))]


def _checked(path: Path, pre: Preprocessing, in_chans: int, *, strict: bool) -> torch.Tensor | str:
    """load_for_model's image, or the one-line reason the file is refused (raised instead when strict)."""
    try:
        return load_for_model(path, pre, in_chans)
    except (ExplainError, DataError) as e:
        if strict:
            raise
        return str(e)


def _class_index(classes: Sequence[str], name: str | None) -> int | None:
    if name is None:
        return None
    if name not in classes:
        raise ExplainError(f"unknown class {name!r}; the model's classes: {', '.join(classes)}")
    return list(classes).index(name)


def _output_names(files: Sequence[Path]) -> list[str]:
    """`<stem>-cam.png`, made unique with the image's position when two files share a stem."""
    stems = [f.stem for f in files]
    return [f"{s}-cam.png" if stems.count(s) == 1 else f"{s}-{i}-cam.png" for i, s in enumerate(stems)]


def _record(source: Path, path: Path, results: dict[str, CamResult], i: int, classes: Sequence[str]) -> dict[str, Any]:
    first = next(iter(results.values()))
    probs = first.probs[i]
    pred, target = int(probs.argmax()), int(first.target[i])
    return {
        "path": str(source),
        "out": str(path),
        "class": classes[pred],
        "prob": float(probs[pred]),
        "explained_class": classes[target],
        "explained_prob": float(probs[target]),
        "layer": first.layer,
        "methods": list(results),
    }


def _title(record: dict[str, Any]) -> str:
    title = f"{Path(record['path']).name}: predicted {record['class']} {100 * record['prob']:.1f}%"
    if record["explained_class"] != record["class"]:
        title += f"; explaining {record['explained_class']} {100 * record['explained_prob']:.1f}%"
    return f"{title}  (layer {record['layer']})"
