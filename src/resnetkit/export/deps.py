"""The deploy extra: ONNX, ONNX Runtime and onnxscript (torch's ONNX exporter) are optional; a command that
needs one says which extra to install instead of failing with an ImportError."""

from __future__ import annotations

import importlib
from types import ModuleType

from resnetkit.errors import ExportError

EXTRA = "deploy"


def require(module: str, for_what: str) -> ModuleType:
    """`import module`, or a one-line ExportError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise ExportError(
            f"{for_what} needs the {EXTRA} extra ({top} is not installed): pip install 'resnetkit[{EXTRA}]'"
        ) from None
