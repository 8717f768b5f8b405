"""The serve extra: FastAPI, uvicorn, python-multipart and prometheus_client are optional; `resnetkit serve` says
which extra to install instead of failing with an ImportError."""

from __future__ import annotations

import importlib
from types import ModuleType

from resnetkit.errors import ResnetkitError

EXTRA = "serve"


def require(module: str) -> ModuleType:
    """`import module`, or a one-line error naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise ResnetkitError(
            f"resnetkit serve needs the {EXTRA} extra ({top} is not installed): pip install 'resnetkit[{EXTRA}]'"
        ) from None
