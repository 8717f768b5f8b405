"""Reading the images of a request: a multipart upload (field `file`, repeated) or JSON {"images": [base64]},
with a cap on the body, on the images per request and on each image's pixels. Every problem is a RequestError
carrying its HTTP status and one line: 413 too large, 415 not an image type we take, 422 an image that does not
decode (truncated, corrupt), 400 a malformed request (no images, wrong field, bad JSON or base64)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
from typing import Any

import torch
from PIL import UnidentifiedImageError

from resnetkit.data.images import read_image
from resnetkit.errors import DataError, ImageTooLarge
from resnetkit.serve.settings import ServeSettings

FIELD = "file"


class RequestError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers


async def read_body(request: Any, cap: int) -> bytes:
    """The body, refused with 413 as soon as it (or its declared length) passes `cap` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise RequestError(413, f"the body has {int(declared):,} bytes, more than the {cap:,} allowed")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise RequestError(413, f"the body passes the {cap:,} bytes allowed")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_images(request: Any, size: int, settings: ServeSettings) -> tuple[list[str], list[torch.Tensor]]:
    """(names, uint8 (3, size, size) tensors) of the request's images, decoded off the event loop."""
    body = await read_body(request, int(settings.max_body_mb * 1024 * 1024))
    if not body:
        raise RequestError(400, f"empty body: send images as multipart field '{FIELD}' or JSON {{\"images\": [...]}}")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        uploads = await _multipart(request, body, settings.max_images)
    elif kind == "application/json":
        uploads = _json_images(body)
    else:
        raise RequestError(415, f"content type {kind or 'none'!r}: send multipart/form-data or application/json")
    if not uploads:
        raise RequestError(400, f"no images: send them in the multipart field '{FIELD}' (repeat it for several)")
    if len(uploads) > settings.max_images:
        raise RequestError(413, f"{len(uploads)} images in one request, more than {settings.max_images}")
    images = await asyncio.gather(
        *(asyncio.to_thread(decode_upload, n, d, size, settings.max_pixels) for n, d in uploads)
    )
    return [n for n, _ in uploads], list(images)


async def _multipart(request: Any, body: bytes, max_files: int) -> list[tuple[str, bytes]]:
    from starlette.requests import Request

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, receive).form(max_files=max_files + 1)
    except Exception as e:  # noqa: BLE001  a malformed multipart body (starlette raises its own types)
        raise RequestError(400, f"malformed multipart body: {' '.join(str(e).split())}") from None
    fields = set(form.keys())
    files = [f for f in form.getlist(FIELD) if hasattr(f, "read")]
    if not files and fields:
        raise RequestError(400, f"no field '{FIELD}' in the form (got {', '.join(sorted(fields))})")
    return [(f.filename or f"image{i}", await f.read()) for i, f in enumerate(files)]


def _json_images(body: bytes) -> list[tuple[str, bytes]]:
    try:
        items = json.loads(body)["images"]
        if not isinstance(items, list):
            raise TypeError
        return [(f"image{i}", base64.b64decode(s, validate=True)) for i, s in enumerate(items)]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise RequestError(400, 'JSON bodies are {"images": ["<base64 image>", ...]}') from None


def decode_upload(name: str, data: bytes, size: int, max_pixels: int) -> torch.Tensor:
    """One uploaded image as uint8 (3, size, size); RequestError 413 (too many pixels), 415 (not an image), 422."""
    try:
        return read_image(io.BytesIO(data), size=size, max_pixels=max_pixels, name=repr(name))
    except ImageTooLarge as e:
        raise RequestError(413, str(e)) from None
    except DataError as e:
        unknown = isinstance(e.__cause__, UnidentifiedImageError)  # not an image, or a format Pillow cannot read
        raise RequestError(415 if unknown else 422, str(e)) from None
