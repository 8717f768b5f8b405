"""ExecuTorch `.pte` programs (`resnetkit export --format executorch`): the model lowered to XNNPACK, ExecuTorch's
CPU backend on Android, iOS, Linux boards and desktops, in fp32 or in int8 through XNNPACK's own post-training
quantizer (PT2E, calibrated on real training images).

The resnetkit metadata is inside the one file: the program's constant method `resnetkit_meta` (no inputs, one string
out: the ExportMeta JSON), which every ExecuTorch runtime can read (`Module::execute("resnetkit_meta")`).

The batch is dynamic, from 1 to MAX_BATCH. ExecuTorch plans the memory of a dynamic dimension for its upper
bound, and that bound shrank silently: lowering to XNNPACK fake-runs every convolution, PyTorch's fake convolution asks
whether the batch is at least 16 (its oneDNN heuristic in `_select_conv_backend`), the question is answered from the
example batch (2) and kept as a guard, and the batch's range narrows from [1, max] to [2, 15]; memory planning then
sizes the program for 15 images and batch 250 failed in `set_inputs` with error 0x10 ("Attempted to resize a bounded
tensor with a maximum capacity of 46080 elements"). Lowered under `backed_size_oblivious`, such a question is
answered without a guard and the range keeps its bound. Larger batches run in chunks (runtime.executorch_module).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resnetkit.errors import ExportError, first_line
from resnetkit.export.metadata import FLOAT_INPUT, ExportMeta
from resnetkit.extras import require_extra
from resnetkit.files import atomic_write

EXTRA = "edge"
META_METHOD = "resnetkit_meta"  # the constant method holding the ExportMeta JSON
METHOD = "forward"
# The largest batch one call takes; larger ones run in chunks of it. ExecuTorch allocates the memory planned for it
# when the program loads (64 images: 0.8 MB of input at 32 px, 38 MB at 224 px), and on the 2-vCPU Intel Xeon
# (session 16, shared with other work) ResNet-20 ran faster in chunks of 16-64 images than in one call of 250 (their
# activations stay in the caches): 832 against 762 images/s in interleaved runs.
MAX_BATCH = 64


def require(module: str, for_what: str) -> Any:
    """`import module`, or a one-line ExportError naming the edge extra. Quietly, and leaving logging as it was:
    ExecuTorch's imports warn that its Python API is experimental, torchao's log a deprecation through torch's
    logger, and XNNPACK's partitioner calls `logging.basicConfig` (a second handler would print every line twice)."""
    root, pytree = logging.getLogger(), logging.getLogger("torch.utils._pytree")
    handlers, root_level, pytree_level = list(root.handlers), root.level, pytree.level
    pytree.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return require_extra(module, EXTRA, for_what, ExportError)
    finally:
        pytree.setLevel(pytree_level)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(root_level)


def save_pte(
    model: nn.Module, meta: ExportMeta, out: Path, shape: tuple[int, int, int], calibration: Iterable[np.ndarray] | None
) -> ExportMeta:
    """`model` (eval mode, fp32) as an ExecuTorch program at `out`, int8 when `calibration` batches (normalized
    float32 NCHW arrays of real images) are given. Returns the metadata written into it."""
    if meta.input != FLOAT_INPUT:
        raise ExportError("--with-preprocessing writes ONNX graphs of pixels: drop it for --format executorch")
    exir = require("executorch.exir", "ExecuTorch export")
    partitioner = require("executorch.backends.xnnpack.partition.xnnpack_partitioner", "ExecuTorch export")
    dynamic = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
    example = torch.randn(2, *shape)
    if calibration is not None:
        model, record = quantized(model, example, dynamic, calibration)
        meta = replace(meta, precision="int8", calibration=record)
    program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
    with _no_batch_guards():
        edge = exir.to_edge_transform_and_lower(
            program, partitioner=[partitioner.XnnpackPartitioner()], constant_methods={META_METHOD: meta.to_json()}
        )
        buffer = edge.to_executorch().buffer
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(buffer))
    return meta


def quantized(
    model: nn.Module, example: torch.Tensor, dynamic: Any, calibration: Iterable[np.ndarray]
) -> tuple[nn.Module, dict[str, Any]]:
    """`model` with XNNPACK's int8 quantize/dequantize pairs (per-channel symmetric weights, per-tensor activations
    from histograms of the calibration batches), and the record of how."""
    quantizer = require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "ExecuTorch int8 export")
    pt2e = require("torchao.quantization.pt2e.quantize_pt2e", "ExecuTorch int8 export")
    config = quantizer.get_symmetric_quantization_config(is_per_channel=True)
    graph = torch.export.export(model, (example,), dynamic_shapes=dynamic).module()
    try:
        prepared = pt2e.prepare_pt2e(graph, quantizer.XNNPACKQuantizer().set_global(config))
    except Exception as e:  # noqa: BLE001  prepare_pt2e fails with what the traced graph raises (pytorch#143621)
        reason = first_line(e, with_type=True)
        raise ExportError(f"ExecuTorch int8: XNNPACK's quantizer cannot prepare the model ({reason})") from None
    images = 0
    with torch.no_grad():
        for batch in calibration:
            if len(batch):
                prepared(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
                images += len(batch)
    if not images:
        raise ExportError("the calibration set has no images: int8 needs real images (--calib-size > 0)")
    record = {
        "method": "histogram (XNNPACK quantizer, PT2E)",
        "images": images,
        "format": "XNNPACK int8",
        "activations": "int8 per tensor",
        "weights": "int8 per channel (symmetric)",
    }
    return pt2e.convert_pt2e(prepared), record


@contextlib.contextmanager
def _no_batch_guards() -> Iterator[None]:
    """Lowering without narrowing the batch's range (see the module's docstring)."""
    from torch.fx.experimental import _config as fx_config

    with fx_config.patch(backed_size_oblivious=True):
        yield
