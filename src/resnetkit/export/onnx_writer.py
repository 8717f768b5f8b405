"""fp32 ONNX files: torch's dynamo exporter (torch.export, then onnxscript), its optimizer folding BatchNorm into
the convolutions, a dynamic batch axis, `onnx.checker`, and the resnetkit metadata."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetkit.errors import ExportError
from resnetkit.export.deps import require
from resnetkit.export.metadata import INPUT_NAME, META_KEY, OUTPUT_NAME, ExportMeta
from resnetkit.files import atomic_write

log = logging.getLogger(__name__)
OPSET = 18  # the dynamo exporter's default at torch 2.14; ONNX Runtime 1.20+ runs it


def onnx_proto(model: nn.Module, input_shape: tuple[int, int, int], meta: ExportMeta) -> Any:
    """The checked onnx.ModelProto of `model` (eval mode) for inputs (N, *input_shape), N dynamic: float32 NCHW,
    or uint8 NHWC pixels when the channels come last (PixelInput)."""
    onnx = require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")
    example = (
        torch.randn(2, *input_shape)
        if input_shape[0] == 3
        else torch.randint(0, 256, (2, *input_shape), dtype=torch.uint8)
    )
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notes are not the user's business
        program = torch.onnx.export(
            model.eval(),
            (example,),
            dynamo=True,
            optimize=True,
            verbose=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
        )
    proto = program.model_proto
    left = sorted({n.op_type for n in proto.graph.node} & {"BatchNormalization"})
    if left:  # the optimizer folds eval-mode BatchNorm after a convolution; a model where it cannot is unusual
        log.warning("BatchNorm not folded into a convolution everywhere (%s nodes kept)", left)
    set_metadata(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def set_metadata(proto: Any, meta: ExportMeta) -> None:
    """Replace the file's resnetkit metadata (quantization tools drop or keep it unpredictably)."""
    kept = [p for p in proto.metadata_props if p.key != META_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, meta.to_json()
    proto.producer_name = "resnetkit"


def save_proto(proto: Any, out: Path) -> Path:
    """Written atomically: an interrupted export leaves no half-written file at `out`."""
    onnx = require("onnx", "ONNX export")
    if proto.ByteSize() > 2**31 - 1:
        raise ExportError("the model is larger than ONNX's 2 GB single-file limit")
    return atomic_write(out, lambda tmp: onnx.save(proto, tmp))
