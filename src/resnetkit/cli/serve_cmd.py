"""`resnetkit serve`: an HTTP inference service for a checkpoint, registered weights or an exported file."""

from __future__ import annotations

import argparse

KEEP_ALIVE_S = 30


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="serve a model over HTTP (web page at /, API docs at /docs)")
    p.add_argument("--checkpoint", required=True, help="what predict takes: run folder, checkpoint, name, .onnx")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="images per forward pass (dynamic batching)")
    p.add_argument("--max-delay-ms", type=float, default=5.0, help="how long a batch waits to fill")
    p.add_argument("--max-queue", type=int, default=256, help="images waiting; beyond it: 503 + Retry-After")
    p.add_argument("--max-body-mb", type=float, default=20.0)
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="per image")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--workers", type=int, default=1, help="processes, each with its own copy of the model")
    p.add_argument("--threads", type=int, help="torch / ONNX Runtime threads per worker (default: all cores)")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import os
    import signal

    import torch

    from resnetkit.config import ConfigError
    from resnetkit.runtime import load_model
    from resnetkit.serve.app import SETTINGS_ENV, ServeSettings
    from resnetkit.serve.deps import require

    uvicorn = require("uvicorn")
    require("fastapi"), require("python_multipart"), require("prometheus_client")
    if args.workers < 1 or args.max_batch < 1 or args.max_queue < 1 or not 0 < args.port < 65536:
        raise ConfigError("--workers, --max-batch and --max-queue must be at least 1, --port in 1..65535")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_model(args.checkpoint)  # a bad checkpoint is a one-line error here, not a failed start-up later
    settings = ServeSettings(args.checkpoint, args.max_batch, args.max_delay_ms, args.max_queue, args.max_body_mb,
                             args.max_pixels, topk=args.topk, timeout_s=args.timeout, threads=args.threads)  # fmt: skip
    os.environ[SETTINGS_ENV] = json.dumps(dataclasses.asdict(settings))
    print(f"serving {args.checkpoint} on http://{args.host}:{args.port}/ (API docs: /docs)", flush=True)
    # uvicorn drains the requests in flight on SIGTERM, restores the handler it found and raises SIGTERM again:
    # a no-op handler here makes a drained service exit 0 (rather than 143, "killed")
    signal.signal(signal.SIGTERM, lambda *_: None)
    # Idle keep-alive connections stay open 30 s (uvicorn's default is 5 s, the same as httpx's and many clients'
    # pool expiry: a client then reuses a connection at the moment the server closes it, a ReadError seen once in
    # the load test). Servers should outlast their clients' idle timeout, not race it.
    uvicorn.run("resnetkit.serve.app:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level="warning", timeout_graceful_shutdown=max(args.timeout, 1),
                timeout_keep_alive=KEEP_ALIVE_S)  # fmt: skip
    return 0
