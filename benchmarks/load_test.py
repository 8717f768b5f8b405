"""A bounded load test of `resnetkit serve` on 127.0.0.1 (issue 17): the script starts the server itself for each
`--max-batch` given, sends `--requests` real images from `--clients` concurrent asyncio/httpx clients (one image
per request, multipart), stops the server with SIGTERM and prints one JSON line per configuration: errors,
throughput, latency p50/p95/p99, the mean of the server's own Server-Timing parts (decode, queue, forward,
encode) and the mean images per forward pass (from /metrics).

    python benchmarks/load_test.py --checkpoint resnet20.rk_cifar10 --images ../shared/data/cats_vs_dogs/val \\
        --clients 50 --requests 2000 --max-batch 32 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(checkpoint: str, max_batch: int, threads: int | None, delay_ms: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "resnetkit", "serve", "--checkpoint", checkpoint, "--port", str(port),
           "--max-batch", str(max_batch), "--max-delay-ms", str(delay_ms), "--max-queue", "4096"]  # fmt: skip
    cmd += ["--threads", str(threads)] if threads else []
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env={**os.environ, "RESNETKIT_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready")


async def run_clients(url: str, images: list[tuple[str, bytes]], clients: int, total: int, limit_s: float) -> dict:
    latencies, timings, statuses = [], [], []
    counter = iter(range(total))
    deadline = time.perf_counter() + limit_s

    async def client(http: httpx.AsyncClient) -> None:
        for i in counter:
            if time.perf_counter() > deadline:
                return
            name, data = images[i % len(images)]
            t0 = time.perf_counter()
            try:
                r = await http.post(f"{url}/v1/predict", files=[("file", (name, data))])
            except httpx.TransportError as e:  # counted as an error, named in the result
                statuses.append(type(e).__name__)
                continue
            latencies.append(time.perf_counter() - t0)
            statuses.append(r.status_code)
            parts = dict(p.split(";dur=") for p in r.headers.get("server-timing", "").split(", ") if ";dur=" in p)
            timings.append({k: float(v) for k, v in parts.items()})

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    ms = 1000 * np.array(latencies)
    errors = sorted({str(s) for s in statuses if s != 200})
    return {"requests": len(statuses), "errors": sum(s != 200 for s in statuses), "error_kinds": errors,
            "seconds": round(wall, 2),
            "requests_per_s": round(len(statuses) / wall, 1),
            **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)},
            "server_timing_mean_ms": {k: round(float(np.mean([t.get(k, 0) for t in timings])), 2)
                                      for k in ("decode", "queue", "forward", "encode")}}  # fmt: skip


def mean_batch(url: str) -> float:
    lines = dict(x.rsplit(" ", 1) for x in httpx.get(f"{url}/metrics").text.splitlines() if x and x[0] != "#")
    return round(float(lines["resnetkit_batch_size_sum"]) / max(1.0, float(lines["resnetkit_batch_size_count"])), 2)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True, help="a folder of images (searched recursively)")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--max-batch", type=int, nargs="+", default=[32, 1])
    p.add_argument("--max-delay-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int)
    p.add_argument("--limit-s", type=float, default=600, help="stop sending after this long")
    args = p.parse_args()
    files = sorted(f for f in Path(args.images).rglob("*") if f.suffix.lower() in {".jpg", ".jpeg", ".png"})[:200]
    images = [(f.name, f.read_bytes()) for f in files]
    cpu = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                if x.startswith("model name")), "?")  # fmt: skip
    for max_batch in args.max_batch:
        proc, url = start(args.checkpoint, max_batch, args.threads, args.max_delay_ms)
        try:
            asyncio.run(run_clients(url, images[:8], 2, 16, 60))  # warm-up, not counted
            result = asyncio.run(run_clients(url, images, args.clients, args.requests, args.limit_s))
            result["mean_images_per_forward"] = mean_batch(url)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
        print(json.dumps({"checkpoint": args.checkpoint, "max_batch": max_batch, "clients": args.clients,
                          "cpu": cpu, "server_exit": code, **result}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
