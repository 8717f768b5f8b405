"""A bounded load test of `resnetkit serve`'s Open Inference Protocol endpoints with Triton's own clients (issue 30):
the script starts the server itself for each `--max-batch`, then `--clients` threads, each with its own
`tritonclient.http` (or `tritonclient.grpc`) client, send `--requests` inferences of one real photo each (BYTES,
encoded JPEG), and it prints one JSON line per protocol and configuration: errors, requests/s, latency p50/p99,
mean images per forward pass (from /metrics). The server is stopped with SIGTERM (exit code recorded).

    python benchmarks/oip_load.py --checkpoint resnet20.rk_cifar10 --images ../shared/data/cats_vs_dogs/val \\
        --clients 50 --requests 2000 --max-batch 32 --protocols http grpc
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

SERVING = re.compile(r"serving .* on (http://\S+):(\d+)/ ")


def start(checkpoint: str, max_batch: int, threads: int | None, log: Path) -> tuple[subprocess.Popen, str, int]:
    """The server on free HTTP and gRPC ports (it binds them and says which), once /readyz answers 200."""
    cmd = [sys.executable, "-m", "resnetkit", "serve", "--checkpoint", checkpoint, "--port", "0", "--grpc-port", "0"]
    cmd += ["--max-batch", str(max_batch), "--max-queue", "4096", "--max-delay-ms", "5"]
    cmd += ["--threads", str(threads)] if threads else []
    proc = subprocess.Popen(
        cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "RESNETKIT_OFFLINE": "1"}
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        found = SERVING.search(log.read_text())
        if found:
            url = f"{found[1]}:{found[2]}"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return proc, url, httpx.get(f"{url}/v1/metadata", timeout=10).json()["grpc_port"]
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not become ready: {log.read_text()[-2000:]}")


def run_clients(protocol: str, target: str, model: str, photos: list[bytes], clients: int, total: int) -> dict:
    if protocol == "http":
        import tritonclient.http as tc
    else:
        import tritonclient.grpc as tc
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(total))
    lock = threading.Lock()

    def client() -> None:
        c = tc.InferenceServerClient(target)
        for i in counter:
            tensor = tc.InferInput("image", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([photos[i % len(photos)]], dtype=object))
            t0 = time.perf_counter()
            try:
                c.infer(model, [tensor], outputs=[tc.InferRequestedOutput("probabilities", class_count=1)])
                with lock:
                    latencies.append(time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001  every failure is counted and reported
                with lock:
                    errors.append(str(e)[:200])

    t0 = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "first_errors": errors[:3],
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
        "seconds": seconds,
    }


def metric(url: str, name: str) -> float:
    lines = httpx.get(f"{url}/metrics", timeout=30).text.splitlines()
    return next((float(x.split()[-1]) for x in lines if x.startswith(name)), 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--model", help="the model's name under /v2 (default: from /v2/models metadata)")
    ap.add_argument("--images", required=True, help="a folder of photos (searched recursively for *.jpg)")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--max-batch", type=int, nargs="+", default=[32])
    ap.add_argument("--protocols", nargs="+", default=["http", "grpc"])
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    photos = [p.read_bytes() for p in sorted(Path(args.images).rglob("*.jpg"))[:200]]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    for max_batch in args.max_batch:
        log = Path(f"/tmp/oip_load_{max_batch}.log")
        proc, url, grpc_port = start(args.checkpoint, max_batch, args.threads, log)
        model = args.model or httpx.get(f"{url}/v1/metadata", timeout=10).json()["model"]
        try:
            for protocol in args.protocols:
                passes = metric(url, "resnetkit_batch_size_count")
                images = metric(url, "resnetkit_batch_size_sum")
                target = url.removeprefix("http://") if protocol == "http" else f"127.0.0.1:{grpc_port}"
                result = run_clients(protocol, target, model, photos, args.clients, args.requests)
                batches = metric(url, "resnetkit_batch_size_count") - passes
                mean_batch = (metric(url, "resnetkit_batch_size_sum") - images) / max(batches, 1)
                record = {"checkpoint": args.checkpoint, "protocol": protocol, "max_batch": max_batch, "cpu": cpu}
                print(json.dumps(record | {"clients": args.clients, "mean_batch": mean_batch} | result), flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
            print(json.dumps({"max_batch": max_batch, "server_exit_code": code}), flush=True)


if __name__ == "__main__":
    main()
