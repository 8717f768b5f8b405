"""Grad-CAM on image files: each file checked against what the model takes, then a PNG of heat-map overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from resnetkit.data.folder import list_image_files, load_image
from resnetkit.explain.gradcam import METHODS, CamResult, ExplainError, GradCAM, resolve_layer
from resnetkit.plots import plot_cam_overlays
from resnetkit.transforms import Preprocessing, center_crop

# Upscaling an image by more than 2x to reach the input size gives maps of interpolation artefacts.
MAX_UPSCALE = 2
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})


def image_channels(mode: str) -> int:
    """Colour channels (alpha aside) of a PIL mode: 1 for greyscale modes, 3 for colour (palette, RGB, CMYK, ...)."""
    return 1 if mode in _GREY_MODES or mode.startswith("I;16") else 3


def load_for_model(path: str | Path, pre: Preprocessing, in_chans: int) -> torch.Tensor:
    """One image file as uint8 (in_chans, S, S) at the preprocessing's storage size.

    Refused with one line: an image whose colour channels differ from the model's (a greyscale photo given to an
    RGB model would be explained as something it never was trained on), and one smaller than half the model's
    input size.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            mode, (width, height) = im.mode, im.size
    except Exception as e:  # noqa: BLE001  any decoder failure means "not an image we can read"
        raise ExplainError(f"cannot read image {path}: {e}") from None
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
    image = load_image(path, pre.storage_size)
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
) -> list[dict[str, Any]]:
    """Write `out/<name>-cam.png` per image (the image, then one overlay per method, titled with the predicted
    class and probability) and return one record per image. Every input is checked before any work starts."""
    layer = resolve_layer(model, layer)[0]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ExplainError(f"unknown method {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
    target = _class_index(classes, target_class)
    in_chans = model.default_cfg.input_size[0] if getattr(model, "default_cfg", None) else 3
    files = list_image_files(paths)
    images = torch.stack([load_for_model(f, pre, in_chans) for f in files])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = _output_names(files)
    records: list[dict[str, Any]] = []
    with GradCAM(model, layer) as cam:
        for start in range(0, len(files), batch_size):
            chunk = images[start : start + batch_size]
            results = {m: cam(pre.eval_batch(chunk), target, m) for m in methods}
            for i in range(chunk.shape[0]):
                index = start + i
                path = out / names[index]
                records.append(_record(files[index], path, results, i, classes))
                plot_cam_overlays(
                    center_crop(chunk[i], pre.size), {m: r.maps[i] for m, r in results.items()},
                    _title(records[-1]), path,
                )  # fmt: skip
    return records


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
