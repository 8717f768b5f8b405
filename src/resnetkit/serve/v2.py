"""The `/v2` routes: the Open Inference Protocol over REST (serve.oip holds the protocol), answered by the same
service as `/v1` — one model, one dynamic batcher, the same limits. Errors are OIP's {"error": "..."}."""

import asyncio
from typing import Any  # no `from __future__ import annotations`: FastAPI reads the route annotations

import torch

from resnetkit.constants import VERSION
from resnetkit.serve.batcher import QueueFull
from resnetkit.serve.oip import (
    EXTENSIONS,
    HEADER_LENGTH,
    IMAGE,
    INPUT,
    OUTPUTS,
    InferRequest,
    OipError,
    infer_response,
    parse_infer_request,
)
from resnetkit.serve.requests import RequestError, decode_upload, read_body

SERVER_NAME = "resnetkit"


def add_v2_routes(app: Any, service: Any) -> None:
    """GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}[/versions/{v}][/ready] and POST
    /v2/models/{name}[/versions/{v}]/infer on `app`, answered by `service` (serve.app.Service)."""
    import fastapi
    from fastapi.responses import JSONResponse, Response

    @app.get("/v2")
    async def server_metadata() -> Any:
        return {"name": SERVER_NAME, "version": VERSION, "extensions": EXTENSIONS}

    @app.get("/v2/health/live")
    async def live() -> Any:
        return Response(status_code=200)

    @app.get("/v2/health/ready")
    async def ready() -> Any:
        return Response(status_code=200 if service.ready else 503)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str = "") -> Any:
        return _answer(lambda: model_record(service, name, version))

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str = "") -> Any:
        def check() -> Any:
            served(service, name, version)
            return Response(status_code=200 if service.ready else 503)

        return _answer(check)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_route(name: str, request: fastapi.Request, version: str = "") -> Any:
        with service.metrics.request("v2_infer") as record:
            try:
                served(service, name, version)
                body, header_length, images = await run_infer(service, request)
            except OipError as e:
                return JSONResponse({"error": str(e)}, e.status)
            record(images)
            if header_length is None:
                return Response(body, media_type="application/json")
            return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: header_length})

    def _answer(make: Any) -> Any:
        try:
            return make()
        except OipError as e:
            return JSONResponse({"error": str(e)}, e.status)


def served(service: Any, name: str, version: str) -> None:
    """OipError 404 unless `name` (and `version`, when given) is the served model's."""
    if name != service.model_name:
        raise OipError(404, f"unknown model '{name}': this server serves '{service.model_name}'")
    if version and version != service.model_version:
        raise OipError(404, f"unknown version '{version}' of model '{name}': it has version {service.model_version}")


def model_record(service: Any, name: str, version: str) -> dict[str, Any]:
    served(service, name, version)
    pre, classes = service.predictor.preprocessing, service.predictor.classes
    return {
        "name": service.model_name,
        "versions": [service.model_version],
        "platform": f"resnetkit_{service.predictor.runtime}",
        "inputs": [
            {"name": INPUT, "datatype": "FP32", "shape": [-1, 3, pre.size, pre.size]},
            {"name": IMAGE, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": name, "datatype": "FP32", "shape": [-1, len(classes)]} for name in OUTPUTS],
    }


async def run_infer(service: Any, request: Any) -> tuple[bytes, str | None, int]:
    """The REST answer's body, its binary header length (or None) and the images it answered."""
    s, pre = service.settings, service.predictor.preprocessing
    try:
        body = await read_body(request, int(s.max_body_mb * 1024 * 1024))
    except RequestError as e:
        raise OipError(e.status, str(e)) from None
    parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH), pre.size, s.max_images)
    logits, probs = await answer(service, parsed)
    name, version, classes = service.model_name, service.model_version, service.predictor.classes
    body, header_length = infer_response(parsed, name, version, logits, probs, classes)
    return body, header_length, len(logits)


async def answer(service: Any, parsed: InferRequest) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, probabilities) of a parsed request's images through the service's batcher (REST and gRPC): encoded
    images decoded off the event loop by the one image reader, FP32 tensors as they are."""
    s, pre = service.settings, service.predictor.preprocessing
    if parsed.input_name == IMAGE:
        size, names = pre.storage_size, [f"image {i}" for i in range(parsed.batch)]
        work = (
            asyncio.to_thread(decode_upload, n, d, size, s.max_pixels)
            for n, d in zip(names, parsed.encoded, strict=True)
        )
        try:
            images = list(await asyncio.gather(*work))
        except RequestError as e:
            raise OipError(400 if e.status in (415, 422) else e.status, str(e)) from None
    else:
        images = list(torch.from_numpy(parsed.tensors))
    try:
        answers = await asyncio.wait_for(service.batcher.submit(images), s.timeout_s)
    except QueueFull as e:
        raise OipError(503, f"busy: {e}; retry shortly") from None
    except asyncio.TimeoutError:
        raise OipError(504, f"no answer within {s.timeout_s:g} s") from None
    logits = torch.stack([a.row[service.LOGITS_ROW] for a in answers])
    return logits, torch.stack([a.row[service.PROBS_ROW] for a in answers])
