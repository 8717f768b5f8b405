"""`resnetkit export`: a checkpoint (run folder, checkpoint file, weights file, registered name) or an untrained
architecture made into a deployable, self-describing ONNX or `.pt2` file, int8 when calibrated on real images."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resnetkit.constants import VERSION
from resnetkit.data.factory import load_eval_split
from resnetkit.errors import ExportError
from resnetkit.export import FORMATS, ExportMeta, export_model
from resnetkit.export.triton import MODEL_FILE, MODEL_VERSION, write_entry
from resnetkit.models import create_model, get_model_entry, resolve_data_config
from resnetkit.runtime import Loaded, Predictor, file_format, load_model
from resnetkit.transforms import preprocessing_for
from resnetkit.weights.download import sha256_file

log = logging.getLogger(__name__)
CALIB_BATCH = 64


def export_checkpoint(
    source: str | None,
    fmt: str,
    out: str | Path,
    *,
    model: str | None = None,
    int8: bool = False,
    data: str | None = None,
    data_dir: str | None = None,
    calib_size: int = 512,
    seed: int = 0,
    download: bool = False,
) -> ExportMeta:
    """Export `source` (or, with `model` alone, that architecture untrained; with both, a weights file into
    that architecture) to `out`. int8 calibrates on `calib_size` images drawn (seeded) from the training split of
    `data`: calibrating on the test images would tune the file to the numbers it is judged by."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise ExportError("--int8 writes ONNX Runtime int8 files: use --format onnx")
    if int8 and not data:
        raise ExportError("--int8 calibrates on real images: give --data (and --data-dir) as for `resnetkit eval`")
    if int8 and calib_size < 1:
        raise ExportError(f"--calib-size must be at least 1 image, got {calib_size}")
    loaded = _source(source, model)
    meta = ExportMeta(
        architecture=loaded.architecture,
        classes=tuple(loaded.classes),
        preprocessing=loaded.preprocessing.to_dict(),
        format=fmt,
        source=str(source or f"untrained {model}"),
        source_sha256=_sha256(loaded),
        model_kwargs=loaded.model_kwargs,
        resnetkit_version=VERSION,
        provenance=Predictor(loaded, source).provenance() or None if source else None,
    )
    calibration = _calibration(loaded, data, data_dir, calib_size, seed, download) if int8 else None
    return export_model(loaded.model, meta, out, calibration=calibration)


def _source(source: str | None, model: str | None) -> Loaded:
    if source is None:
        if model is None:
            raise ExportError("say what to export: --checkpoint (a run, checkpoint, weights file or name) or --model")
        net = create_model(model).eval()
        return _bare(net, model)
    if file_format(source) is not None:
        raise ExportError(f"{source} is already an exported file: export the checkpoint it was made from")
    path = Path(source)
    if model is not None and path.is_file():  # a plain weights file (state dict / safetensors) for `model`
        loaded = _bare(create_model(model, weights=str(path)).eval(), model)
        loaded.file = path
        return loaded
    return load_model(source)


def _bare(net: torch.nn.Module, name: str) -> Loaded:
    """An architecture's default preprocessing and numbered classes (weights without a record carry neither)."""
    get_model_entry(name)
    cfg = resolve_data_config(name, None)
    classes = [str(i) for i in range(net.num_classes)]
    return Loaded(net, preprocessing_for(cfg, cfg.preset), classes, name)


def _sha256(loaded: Loaded) -> str:
    if loaded.sha256 and len(loaded.sha256) == 64:
        return loaded.sha256
    return sha256_file(loaded.file) if loaded.file is not None and loaded.file.is_file() else ""


def _calibration(
    loaded: Loaded, data: str | None, data_dir: str | None, calib_size: int, seed: int, download: bool
) -> Iterator[np.ndarray]:
    """Normalized float32 batches of `calib_size` training images, prepared as the model's evaluation is (none
    from an empty split: `export_model` refuses that)."""
    pre = loaded.preprocessing
    ds = load_eval_split(str(data), data_dir, "train", pre, download=download, progress=False)
    if len(ds.classes) == len(loaded.classes) and list(ds.classes) != loaded.classes:
        log.warning("calibrating on %s, whose class names differ from the model's", data)
    n = min(calib_size, len(ds))
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    log.info("calibrating int8 on %d %s training images", n, data)
    for start in range(0, n, CALIB_BATCH):
        yield pre.eval_batch(ds.images[order[start : start + CALIB_BATCH]]).numpy()


def export_triton(
    source: str | None, repository: str | Path, *, name: str | None = None, max_batch_size: int = 64, **onnx: Any
) -> tuple[Path, ExportMeta]:
    """`source` as a Triton model repository entry `repository/NAME` (NAME: `name`, else the architecture):
    config.pbtxt, labels.txt and 1/model.onnx (fp32, or int8 with `onnx`'s int8 options). Built beside its final
    place and moved there whole: a failed export leaves nothing in the repository; an entry already there is
    refused, not overwritten."""
    if max_batch_size < 1:
        raise ExportError(f"--max-batch must be at least 1 (Triton's dynamic batch), got {max_batch_size}")
    repository = Path(repository)
    if repository.exists() and not repository.is_dir():
        raise ExportError(f"{repository} is a file: --format triton writes a model repository folder")
    staging = Path(tempfile.mkdtemp(prefix=".resnetkit-triton-", dir=_made(repository)))
    try:
        meta = export_checkpoint(source, "onnx", staging / MODEL_VERSION / MODEL_FILE, **onnx)
        entry = repository / (name or meta.architecture)
        if entry.exists():
            raise ExportError(f"{entry} exists already: remove it or choose another --name")
        write_entry(staging, entry.name, meta.preprocessing_obj().size, list(meta.classes), max_batch_size)
        staging.rename(entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry, meta


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
