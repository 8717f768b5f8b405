"""OpenVINO IR files (`.xml` graph + `.bin` weights beside it): the checked fp32 ONNX graph (BatchNorm already
folded) converted by OpenVINO's own converter, kept in fp32 (OpenVINO's save would halve the weights to fp16 by
default), int8 through NNCF's post-training quantization calibrated on real training images, and the resnetkit
metadata in the IR's `rt_info` (key `resnetkit`), where OpenVINO keeps model-level facts.

Why NNCF's defaults for int8 (benchmarks/RESULTS.md, "Runtimes"): its `quantize` places FakeQuantize nodes where
OpenVINO's CPU plugin has int8 kernels (symmetric weights per channel, activations per tensor, the "performance"
preset) and its min-max statistics over 512 images kept ResNet-20's top-1 (91.48% against 91.42% in fp32).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from resnetkit.errors import ExportError
from resnetkit.export.metadata import META_KEY, ExportMeta
from resnetkit.extras import require_extra

EXTRA = "openvino"
IR_SUFFIX = ".xml"


def require(module: str, for_what: str) -> Any:
    """`import module`, or a one-line ExportError naming the openvino extra."""
    return require_extra(module, EXTRA, for_what, ExportError)


def check_ir_path(out: str | Path) -> Path:
    """An IR is a `.xml` file with its `.bin` beside it: anything else as --out is a one-line error."""
    out = Path(out)
    if out.suffix.lower() != IR_SUFFIX:
        raise ExportError(f"an OpenVINO IR is NAME.xml with its weights in NAME.bin beside it: give --out {out}.xml")
    return out


def openvino_model(onnx_proto: Any, calibration: Iterable[np.ndarray] | None) -> tuple[Any, dict[str, Any] | None]:
    """The ov.Model of a checked fp32 ONNX graph, int8 (NNCF) when calibration batches (normalized float32 NCHW
    arrays of real images) are given, and the record of how it was calibrated."""
    ov = require("openvino", "OpenVINO export")
    with tempfile.TemporaryDirectory(prefix="resnetkit-ov-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(onnx_proto.SerializeToString())
        model = ov.convert_model(str(path))
    if calibration is None:
        return model, None
    return quantize(model, calibration)


def quantize(model: Any, calibration: Iterable[np.ndarray]) -> tuple[Any, dict[str, Any]]:
    nncf = require("nncf", "OpenVINO int8 export")
    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in calibration if len(b)]
    if not batches:
        raise ExportError("the calibration set has no images: int8 needs real images (--calib-size > 0)")
    logging.getLogger("nncf").setLevel(logging.ERROR)  # its progress bars and notes are not the user's business
    with contextlib.redirect_stdout(io.StringIO()):
        quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))
    record = {
        "method": "NNCF post-training quantization (min-max, performance preset)",
        "images": sum(len(b) for b in batches),
        "format": "OpenVINO FakeQuantize",
        "activations": "uint8/int8 per tensor",
        "weights": "int8 per channel",
        "nncf": getattr(nncf, "__version__", "?"),
    }
    return quantized, record


def save_ir(model: Any, meta: ExportMeta, out: Path) -> Path:
    """Write `model` with `meta` in its rt_info as `out` (.xml) and its .bin, both renamed into place only once
    written: an interrupted export leaves no half-written pair."""
    ov = require("openvino", "OpenVINO export")
    out = check_ir_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.set_rt_info(meta.to_json(), [META_KEY])
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.") as tmp:
        staged = Path(tmp) / out.name
        ov.save_model(model, str(staged), compress_to_fp16=False)
        os.replace(staged.with_suffix(".bin"), out.with_suffix(".bin"))
        os.replace(staged, out)
    return out
