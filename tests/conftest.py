"""Shared helpers. Under CI (any truthy CI: true/1/yes/on) a missing test dependency or data set fails, not skips."""

from __future__ import annotations

import http.server
import importlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def randomize_norm_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so parity tests exercise every term."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


TRUTHY = frozenset({"true", "1", "yes", "on"})


def in_ci() -> bool:
    """CI is set in a truthy form: true, 1, yes or on (any case, spaces ignored); "", 0, false, no, off are not."""
    return os.environ.get("CI", "").strip().lower() in TRUTHY


def _missing(what: str) -> None:
    """Fail under CI (what is missing is a test dependency), skip elsewhere."""
    if in_ci():
        pytest.fail(f"CI={os.environ.get('CI')!r} but {what}")
    pytest.skip(what)


def shared_data(name: str) -> Path:
    """A folder of ../shared/data: missing data fails under CI and skips elsewhere."""
    path = SHARED_DATA / name
    if not path.exists():
        _missing(f"the shared data folder {path} is missing")
    return path


def require_program(name: str) -> str:
    """The path of a system program a test drives (e.g. chromedriver): missing fails under CI, skips elsewhere."""
    path = shutil.which(name)
    if path is None:
        _missing(f"the program {name!r} is not installed (.ci/run installs it with apt-get)")
    return path


def require_module(name: str):
    """Import a test dependency (e.g. timm): failing to import it fails under CI and skips elsewhere."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        _missing(f"the test dependency {name!r} cannot be imported ({exc})")


def confusion_from_predictions(preds: list[dict], classes: list[str]) -> list[list[int]]:
    """The confusion matrix (rows: true class = the image's folder name, columns: predict's top-1) of `predict
    --json` output, counted here, to compare with `eval`'s on the same images."""
    cm = [[0] * len(classes) for _ in classes]
    for p in preds:
        cm[classes.index(Path(p["path"]).parent.name)][classes.index(p["top"][0]["class"])] += 1
    return cm


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Small models run fastest (and disturb least) on one thread; use with pytest.mark.usefixtures."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def wait_for_file(path: Path, proc: subprocess.Popen, log: Path, limit_s: float = 300) -> None:
    """Until `path` exists (e.g. a checkpoint: training is under way); fails if `proc` ends first, or after
    `limit_s` (only a hang meets that bound: the wait ends when the file appears). `log` holds proc's output."""
    deadline = time.monotonic() + limit_s
    while not path.exists():
        assert proc.poll() is None, f"exited with {proc.returncode} before writing {path}: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {path} after {limit_s} s: {log.read_text()[-3000:]}"
        time.sleep(0.02)


@pytest.fixture()
def keep_threads() -> Iterator[None]:
    """Give the process its torch thread count back after a test whose runs set their own (`--threads`)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 (a free port) serving tmp_path/served: downloads are tested offline."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()
