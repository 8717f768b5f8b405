"""`resnetkit serve`: an HTTP inference service for a checkpoint, registered weights or an exported file."""

from __future__ import annotations

import argparse
import socket
from typing import Any

from resnetkit.cli import add_runtime_argument

KEEP_ALIVE_S = 30
API_KEY_ENV = "RESNETKIT_API_KEY"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="serve a model over HTTP (web page at /, API docs at /docs)")
    p.add_argument("--checkpoint", required=True, help="what predict takes: run folder, checkpoint, name, .onnx")
    add_runtime_argument(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (the one taken is printed)")
    p.add_argument("--max-batch", type=int, default=32, help="images per forward pass (dynamic batching)")
    p.add_argument("--max-delay-ms", type=float, default=5.0, help="how long a batch waits to fill")
    p.add_argument("--max-queue", type=int, default=256, help="images waiting; beyond it: 503 + Retry-After")
    p.add_argument("--max-body-mb", type=float, default=20.0)
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="per image")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--workers", type=int, default=1, help="processes, each with its own copy of the model")
    p.add_argument("--threads", type=int, help="torch / ONNX Runtime threads per worker (default: all cores)")
    p.add_argument(
        "--model-name", help="the model's name under /v2 (Open Inference Protocol; default: its architecture)"
    )
    p.add_argument("--model-version", default="1", help="the model's version under /v2")
    p.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, if set)")
    p.add_argument("--api-key-file", help="read the API key from this file (its first line)")
    p.add_argument(
        "--grpc-port",
        type=int,
        help="also serve the Open Inference Protocol over gRPC here (0: a free port, shown in /v1/metadata)",
    )


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import os
    import signal

    import torch

    from resnetkit.config import ConfigError
    from resnetkit.runtime import Predictor
    from resnetkit.serve.app import SETTINGS_ENV
    from resnetkit.serve.deps import require, require_grpc

    uvicorn = require("uvicorn")
    require("fastapi"), require("python_multipart"), require("prometheus_client")
    if args.workers < 1 or args.max_batch < 1 or args.max_queue < 1 or not 0 <= args.port < 65536:
        raise ConfigError("--workers, --max-batch and --max-queue must be at least 1, --port in 0..65535")
    if args.grpc_port is not None and (args.workers > 1 or not 0 <= args.grpc_port < 65536):
        raise ConfigError("--grpc-port (0..65535) serves from one process: drop --workers")
    if args.grpc_port is not None:
        require_grpc("grpc"), require_grpc("tritonclient.grpc")
    if args.threads:
        torch.set_num_threads(args.threads)
    # a bad checkpoint is a one-line error here, not a failed start-up later; `auto` measures here, once (cached)
    Predictor.load(args.checkpoint, runtime=args.runtime)
    os.environ[SETTINGS_ENV] = json.dumps(dataclasses.asdict(_settings(args)))
    sock = _listening_socket(args.host, args.port)
    port = sock.getsockname()[1]  # the one the kernel chose for --port 0
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {args.checkpoint} on http://{host}:{port}/ (API docs: /docs)", flush=True)
    # uvicorn drains the requests in flight on SIGTERM, restores the handler it found and raises SIGTERM again:
    # a no-op handler here makes a drained service exit 0 (rather than 143, "killed")
    signal.signal(signal.SIGTERM, lambda *_: None)
    # Idle keep-alive connections stay open 30 s (uvicorn's default is 5 s, the same as httpx's and many clients'
    # pool expiry: a client then reuses a connection at the moment the server closes it, a ReadError seen once in
    # the load test). Servers should outlast their clients' idle timeout, not race it.
    config = uvicorn.Config(
        "resnetkit.serve.app:app_from_env",
        factory=True,
        host=args.host,
        port=port,
        workers=args.workers,
        log_level="warning",
        timeout_graceful_shutdown=max(args.timeout, 1),
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    return _serve(uvicorn, config, sock)


def _settings(args: argparse.Namespace) -> Any:
    """The service's settings (serve.settings.ServeSettings), which every worker process reads from the environment."""
    from resnetkit.serve.settings import ServeSettings

    return ServeSettings(
        args.checkpoint,
        args.max_batch,
        args.max_delay_ms,
        args.max_queue,
        args.max_body_mb,
        args.max_pixels,
        topk=args.topk,
        timeout_s=args.timeout,
        threads=args.threads,
        model_name=args.model_name,
        model_version=args.model_version,
        grpc_port=args.grpc_port,
        grpc_host=args.host,
        api_key=_api_key(args),
        runtime=args.runtime,
    )


def _api_key(args: argparse.Namespace) -> str | None:
    """--api-key, else the first line of --api-key-file, else $RESNETKIT_API_KEY, else None (no access control)."""
    import os
    from pathlib import Path

    from resnetkit.config import ConfigError

    key = args.api_key
    if key is None and args.api_key_file:
        try:
            lines = Path(args.api_key_file).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ConfigError(f"cannot read --api-key-file {args.api_key_file}: {e.strerror or e}") from None
        key = lines[0].strip() if lines else ""
    if key is None:
        key = os.environ.get(API_KEY_ENV)
    if key is not None and not key.strip():
        raise ConfigError("the API key is empty: give a non-empty --api-key, --api-key-file or $" + API_KEY_ENV)
    return key.strip() if key is not None else None


def _listening_socket(host: str, port: int) -> socket.socket:
    """The service's socket, bound here rather than by uvicorn: `--port 0` takes a free port whose number is known
    before the first request (tests and scripts read it from the printed line, no port is reserved and released
    first), and a port in use is a one-line error instead of uvicorn's log."""
    from resnetkit.config import ConfigError

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _serve(uvicorn: Any, config: Any, sock: socket.socket) -> int:
    """uvicorn.run's own two paths (one process, or a supervisor of worker processes) on the socket bound here."""
    if config.workers > 1:
        from uvicorn.supervisors import Multiprocess

        Multiprocess(config, sockets=[sock]).run()
        return 0
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    return 0 if server.started else 1
