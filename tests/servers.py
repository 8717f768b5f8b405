"""`resnetkit serve` started by a test: a subprocess on 127.0.0.1, on a free port it picks and prints itself, ready when
/readyz says so, stopped with SIGTERM (and reaped) by the test."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

from resnetkit.data.cifar import load_cifar

import procs
from conftest import shared_data

SERVING = re.compile(r"^serving .* on (http://\S+):(\d+)/ ", re.M)
READY_LIMIT_S = 120  # only a server that never starts meets this bound: the wait ends when it answers


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def post(self, files: list[tuple[str, tuple[str, bytes]]] | None = None, **kwargs) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/predict", files=files, timeout=60, **kwargs)

    def metric(self, line_start: str) -> float:
        """The value of the first /metrics line that starts with `line_start` (0 when there is none yet)."""
        lines = httpx.get(f"{self.url}/metrics", timeout=30).text.splitlines()
        return next((float(x.split()[-1]) for x in lines if x.startswith(line_start)), 0.0)

    def stop(self) -> int:
        """SIGTERM and the exit code; a server that does not exit within a minute is killed (the test fails)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            procs.reap(self.proc)


def start_server(tmp_path: Path, *args: str, checkpoint: str | Path) -> Server:
    """`resnetkit serve --port 0`: the server binds a free port itself and prints it; ready when /readyz says so."""
    log = tmp_path / f"serve-{len(list(tmp_path.glob('serve-*.log')))}.log"
    env = {**os.environ, "RESNETKIT_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "resnetkit", "serve", "--checkpoint", str(checkpoint), "--port", "0", *args]
    proc = procs.start(cmd, log, env=env)
    deadline = time.monotonic() + READY_LIMIT_S
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the server exited: {log.read_text()}"
            found = SERVING.search(log.read_text())
            if found:
                url = f"{found[1]}:{found[2]}"
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                        return Server(proc, url, log)
            time.sleep(0.05)
        raise AssertionError(f"the server did not become ready: {log.read_text()}")
    except BaseException:
        procs.reap(proc)
        raise


def real_images(folder: Path) -> dict[str, Path]:
    """A cat and a dog photo from cats-vs-dogs and the first CIFAR-10 test image written as a PNG into `folder`."""
    cvd = shared_data("cats_vs_dogs")
    ds = load_cifar(str(shared_data("cifar-10-batches-bin")), "cifar10", "test", progress=False)
    cifar = folder / "cifar_test_0.png"
    Image.fromarray(ds.images[0].permute(1, 2, 0).numpy()).save(cifar)
    first = {kind: sorted((cvd / "val" / kind).glob("*.jpg"))[0] for kind in ("cat", "dog")}
    return {**first, "cifar": cifar}
