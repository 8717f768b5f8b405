"""Export a model to a deployable, self-describing file: ONNX (fp32 or int8), a torch.export `.pt2`, an OpenVINO IR
(fp32 or int8) or an ExecuTorch `.pte` program (fp32 or int8)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resnetkit.errors import ExportError
from resnetkit.export.int8 import quantize_onnx
from resnetkit.export.metadata import (
    FLOAT_INPUT,
    FORMATS,
    INPUT_NAME,
    META_FILE,
    META_KEY,
    OUTPUT_NAME,
    PIXEL_INPUT,
    ExportMeta,
)
from resnetkit.export.onnx_writer import onnx_proto, save_proto, set_metadata
from resnetkit.export.pt2_writer import exported_program, save_pt2

__all__ = [
    "FLOAT_INPUT",
    "PIXEL_INPUT",
    "FORMATS",
    "INPUT_NAME",
    "META_FILE",
    "META_KEY",
    "OUTPUT_NAME",
    "ExportMeta",
    "export_model",
]


def export_model(
    model: nn.Module, meta: ExportMeta, out: str | Path, *, calibration: Iterable[np.ndarray] | None = None
) -> ExportMeta:
    """Write `model` (eval mode, fp32) to `out` in `meta.format`; int8 (ONNX Runtime, OpenVINO or ExecuTorch) when
    `calibration` batches (normalized float32 NCHW arrays of real images) are given. Returns the metadata written.
    Nothing is left at `out` if the export fails."""
    if meta.format not in FORMATS:
        raise ExportError(f"unknown export format {meta.format!r}; choose one of {', '.join(FORMATS)}")
    pre = meta.preprocessing_obj()
    shape = (3, pre.size, pre.size)
    model = model.float().eval()
    if meta.format == "pt2":
        if calibration is not None:
            raise ExportError("--int8 needs a runtime with int8 kernels: use --format onnx, openvino or executorch")
        save_pt2(exported_program(model, shape), meta, Path(out))
        return meta
    if meta.format == "executorch":  # a .pte program lowered to XNNPACK; int8 through XNNPACK's quantizer
        from resnetkit.export.executorch_writer import save_pte

        return save_pte(model, meta, Path(out), shape, calibration)
    if meta.input == PIXEL_INPUT:
        if calibration is not None:
            raise ExportError("--with-preprocessing exports fp32 graphs only: drop --int8")
        model, shape = PixelInput(model, pre), (pre.size, pre.size, 3)
    if meta.format == "openvino":
        return _save_openvino(model, meta, Path(out), shape, calibration)
    proto = onnx_proto(model, shape, meta)
    if calibration is not None:
        batches = iter(calibration)
        first = next(batches, None)
        if first is None or not len(first):
            raise ExportError("the calibration set has no images: int8 needs real images (--calib-size > 0)")
        proto, record = quantize_onnx(proto, itertools.chain([first], batches))
        meta = replace(meta, precision="int8", calibration=record)
        set_metadata(proto, meta)
    save_proto(proto, Path(out))
    return meta


def _save_openvino(
    model: nn.Module, meta: ExportMeta, out: Path, shape: tuple[int, int, int], calibration: Any
) -> ExportMeta:
    """An OpenVINO IR converted from the checked fp32 ONNX graph, int8 through NNCF when calibrated."""
    from resnetkit.export.openvino_writer import check_ir_path, openvino_model, save_ir

    check_ir_path(out)
    ov_model, record = openvino_model(onnx_proto(model, shape, meta), calibration)
    if record is not None:
        meta = replace(meta, precision="int8", calibration=record)
    save_ir(ov_model, meta, out)
    return meta


class PixelInput(nn.Module):
    """`model` behind its normalisation: uint8 [N, H, W, 3] pixels (already at the input size: no resize, no crop)
    to float NCHW, scaled and shifted by the preprocessing's mean and std — the arithmetic of
    `Preprocessing.normalize`, inside the graph."""

    def __init__(self, model: nn.Module, pre: Any) -> None:
        super().__init__()
        self.model = model
        std, mean = torch.tensor(pre.std), torch.tensor(pre.mean)
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, 3, 1, 1))
        self.register_buffer("shift", (mean / std).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels.permute(0, 3, 1, 2).float() * self.scale - self.shift)
