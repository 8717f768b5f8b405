"""The deploy extra: ONNX, ONNX Runtime and onnxscript (torch's ONNX exporter) are optional."""

from __future__ import annotations

from types import ModuleType

from resnetkit.errors import ExportError
from resnetkit.extras import require_extra

EXTRA = "deploy"


def require(module: str, for_what: str) -> ModuleType:
    """`import module`, or a one-line ExportError naming the extra to install."""
    return require_extra(module, EXTRA, for_what, ExportError)
