"""`resnetkit serve`: an HTTP inference service (FastAPI + uvicorn) over anything `predict` accepts, with dynamic
batching, limits on what a request may send, Prometheus metrics and health/readiness checks."""

from resnetkit.serve.app import create_app
from resnetkit.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
