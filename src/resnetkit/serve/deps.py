"""The serve extra: FastAPI, uvicorn, python-multipart and prometheus_client are optional."""

from __future__ import annotations

from types import ModuleType

from resnetkit.extras import require_extra

EXTRA = "serve"


def require(module: str) -> ModuleType:
    """`import module`, or a one-line error naming the extra to install."""
    return require_extra(module, EXTRA, "resnetkit serve")


def require_grpc(module: str) -> ModuleType:
    """`import module` for gRPC serving, or a one-line error naming the `grpc` extra."""
    return require_extra(module, "grpc", "resnetkit serve --grpc-port")
