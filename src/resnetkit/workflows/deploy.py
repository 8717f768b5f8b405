"""`resnetkit export`: a checkpoint (run folder, checkpoint file, weights file, registered name) or an untrained
architecture made into a deployable, self-describing ONNX or `.pt2` file, int8 when calibrated on real images."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from resnetkit.constants import VERSION
from resnetkit.data.cifar import load_sample
from resnetkit.data.factory import load_eval_split
from resnetkit.errors import ExportError
from resnetkit.export import FLOAT_INPUT, FORMATS, PIXEL_INPUT, ExportMeta, export_model
from resnetkit.export.metadata import INT8_FORMATS
from resnetkit.export.triton import MODEL_FILE, MODEL_VERSION, write_entry
from resnetkit.models import create_model, get_model_entry, resolve_data_config
from resnetkit.runtime import Loaded, Predictor, file_format, load_model
from resnetkit.transforms import center_crop, preprocessing_for
from resnetkit.weights.download import sha256_file

log = logging.getLogger(__name__)
CALIB_BATCH = 64
CHECK_IMAGES = 32  # real images every export is run on before it counts as written
INT8_MIN_CORRELATION = 0.98  # of an int8 file's centred logits with the fp32 model's (measured: 0.9998)


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
    test_data: int = 0,
    with_preprocessing: bool = False,
) -> tuple[ExportMeta, FileCheck]:
    """Export `source` (or, with `model` alone, that architecture untrained; with both, a weights file into
    that architecture) to `out`. int8 calibrates on `calib_size` images drawn (seeded) from the training split of
    `data`: calibrating on the test images would tune the file to the numbers it is judged by."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if int8 and fmt not in INT8_FORMATS:
        raise ExportError(f"--int8 needs a runtime with int8 kernels: use --format {', '.join(INT8_FORMATS)}")
    if int8 and not data:
        raise ExportError("--int8 calibrates on real images: give --data (and --data-dir) as for `resnetkit eval`")
    if with_preprocessing and (fmt != "onnx" or int8 or test_data):
        raise ExportError(
            "--with-preprocessing writes fp32 ONNX graphs of pixels: --format onnx, no --int8/--test-data"
        )
    if test_data and fmt != "onnx":
        raise ExportError("--test-data writes ONNX test sets (input_0.pb, output_0.pb): use --format onnx")
    if not 0 <= test_data <= 500:
        raise ExportError(f"--test-data takes 1 to 500 images (the embedded sample's test set), got {test_data}")
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
        input=PIXEL_INPUT if with_preprocessing else FLOAT_INPUT,
    )
    train = (
        load_eval_split(str(data), data_dir, "train", loaded.preprocessing, download=download, progress=False)
        if int8
        else None
    )
    calibration = _calibration(loaded, train, str(data), calib_size, seed) if train is not None else None
    meta = export_model(loaded.model, meta, out, calibration=calibration)
    # int8 is checked on images like those it was calibrated on (its activation ranges come from them)
    check = check_written(loaded, meta, Path(out), train.images[:CHECK_IMAGES] if train is not None else None)
    if test_data:
        write_test_data(loaded, Path(out).parent, test_data)
    return meta, check


def write_test_data(loaded: Loaded, folder: Path, n: int) -> Path:
    """An ONNX-model-zoo test set beside the file: `test_data_set_0/input_0.pb` (n real images, prepared as the
    model takes them) and `output_0.pb` (the PyTorch model's logits for them), as TensorProtos named as the graph's
    input and output; ONNX's and ONNX Runtime's test runners read this layout."""
    from onnx import numpy_helper

    from resnetkit.export import INPUT_NAME, OUTPUT_NAME

    x = loaded.preprocessing.eval_batch(_real_images(loaded.preprocessing, n), torch.contiguous_format)
    with torch.inference_mode():
        y = loaded.model.float().eval()(x).float()
    folder = folder / "test_data_set_0"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "input_0.pb").write_bytes(numpy_helper.from_array(x.numpy(), INPUT_NAME).SerializeToString())
    (folder / "output_0.pb").write_bytes(numpy_helper.from_array(y.numpy(), OUTPUT_NAME).SerializeToString())
    return folder


def _real_images(pre: Any, n: int) -> torch.Tensor:
    """The first n test images of the embedded CIFAR-10 sample (real photos) at the preprocessing's storage size."""
    images = load_sample("test").images[:n]
    if images.shape[-1] != pre.storage_size:
        size = (pre.storage_size, pre.storage_size)
        images = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True).round().clamp(0, 255)
        images = images.to(torch.uint8)
    return images


@dataclass(frozen=True)
class FileCheck:
    """How the written file answered real images next to the PyTorch model it was made from."""

    images: int
    max_abs_diff: float  # of the logits
    correlation: float  # of the logits, each row centred
    top1_agreement: float

    def __str__(self) -> str:
        return (
            f"checked on {self.images} real images: max |logit difference| {self.max_abs_diff:.2e}, "
            f"top-1 agreement {100 * self.top1_agreement:.1f}%"
        )


def check_written(loaded: Loaded, meta: ExportMeta, out: Path, images: torch.Tensor | None = None) -> FileCheck:
    """Run the file just written on CHECK_IMAGES real photos (`images`, else the embedded CIFAR-10 sample at the
    model's input size) and compare its logits with the PyTorch model's: fp32 files within 1e-3 of the logits'
    scale, int8 files with centred logits correlated at least INT8_MIN_CORRELATION. Beyond that the file is removed
    and the export refused: a wrong graph never reaches --out."""
    if images is None:
        images = _real_images(loaded.preprocessing, CHECK_IMAGES)
    x = loaded.preprocessing.eval_batch(images, torch.contiguous_format)
    with torch.inference_mode():
        want = loaded.model.float().eval()(x).float().numpy()
    if meta.input == PIXEL_INPUT:  # the graph normalises: it takes the center-cropped pixels, channels last
        got = _run_onnx(out, center_crop(images, loaded.preprocessing.size).permute(0, 2, 3, 1).contiguous().numpy())
    else:
        # an ONNX file is checked on ONNX Runtime, its reference runtime (no `auto` measurement inside an export)
        got = Predictor.load(out, runtime="onnxruntime" if meta.format == "onnx" else None).logits(x).numpy()
    check = _compare(got, want)
    scale = max(1.0, float(np.abs(want).max()))
    if meta.precision == "int8":
        ok = check.correlation >= INT8_MIN_CORRELATION
        limit = f"a correlation of at least {INT8_MIN_CORRELATION}"
    else:
        ok = bool(np.isfinite(got).all()) and check.max_abs_diff <= 1e-3 * scale
        limit = f"at most {1e-3 * scale:.1e}"
    if not ok:
        for written in written_files(out, meta.format):
            written.unlink(missing_ok=True)
        raise ExportError(
            f"the exported file disagrees with its model on real images ({check}; wanted {limit}): not written"
        )
    return check


def written_files(out: Path, fmt: str) -> list[Path]:
    """The files an export to `out` writes: an OpenVINO IR's .xml and its .bin; one file otherwise."""
    return [out, out.with_suffix(".bin")] if fmt == "openvino" else [out]


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _compare(got: np.ndarray, want: np.ndarray) -> FileCheck:
    a, b = want - want.mean(1, keepdims=True), got - got.mean(1, keepdims=True)
    denominator = float(np.sqrt((a**2).sum() * (b**2).sum()))
    correlation = float((a * b).sum()) / denominator if denominator > 0 else float(np.array_equal(a, b))
    agreement = float((got.argmax(1) == want.argmax(1)).mean())
    return FileCheck(len(got), float(np.abs(got - want).max()), correlation, agreement)


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


def _calibration(loaded: Loaded, ds: Any, data: str, calib_size: int, seed: int) -> Iterator[np.ndarray]:
    """Normalized float32 batches of `calib_size` images of `ds` (the training split), prepared as the model's
    evaluation is (none from an empty split: `export_model` refuses that)."""
    pre = loaded.preprocessing
    if len(ds.classes) == len(loaded.classes) and list(ds.classes) != loaded.classes:
        log.warning("calibrating on %s, whose class names differ from the model's", data)
    n = min(calib_size, len(ds))
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    log.info("calibrating int8 on %d %s training images", n, data)
    for start in range(0, n, CALIB_BATCH):
        yield pre.eval_batch(ds.images[order[start : start + CALIB_BATCH]]).numpy()


def export_triton(
    source: str | None, repository: str | Path, *, name: str | None = None, max_batch_size: int = 64, **onnx: Any
) -> tuple[Path, ExportMeta, FileCheck]:
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
        meta, check = export_checkpoint(source, "onnx", staging / MODEL_VERSION / MODEL_FILE, **onnx)
        entry = repository / (name or meta.architecture)
        if entry.exists():
            raise ExportError(f"{entry} exists already: remove it or choose another --name")
        size, pixels = meta.preprocessing_obj().size, meta.input == PIXEL_INPUT
        write_entry(staging, entry.name, size, list(meta.classes), max_batch_size, pixels)
        staging.rename(entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry, meta, check


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
