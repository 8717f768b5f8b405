"""int8 ONNX files: ONNX Runtime's post-training static quantization in the QDQ format.

Why this backend (benchmarks/RESULTS.md, "Deploy"): on both project CPUs ONNX Runtime's int8 kernels (VNNI) ran
ResNet-20 and ResNet-50 several times faster than eager fp32 PyTorch, with no compile step at load time. The
choices follow the known failures: activations uint8 and weights int8 per output channel (U8S8; ORT's S8S8 with
QOperator collapses accuracy, onnxruntime#12072), QDQ format, ORT's shape/graph pre-processing first (without it
ResNet-50 int8 ran slower than ORT fp32), and percentile calibration, because min/max ranges set by rare outliers
collapse deep ResNets (torchvision#2648). Weights keep 7 bits (`reduce_range`) only on CPUs without VNNI, where
ORT's u8s8 multiply can saturate.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from resnetkit.export.deps import require
from resnetkit.export.metadata import INPUT_NAME
from resnetkit.hardware import cpu_flags

PERCENTILE = 99.999


def has_vnni() -> bool:
    """Whether the CPU has an int8 dot-product instruction (AVX512-VNNI, AVX-VNNI or AMX); True where the flags
    cannot be read (not Linux: ORT's own default)."""
    flags = cpu_flags()
    return not flags or bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


def quantize_onnx(fp32_proto: Any, batches: Iterable[np.ndarray]) -> tuple[Any, dict[str, Any]]:
    """The int8 onnx.ModelProto of an fp32 one, calibrated on `batches` (normalized float32 NCHW arrays), and a
    record of how (for the file's metadata)."""
    onnx = require("onnx", "int8 export")
    quant = require("onnxruntime.quantization", "int8 export")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reduce_range = not has_vnni()
    with tempfile.TemporaryDirectory(prefix="resnetkit-int8-") as tmp:
        fp32, pre, int8 = (Path(tmp) / f"{n}.onnx" for n in ("fp32", "pre", "int8"))
        onnx.save(fp32_proto, fp32)
        quant_pre_process(str(fp32), str(pre))
        reader = _Reader(iter(batches))
        with contextlib.redirect_stdout(io.StringIO()):  # ORT prints its histogram settings
            quant.quantize_static(
                str(pre),
                str(int8),
                reader,
                quant_format=quant.QuantFormat.QDQ,
                per_channel=True,
                activation_type=quant.QuantType.QUInt8,
                weight_type=quant.QuantType.QInt8,
                reduce_range=reduce_range,
                calibrate_method=quant.CalibrationMethod.Percentile,
                extra_options={"CalibPercentile": PERCENTILE, "CalibStridedMinMax": 1},  # one batch at a time
            )
        proto = onnx.load(str(int8))
    record = {
        "method": f"percentile {PERCENTILE}",
        "images": reader.images,
        "format": "QDQ",
        "activations": "uint8",
        "weights": "int8 per channel" + (", 7-bit (reduce_range: no VNNI)" if reduce_range else ""),
    }
    return proto, record


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader protocol over batches, with the `set_range` that its
    `CalibStridedMinMax` option drives: ORT then collects one batch's activations at a time and merges their
    histograms, instead of holding every activation of every batch (ResNet-50 at 224 px: ~40 MB an image, so
    512 images would need ~20 GB)."""

    def __init__(self, batches: Iterator[np.ndarray]) -> None:
        self.batches = [np.ascontiguousarray(b, dtype=np.float32) for b in batches if len(b)]
        self.images = sum(len(b) for b in self.batches)
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.next, self.end = start_index, min(end_index, len(self.batches))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.next >= self.end:
            return None
        self.next += 1
        return {INPUT_NAME: self.batches[self.next - 1]}
