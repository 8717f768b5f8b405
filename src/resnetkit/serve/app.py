"""The HTTP service: a FastAPI app over one model loaded (and warmed up) once, with dynamic batching.

Endpoints: POST /v1/predict (multipart field `file`, repeated, or JSON {"images": [base64, ...]}), GET /v1/metadata,
GET /healthz (alive), GET /readyz (model loaded and warmed), GET /metrics (Prometheus text), /docs (OpenAPI).
Every 4xx/5xx answer is JSON: {"error": {"status": N, "message": "..."}}."""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any  # no `from __future__ import annotations`: FastAPI reads the route annotations

import torch

from resnetkit.constants import VERSION
from resnetkit.explain.gradcam import grad_cam
from resnetkit.explain.overlay import overlay_image, png_bytes
from resnetkit.runtime import Predictor
from resnetkit.serve.auth import OPEN_PATHS, REFUSAL, allowed
from resnetkit.serve.batcher import Answer, DynamicBatcher, QueueFull
from resnetkit.serve.deps import require
from resnetkit.serve.metrics import ServiceMetrics
from resnetkit.serve.requests import RequestError, read_images
from resnetkit.serve.settings import ServeSettings
from resnetkit.serve.v2 import add_v2_routes
from resnetkit.transforms import center_crop

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("static") / "index.html"  # plain HTML/JS: no build step, no CDN


class Service:
    """The model, its batcher and metrics: what the routes share. A batch's output rows hold the logits
    (`LOGITS_ROW`) and the class probabilities (`PROBS_ROW`) of each image."""

    LOGITS_ROW, PROBS_ROW = 0, 1

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.predictor: Predictor | None = None
        self.ready = False
        self.metrics = ServiceMetrics(lambda: self.batcher.depth if self.batcher else 0)
        self.batcher: DynamicBatcher | None = None
        self.grpc_port: int | None = None  # bound by the lifespan when --grpc-port asks for gRPC

    def load(self) -> None:
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        self.predictor = Predictor.load(self.settings.checkpoint, runtime=self.settings.runtime)
        self.predictor.runnable()  # the fast path, made once before the first request
        s = self.settings
        self.batcher = DynamicBatcher(
            self.forward,
            max_batch=s.max_batch,
            max_delay_s=s.max_delay_ms / 1000,
            max_queue=s.max_queue,
            observe=self.metrics.observe_batch,
        )

    @property
    def model_name(self) -> str:
        return self.settings.model_name or self.predictor.describe()["model"]

    @property
    def model_version(self) -> str:
        return self.settings.model_version

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 2, classes): logits and class probabilities of a batch — uint8 images prepared as `resnetkit predict`
        prepares them, or float32 images already normalised (OIP's FP32 input), in the runtime's memory layout."""
        p = self.predictor
        prepared = p.prepare(batch) if batch.dtype == torch.uint8 else batch.contiguous(memory_format=p.memory_format)
        logits = p.logits(prepared)
        return torch.stack([logits, logits.softmax(dim=1)], dim=1)

    def warm_up(self) -> None:
        size = self.predictor.preprocessing.storage_size
        for n in {1, self.settings.max_batch}:
            self.forward(torch.zeros(n, 3, size, size, dtype=torch.uint8))

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """Load and warm the model off the event loop, serve, then drain the queue (SIGTERM lands here)."""
        await asyncio.to_thread(self.load)
        with self.predictor.running():
            await asyncio.to_thread(self.warm_up)
            self.batcher.start()
            grpc_server = await self._start_grpc()
            self.ready = True
            yield
            self.ready = False
            if grpc_server is not None:  # finish the RPCs in flight (up to the request timeout), refuse new ones
                await grpc_server.stop(grace=self.settings.timeout_s)
            await self.batcher.stop()

    async def _start_grpc(self) -> Any:
        """The OIP gRPC server on --grpc-port (None without one); the port it bound is in /v1/metadata."""
        if self.settings.grpc_port is None:
            return None
        from resnetkit.serve.grpc_service import start_grpc

        server, self.grpc_port = await start_grpc(self, self.settings.grpc_host, self.settings.grpc_port)
        return server

    async def predict(self, request: Any) -> tuple[list[str], list[Answer], float]:
        """The names and answers (class probabilities, queue and forward times) of a request's images, and the
        seconds spent reading and decoding them (RequestError for what cannot be answered)."""
        s, start = self.settings, time.perf_counter()
        names, images = await read_images(request, self.predictor.preprocessing.storage_size, s)
        decode = time.perf_counter() - start
        try:
            return names, await asyncio.wait_for(self.batcher.submit(images), s.timeout_s), decode
        except QueueFull as e:
            raise RequestError(503, f"busy: {e}; retry shortly", headers={"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise RequestError(504, f"no answer within {s.timeout_s:g} s") from None

    async def explain(self, request: Any) -> tuple[bytes, dict[str, str]]:
        """The Grad-CAM overlay (PNG) of a request's one image for its predicted class, and headers naming it."""
        if not self.predictor.supports_gradients:
            raise RequestError(422, "explain needs a PyTorch model (Grad-CAM takes gradients), not an exported file")
        s = self.settings
        _, images = await read_images(request, self.predictor.preprocessing.storage_size, s)
        if len(images) != 1:
            raise RequestError(400, f"explain takes one image per request, got {len(images)}")
        work = asyncio.get_running_loop().run_in_executor(self.batcher.executor, self._overlay, images[0])
        try:
            return await asyncio.wait_for(work, s.timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, f"no answer within {s.timeout_s:g} s") from None

    def _overlay(self, image: torch.Tensor) -> tuple[bytes, dict[str, str]]:
        """Runs on the forward thread (one model computation at a time), on the eager model: hooks need its layers."""
        pre = self.predictor.preprocessing
        result = grad_cam(self.predictor.gradient_model(), pre.eval_batch(image[None]))
        cls = int(result.target[0])
        picture = overlay_image(center_crop(image, pre.size), result.maps[0])
        names = {"X-Class": self.predictor.classes[cls], "X-Probability": f"{float(result.probs[0, cls]):.6f}"}
        return png_bytes(picture), {**names, "X-Layer": result.layer}

    def metadata(self) -> dict[str, Any]:
        described = self.predictor.describe()
        return {
            "model": described["model"],
            "checkpoint": self.settings.checkpoint,
            "classes": described["classes"],
            "preprocessing": described["preprocessing"],
            "runtime": described["runtime"],
            "precision": described["precision"],
            "resnetkit_version": VERSION,
            "settings": self.settings.public(),
            "grpc_port": self.grpc_port,
        }

    def answer(self, names: list[str], answers: list[Answer]) -> dict[str, Any]:
        results = [{"name": n, "top": self.top(a.row[self.PROBS_ROW])} for n, a in zip(names, answers, strict=True)]
        return {"model": self.metadata()["model"], "predictions": results}

    def top(self, probs: torch.Tensor) -> list[dict[str, Any]]:
        return self.predictor.topk(probs, self.settings.topk)[0]


def create_app(settings: ServeSettings) -> Any:
    """The FastAPI application; the model loads in its lifespan (readyz answers 503 until it is warm)."""
    fastapi = require("fastapi")
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

    service = Service(settings)

    app = fastapi.FastAPI(title="resnetkit", version=VERSION, lifespan=service.lifespan)
    app.state.service = service

    _json_errors(app)
    _api_key(app, settings.api_key)
    add_v2_routes(app, service)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> Any:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

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

    @app.post("/v1/explain", response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def explain(request: fastapi.Request) -> Any:
        with service.metrics.request("explain") as record:
            png, headers = await service.explain(request)
            record(1)
            return Response(png, media_type="image/png", headers=headers)

    @app.post("/v1/predict")
    async def predict(request: fastapi.Request) -> Any:
        with service.metrics.request("predict") as record:
            names, answers, decode = await service.predict(request)
            record(len(names))
            encode = time.perf_counter()
            body = service.answer(names, answers)
            return JSONResponse(body, headers={"Server-Timing": server_timing(decode, answers, encode)})

    return app


def _api_key(app: Any, key: str | None) -> None:
    """With a key: 401 (and WWW-Authenticate: Bearer) for any request but health and readiness without it."""
    if key is None:
        return

    @app.middleware("http")
    async def require_key(request: Any, call_next: Any) -> Any:
        if request.url.path in OPEN_PATHS or allowed(request.headers.get("authorization"), key):
            return await call_next(request)
        return _error(401, REFUSAL, {"WWW-Authenticate": "Bearer"}, request.url.path)


def server_timing(decode_s: float, answers: list[Answer], encode_start: float) -> str:
    """Where a request's time went, as a Server-Timing header (milliseconds): reading and decoding its images,
    the longest any of them queued, the forward pass, and building the answer."""
    queue = max(a.queue_s for a in answers)
    forward = max(a.forward_s for a in answers)
    encode = time.perf_counter() - encode_start
    parts = {"decode": decode_s, "queue": queue, "forward": forward, "encode": encode}
    return ", ".join(f"{name};dur={1000 * s:.3f}" for name, s in parts.items())


def _error(status: int, message: str, headers: dict[str, str] | None = None, path: str = "") -> Any:
    """The error body: {"error": {"status", "message"}}; under /v2 the Open Inference Protocol's {"error": "..."}."""
    from fastapi.responses import JSONResponse

    body = {"error": message} if path.startswith("/v2") else {"error": {"status": status, "message": message}}
    return JSONResponse(body, status, headers=headers)


def _json_errors(app: Any) -> None:
    """Every error answer is {"error": {"status", "message"}}: the service's own, HTTP ones (404, 405) and a 500
    for anything unexpected (logged; the process goes on serving)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(RequestError)
    async def request_error(request: Any, e: RequestError) -> Any:
        return _error(e.status, str(e), e.headers, request.url.path)

    @app.exception_handler(HTTPException)
    async def http_error(request: Any, e: HTTPException) -> Any:
        return _error(e.status_code, str(e.detail), getattr(e, "headers", None), request.url.path)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Any, e: RequestValidationError) -> Any:
        return _error(
            422, "; ".join(str(x.get("msg", x)) for x in e.errors()) or "invalid request", None, request.url.path
        )

    @app.exception_handler(Exception)
    async def internal(request: Any, e: Exception) -> Any:
        log.exception("error answering %s", request.url.path)
        return _error(500, f"internal error ({type(e).__name__}); the service goes on", None, request.url.path)


SETTINGS_ENV = "RESNETKIT_SERVE_SETTINGS"


def app_from_env() -> Any:
    """uvicorn's factory for `--workers N` (each worker process builds its own app): settings come as JSON in
    $RESNETKIT_SERVE_SETTINGS."""
    import json
    import os

    return create_app(ServeSettings(**json.loads(os.environ[SETTINGS_ENV])))
