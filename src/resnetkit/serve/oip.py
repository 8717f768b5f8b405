"""The Open Inference Protocol v2 (KServe v2, Triton's HTTP/REST protocol): the tensors of an inference request and
answer, their JSON and binary forms, and the error an OIP client expects. No web framework here: `serve.app` routes
`/v2/...` to these functions, so the same model, batcher and limits answer `/v1` and `/v2`.

The served model has two inputs, of which a request sends one:
- "input": FP32 [N, 3, S, S], already normalised — the contract of the exported ONNX file;
- "image": BYTES [N], encoded images (JPEG, PNG, ... as `predict` reads them), decoded and prepared in the server.
and two outputs, "logits" and "probabilities" (FP32 [N, classes]). An output asked for with parameters
{"classification": k} answers Triton's classification extension instead: BYTES [N, k] of "score:index:label".
Tensors travel as JSON "data" or, with the binary tensor data extension, as raw little-endian bytes after the JSON
header (its length in the Inference-Header-Content-Length header; each tensor's size in "binary_data_size").
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

INPUT, IMAGE = "input", "image"
LOGITS, PROBABILITIES = "logits", "probabilities"
OUTPUTS = (LOGITS, PROBABILITIES)
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "classification"]
_NUMPY = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32}


class OipError(Exception):
    """A request OIP answers with {"error": message} and this HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0  # k of Triton's classification extension (0: the tensor itself)


@dataclass
class InferRequest:
    """A parsed infer request: its id, the one input it sends (FP32 images or encoded BYTES) and what to answer."""

    id: str | None
    input_name: str
    tensors: np.ndarray | None = None  # FP32 [N, 3, S, S] for "input"
    encoded: list[bytes] = field(default_factory=list)  # one per image for "image"
    outputs: list[RequestedOutput] = field(default_factory=list)

    @property
    def batch(self) -> int:
        return len(self.encoded) if self.input_name == IMAGE else int(self.tensors.shape[0])  # type: ignore[union-attr]


def parse_infer_request(body: bytes, header_length: str | None, size: int, max_images: int) -> InferRequest:
    """The request in `body` (JSON, or JSON of `header_length` bytes followed by binary tensors). `size`: the side
    an FP32 input must have; `max_images`: the most images one request may hold (413 beyond)."""
    json_part, binary = _split(body, header_length)
    try:
        request = json.loads(json_part)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OipError(400, f"the request is not valid JSON: {e}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise OipError(400, 'an infer request is a JSON object with "inputs": [{"name", "shape", "datatype", ...}]')
    inputs = request["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise OipError(400, f"send exactly one input, '{INPUT}' (FP32 images) or '{IMAGE}' (encoded BYTES)")
    tensor = inputs[0]
    raw = _binary_of(tensor, binary, offset=0)
    data = tensor.get("data")
    return parsed_request(
        request.get("id"),
        tensor.get("name"),
        tensor.get("shape"),
        tensor.get("datatype"),
        raw,
        data,
        _requested_outputs(request),
        size,
        max_images,
    )


def parsed_request(
    id: str | None,
    name: Any,
    shape: Any,
    datatype: Any,
    raw: bytes | None,
    data: Any,
    outputs: list[RequestedOutput],
    size: int,
    max_images: int,
) -> InferRequest:
    """The checked request from its one input (its raw bytes or its JSON data) and the outputs it asks for: what
    REST and gRPC share."""
    _check_outputs(outputs)
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise OipError(400, f"input '{name}': shape must be a list of non-negative integers, got {shape!r}")
    parsed = InferRequest(id, str(name), outputs=outputs)
    if name == INPUT:
        parsed.tensors = _fp32_images(data, shape, datatype, raw, size)
    elif name == IMAGE:
        parsed.encoded = _encoded_images(shape, datatype, raw)
    else:
        raise OipError(400, f"unknown input '{name}': the model takes '{INPUT}' (FP32) or '{IMAGE}' (BYTES)")
    if parsed.batch == 0:
        raise OipError(400, f"input '{name}' holds no images")
    if parsed.batch > max_images:
        raise OipError(413, f"{parsed.batch} images in one request, more than {max_images}")
    return parsed


def output_arrays(
    request: InferRequest, logits: torch.Tensor, probs: torch.Tensor, classes: list[str]
) -> list[tuple[RequestedOutput, np.ndarray]]:
    """Each requested output (all of them when none is named) with its values: FP32 [N, classes], or BYTES [N, k]
    of the classification extension."""
    values = {LOGITS: logits.float().numpy(), PROBABILITIES: probs.float().numpy()}
    asked = request.outputs or [RequestedOutput(name, binary=False) for name in OUTPUTS]
    return [
        (
            out,
            _classification(values[out.name], out.classification, classes) if out.classification else values[out.name],
        )
        for out in asked
    ]


def serialized(array: np.ndarray) -> bytes:
    """A tensor's raw bytes as the binary extension and gRPC's raw contents carry them: little-endian numbers, or
    BYTES elements each preceded by its 4-byte little-endian length."""
    if array.dtype == object:
        return b"".join(struct.pack("<I", len(v)) + v for v in array.reshape(-1))
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()


def datatype_of(array: np.ndarray) -> str:
    if array.dtype == object:
        return "BYTES"
    return next(name for name, kind in _NUMPY.items() if array.dtype == kind)


def infer_response(
    request: InferRequest, model: str, version: str, logits: torch.Tensor, probs: torch.Tensor, classes: list[str]
) -> tuple[bytes, str | None]:
    """The REST answer's body and, when any output travels as binary data, the length of its JSON header."""
    outputs, blobs = [], []
    for out, array in output_arrays(request, logits, probs, classes):
        entry: dict[str, Any] = {"name": out.name, "shape": list(array.shape), "datatype": datatype_of(array)}
        if out.binary:
            blob = serialized(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = [v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()]
        outputs.append(entry)
    answer = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.id is not None:
        answer["id"] = request.id
    header = json.dumps(answer).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), str(len(header))


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise OipError(400, f"{HEADER_LENGTH} {header_length!r} does not fit the {len(body)}-byte body")
    return body[: int(header_length)], body[int(header_length) :]


def _binary_of(tensor: dict[str, Any], binary: bytes, offset: int) -> bytes | None:
    """The tensor's raw bytes when it travels as binary data (the request's only input: it starts at `offset`)."""
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or size < 0 or offset + size > len(binary):
        raise OipError(400, f"input '{tensor.get('name')}': binary_data_size {size!r} passes the end of the body")
    return binary[offset : offset + size]


def _requested_outputs(request: dict[str, Any]) -> list[RequestedOutput]:
    binary_default = bool((request.get("parameters") or {}).get("binary_data_output", False))
    asked = request.get("outputs")
    if asked is None:
        return [RequestedOutput(name, binary_default) for name in OUTPUTS]
    if not isinstance(asked, list):
        raise OipError(400, '"outputs" must be a list of {"name", "parameters"}')
    found = []
    for out in asked:
        name = out.get("name") if isinstance(out, dict) else None
        params = (out.get("parameters") if isinstance(out, dict) else None) or {}
        found.append(
            RequestedOutput(name, bool(params.get("binary_data", binary_default)), params.get("classification", 0))
        )
    return found


def _check_outputs(outputs: list[RequestedOutput]) -> None:
    """The outputs a request names exist, and their classification counts are non-negative integers."""
    for out in outputs:
        if out.name not in OUTPUTS:
            raise OipError(400, f"unknown output {out.name!r}: the model gives {', '.join(OUTPUTS)}")
        k = out.classification
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise OipError(400, f"output '{out.name}': classification must be a non-negative integer, got {k!r}")


def _fp32_images(data: Any, shape: list[int], datatype: Any, raw: bytes | None, size: int) -> np.ndarray:
    want = f"[N, 3, {size}, {size}]"
    if datatype != "FP32":
        raise OipError(400, f"input '{INPUT}' is FP32 {want}, got datatype {datatype!r}")
    if len(shape) != 4 or shape[1:] != [3, size, size]:
        raise OipError(400, f"input '{INPUT}' has shape {want} (normalised images), got {shape}")
    count = math.prod(shape)
    if raw is not None:
        if len(raw) != 4 * count:
            raise OipError(400, f"input '{INPUT}': {len(raw)} bytes of binary data for {count} FP32 values")
        return np.frombuffer(raw, dtype="<f4").reshape(shape).copy()
    try:
        values = np.asarray(data, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise OipError(400, f"input '{INPUT}': data must be numbers") from None
    if values.size != count:
        raise OipError(400, f"input '{INPUT}': {values.size} values for shape {shape}")
    return values.reshape(shape)


def _encoded_images(shape: list[int], datatype: Any, raw: bytes | None) -> list[bytes]:
    if datatype != "BYTES" or len(shape) != 1:
        raise OipError(400, f"input '{IMAGE}' is BYTES [N] (one encoded image each), got {datatype!r} {shape}")
    if raw is None:
        raise OipError(400, f"input '{IMAGE}': send the encoded images as binary data (binary_data_size)")
    images, at = [], 0
    while at < len(raw):  # BYTES elements: a 4-byte little-endian length, then the bytes
        if at + 4 > len(raw):
            raise OipError(400, f"input '{IMAGE}': binary data ends inside an element's length")
        (n,) = struct.unpack_from("<I", raw, at)
        if at + 4 + n > len(raw):
            raise OipError(400, f"input '{IMAGE}': an element of {n} bytes passes the end of the binary data")
        images.append(raw[at + 4 : at + 4 + n])
        at += 4 + n
    if len(images) != shape[0]:
        raise OipError(400, f"input '{IMAGE}': shape [{shape[0]}] but {len(images)} elements")
    return images


def _classification(values: np.ndarray, k: int, classes: list[str]) -> np.ndarray:
    """Triton's classification extension: per row, the k largest values as b"score:index:label", largest first."""
    k = min(k, values.shape[1])
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    rows = [[f"{values[r, i]:f}:{i}:{classes[i]}".encode() for i in row] for r, row in enumerate(order)]
    return np.array(rows, dtype=object).reshape(values.shape[0], k)
