"""Shared helpers. Under CI (any truthy CI: true/1/yes/on) a missing test dependency or data set fails, not skips.

The whole session runs with its own RESNETKIT_HOME (a temporary folder, never the user's ~/.cache), and in it a
pinned precision decision: a run that says neither --amp nor --no-amp trains in bf16 autocast on every machine,
instead of following this CPU's bf16 timing (`engine.device.bf16_speedup`), so no test's numbers depend on a
measurement.
"""

from __future__ import annotations

import http.server
import importlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import procs

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


# The speedup the session's cache records for this CPU: above engine.device.BF16_MIN_SPEEDUP, so a run that names
# no precision trains in bf16 autocast on every machine, as it does by default on both CPUs this project has met
# (Intel with AMX, AMD Zen 5 with AVX-512 bf16: measured 1.6x here), whatever this machine's own timing says.
PINNED_BF16_SPEEDUP = 2.0
_SESSION_HOME: Path | None = None


def pin_precision(home: Path) -> Path:
    """Write the pinned bf16 decision (PINNED_BF16_SPEEDUP for this CPU and torch) into the cache folder `home`."""
    from resnetkit.engine import device

    home.mkdir(parents=True, exist_ok=True)
    (home / device.PRECISION_CACHE).write_text(json.dumps({device.bf16_cache_key(): PINNED_BF16_SPEEDUP}))
    return home


def pytest_configure(config: pytest.Config) -> None:
    """The session's RESNETKIT_HOME, set before any test module is imported; subprocesses inherit it."""
    global _SESSION_HOME
    if _SESSION_HOME is None:
        _SESSION_HOME = pin_precision(Path(tempfile.mkdtemp(prefix="resnetkit-home-")))
        os.environ["RESNETKIT_HOME"] = str(_SESSION_HOME)
        # ONNX files run on ONNX Runtime unless a test asks for another runtime or for `auto` (whose choice is a
        # timing, like the pinned bf16 decision above: tests must not depend on it)
        os.environ["RESNETKIT_RUNTIME"] = "onnxruntime"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    procs.reap_all()  # whatever a fixture left running
    if _SESSION_HOME is not None:
        shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture()
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh RESNETKIT_HOME for one test (an empty weights and data cache), with the pinned precision."""
    home = pin_precision(tmp_path / "home")
    monkeypatch.setenv("RESNETKIT_HOME", str(home))
    return home


TRUTHY = frozenset({"true", "1", "yes", "on"})


def in_ci() -> bool:
    """CI is set in a truthy form: true, 1, yes or on (any case, spaces ignored); "", 0, false, no, off are not."""
    return os.environ.get("CI", "").strip().lower() in TRUTHY


def _missing(what: str) -> None:
    """Fail under CI (what is missing is a test dependency), skip elsewhere: inside a test, or at a module's top
    (the whole module is skipped, rather than a collection error)."""
    if in_ci():
        pytest.fail(f"CI={os.environ.get('CI')!r} but {what}")
    pytest.skip(what, allow_module_level=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    """Under CI nothing skips silently: a skip of a test not marked `cuda` (the only ones CI cannot run: no GPU)
    is reported as a failure that names the skip's reason."""
    report = yield
    if report.skipped and in_ci() and item.get_closest_marker("cuda") is None and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"CI={os.environ.get('CI')!r}: a test may skip only for want of CUDA; skipped: " + str(
            report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        )
    return report


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


def cifar_test_images(
    cifar: str | Path, n: int, weights: str = "resnet20.rk_cifar10", memory_format: torch.memory_format | None = None
) -> torch.Tensor:
    """The first n CIFAR-10 test images, normalized as `weights` expect (channels-last unless memory_format)."""
    from resnetkit.data.cifar import load_cifar
    from resnetkit.transforms import preprocessing_for
    from resnetkit.weights.registry import get_weights

    ds = load_cifar(str(cifar), "cifar10", "test", progress=False)
    pre = preprocessing_for(get_weights(weights).data_config, "cifar")
    return pre.eval_batch(ds.images[:n]) if memory_format is None else pre.eval_batch(ds.images[:n], memory_format)


def one_line_error(capsys: pytest.CaptureFixture, args: list[str]) -> str:
    """`resnetkit ARGS` in this process fails as a user mistake: exit 2 and one line on stderr, which is returned."""
    from resnetkit.cli.main import main

    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("resnetkit: error:") and err.count("\n") == 1, err
    return err


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


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shipped ResNet-20 (resnet20.rk_cifar10) as fp32 ONNX, int8 ONNX (calibrated on CIFAR-10's training
    images) and .pt2, made once per session through the CLI; export and serve tests read them."""
    require_module("onnxruntime")
    from resnetkit.cli.main import main

    cifar = str(shared_data("cifar-10-batches-bin"))
    folder = tmp_path_factory.mktemp("exported")
    files = {"onnx": folder / "r20.onnx", "int8": folder / "r20_int8.onnx", "pt2": folder / "r20.pt2"}
    weights = "resnet20.rk_cifar10"
    assert main(["-q", "export", "--checkpoint", weights, "--out", str(files["onnx"])]) == 0
    assert main(["-q", "export", "--checkpoint", weights, "--format", "pt2", "--out", str(files["pt2"])]) == 0
    int8 = ["--int8", "--data", "cifar10", "--data-dir", cifar, "--out", str(files["int8"])]
    assert main(["-q", "export", "--checkpoint", weights, *int8]) == 0
    return files


@pytest.fixture(scope="session")
def cifar10_eval() -> Callable[..., dict]:
    """`resnetkit eval --checkpoint NAME --data cifar10 --json --no-compile [FLAGS]` on all 10,000 CIFAR-10 test
    images, each (NAME, FLAGS) evaluated once per session: the export and pretrained tests read the same numbers of
    the shipped weights."""
    import contextlib
    import io

    from resnetkit.cli.main import main

    data = str(shared_data("cifar-10-batches-bin"))
    done: dict[tuple[str, ...], dict] = {}

    def evaluate(name: str, *flags: str) -> dict:
        if (name, *flags) not in done:
            out = io.StringIO()
            args = ["-q", "eval", "--checkpoint", name, "--data", "cifar10", "--data-dir", data, "--json"]
            with contextlib.redirect_stdout(out):
                assert main([*args, "--no-compile", *flags]) == 0
            done[(name, *flags)] = json.loads(out.getvalue())
        return done[(name, *flags)]

    return evaluate
