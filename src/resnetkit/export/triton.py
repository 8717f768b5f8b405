"""A Triton Inference Server model repository entry for an exported ONNX file: `REPO/NAME/config.pbtxt`,
`REPO/NAME/labels.txt` and `REPO/NAME/1/model.onnx`, for Triton's ONNX Runtime backend — the input and output as
the file names them, a dynamic batch dimension (`max_batch_size`), dynamic batching, and the labels its
classification extension reads."""

from __future__ import annotations

from pathlib import Path

from resnetkit.export.metadata import INPUT_NAME, OUTPUT_NAME

LABELS_FILE = "labels.txt"
MODEL_FILE = "model.onnx"
MODEL_VERSION = "1"  # the repository entry's one version folder


def model_config(
    name: str, size: int, classes: int, max_batch_size: int, pixels: bool = False, max_delay_us: int = 5000
) -> str:
    """config.pbtxt (protobuf text of Triton's ModelConfig): dims leave out the batch dimension, which
    max_batch_size > 0 makes dynamic. `pixels`: the graph takes uint8 [H, W, 3] (exported --with-preprocessing)."""
    kind, dims = ("TYPE_UINT8", f"{size}, {size}, 3") if pixels else ("TYPE_FP32", f"3, {size}, {size}")
    return f"""name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: {kind}
    dims: [ {dims} ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {classes} ]
    label_filename: "{LABELS_FILE}"
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {max_delay_us}
}}
"""


def write_entry(
    folder: Path, name: str, size: int, classes: list[str], max_batch_size: int, pixels: bool = False
) -> None:
    """config.pbtxt and labels.txt of the model in `folder` (its `1/model.onnx` is written by the ONNX exporter)."""
    config = model_config(name, size, len(classes), max_batch_size, pixels)
    (folder / "config.pbtxt").write_text(config, encoding="utf-8")
    (folder / LABELS_FILE).write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
