"""The HTTP service: a FastAPI app over one model loaded (and warmed up) once, with dynamic batching.

Endpoints: POST /v1/predict (multipart field `file`, repeated, or JSON {"images": [base64, ...]}), GET /v1/metadata,
GET /healthz (alive), GET /readyz (model loaded and warmed), GET /metrics (Prometheus text), /docs (OpenAPI).
Every 4xx/5xx answer is JSON: {"error": {"status": N, "message": "..."}}."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any  # no `from __future__ import annotations`: FastAPI reads the route annotations

import torch

from resnetkit.constants import VERSION
from resnetkit.runtime import Loaded, host_threads, load_model
from resnetkit.serve.batcher import DynamicBatcher, QueueFull
from resnetkit.serve.deps import require
from resnetkit.serve.metrics import ServiceMetrics
from resnetkit.serve.requests import RequestError, read_images

log = logging.getLogger(__name__)


@dataclass
class ServeSettings:
    checkpoint: str
    max_batch: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 256  # images waiting; more -> 503 with Retry-After
    max_body_mb: float = 20.0  # -> 413
    max_pixels: int = 40_000_000  # per image, from its header; more -> 413
    max_images: int = 64  # per request
    topk: int = 5
    timeout_s: float = 30.0  # per request, queueing included -> 504
    threads: int | None = None  # torch (and so ONNX Runtime) threads in each worker process


class Service:
    """The model, its batcher and metrics: what the routes share."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.loaded: Loaded | None = None
        self.ready = False
        self.metrics = ServiceMetrics(lambda: self.batcher.depth if self.batcher else 0)
        self.batcher: DynamicBatcher | None = None

    def load(self) -> None:
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        loaded = load_model(self.settings.checkpoint)
        self.loaded, self.model = loaded, loaded.fast(compile=False)
        s = self.settings
        self.batcher = DynamicBatcher(self.forward, max_batch=s.max_batch, max_delay_s=s.max_delay_ms / 1000,
                                      max_queue=s.max_queue, observe=self.metrics.observe_batch)  # fmt: skip

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities of a uint8 batch, prepared as `resnetkit predict` prepares it."""
        pre = self.loaded.preprocessing
        return self.model(pre.eval_batch(images, self.loaded.memory_format)).float().softmax(dim=1)

    def warm_up(self) -> None:
        size = self.loaded.preprocessing.storage_size
        for n in {1, self.settings.max_batch}:
            self.forward(torch.zeros(n, 3, size, size, dtype=torch.uint8))

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """Load and warm the model off the event loop, serve, then drain the queue (SIGTERM lands here)."""
        await asyncio.to_thread(self.load)
        with host_threads(self.model):
            await asyncio.to_thread(self.warm_up)
            self.batcher.start()
            self.ready = True
            yield
            self.ready = False
            await self.batcher.stop()

    async def predict(self, request: Any) -> tuple[list[str], list[torch.Tensor]]:
        """The names and class probabilities of a request's images (RequestError for what cannot be answered)."""
        s = self.settings
        names, images = await read_images(request, self.loaded.preprocessing.storage_size, s)
        try:
            return names, await asyncio.wait_for(self.batcher.submit(images), s.timeout_s)
        except QueueFull as e:
            raise RequestError(503, f"busy: {e}; retry shortly", headers={"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise RequestError(504, f"no answer within {s.timeout_s:g} s") from None

    def metadata(self) -> dict[str, Any]:
        loaded = self.loaded
        meta = loaded.exported.meta if loaded.exported is not None else None
        return {
            "model": loaded.architecture or "onnx", "checkpoint": self.settings.checkpoint, "classes": loaded.classes,
            "preprocessing": loaded.preprocessing.to_dict(), "runtime": loaded.exported.runtime if loaded.exported
            else "pytorch", "precision": meta.precision if meta else "fp32", "resnetkit_version": VERSION,
            "settings": asdict(self.settings),
        }  # fmt: skip

    def top(self, probs: torch.Tensor) -> list[dict[str, Any]]:
        k = max(1, min(self.settings.topk, len(self.loaded.classes)))
        values, indices = probs.topk(k)
        pairs = zip(values.tolist(), indices.tolist(), strict=True)
        return [{"class": self.loaded.classes[i], "prob": p} for p, i in pairs]


def create_app(settings: ServeSettings) -> Any:
    """The FastAPI application; the model loads in its lifespan (readyz answers 503 until it is warm)."""
    fastapi = require("fastapi")
    from fastapi.responses import JSONResponse, PlainTextResponse

    service = Service(settings)

    app = fastapi.FastAPI(title="resnetkit", version=VERSION, lifespan=service.lifespan)
    app.state.service = service

    _json_errors(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> Any:
        ok = service.ready
        return JSONResponse({"status": "ready" if ok else "loading"}, 200 if ok else 503)

    @app.get("/v1/metadata")
    async def metadata() -> dict[str, Any]:
        return service.metadata()

    @app.get("/metrics")
    async def metrics() -> Any:
        return PlainTextResponse(service.metrics.render(), media_type=service.metrics.content_type)

    @app.post("/v1/predict")
    async def predict(request: fastapi.Request) -> dict[str, Any]:
        with service.metrics.request("predict") as record:
            names, probs = await service.predict(request)
            record(len(names))
            results = [{"name": n, "top": service.top(p)} for n, p in zip(names, probs, strict=True)]
            return {"model": service.metadata()["model"], "predictions": results}

    return app


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"status": status, "message": message}}, status, headers=headers)


def _json_errors(app: Any) -> None:
    """Every error answer is {"error": {"status", "message"}}: the service's own, HTTP ones (404, 405) and a 500
    for anything unexpected (logged; the process goes on serving)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(RequestError)
    async def request_error(request: Any, e: RequestError) -> Any:
        return _error(e.status, str(e), e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Any, e: HTTPException) -> Any:
        return _error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Any, e: RequestValidationError) -> Any:
        return _error(422, "; ".join(str(x.get("msg", x)) for x in e.errors()) or "invalid request")

    @app.exception_handler(Exception)
    async def internal(request: Any, e: Exception) -> Any:
        log.exception("error answering %s", request.url.path)
        return _error(500, f"internal error ({type(e).__name__}); the service goes on")


SETTINGS_ENV = "RESNETKIT_SERVE_SETTINGS"


def app_from_env() -> Any:
    """uvicorn's factory for `--workers N` (each worker process builds its own app): settings come as JSON in
    $RESNETKIT_SERVE_SETTINGS."""
    import json
    import os

    return create_app(ServeSettings(**json.loads(os.environ[SETTINGS_ENV])))
