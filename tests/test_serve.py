"""`resnetkit serve` (issue 17): the real server, started in a subprocess on 127.0.0.1 (a free port), talked to
over HTTP with real cats-vs-dogs and CIFAR-10 images."""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetkit.cli.main import main

import procs
from conftest import require_module, require_program
from servers import READY_LIMIT_S, Server, real_images, start_server

httpx = require_module("httpx")
require_module("fastapi")
WEIGHTS = "resnet20.rk_cifar10"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    s = start_server(
        tmp_path_factory.mktemp("serve"),
        "--max-body-mb",
        "1",
        "--max-delay-ms",
        "250",
        "--threads",
        "1",
        "--max-queue",
        "8",
        checkpoint=WEIGHTS,
    )
    try:
        yield s
    finally:
        assert s.stop() == 0, s.log.read_text()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    return real_images(tmp_path_factory.mktemp("images"))


def _predict_cli(capsys, path: Path, checkpoint: str | Path = WEIGHTS) -> list[dict]:
    assert main(["-q", "predict", "--checkpoint", str(checkpoint), "--json", "--topk", "5", str(path)]) == 0
    return json.loads(capsys.readouterr().out)[0]["top"]


def _same_top(served: list[dict], cli: list[dict]) -> None:
    assert [t["class"] for t in served] == [t["class"] for t in cli]
    assert np.allclose([t["prob"] for t in served], [t["prob"] for t in cli], atol=1e-5)


def test_predict_equals_the_cli_for_real_photos_and_cifar_images(server, images, capsys) -> None:
    files = [("file", (p.name, p.read_bytes())) for p in images.values()]
    passes = server.metric("resnetkit_batch_size_count")
    r = server.post(files)
    assert r.status_code == 200, r.text
    assert server.metric("resnetkit_batch_size_count") - passes == 1  # three images, one forward pass (--max-batch 32)
    body = r.json()
    timing = dict(part.split(";dur=") for part in r.headers["server-timing"].split(", "))
    assert set(timing) == {"decode", "queue", "forward", "encode"} and all(float(v) >= 0 for v in timing.values())
    assert body["model"] == "resnet20"
    assert [p["name"] for p in body["predictions"]] == [p.name for p in images.values()]
    for served, path in zip(body["predictions"], images.values(), strict=True):
        _same_top(served["top"], _predict_cli(capsys, path))
    assert body["predictions"][0]["top"][0]["class"] == "cat"  # the shipped CIFAR-10 model knows a cat


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Iterator[Path]:
    """A run folder of `resnetkit train` (ResNet-20, two fp32 steps on the embedded sample)."""
    out = tmp_path_factory.mktemp("run") / "r20"
    threads = torch.get_num_threads()
    tiny = ["--data", "sample", "--model", "resnet20", "--max-steps", "2", "--batch-size", "32", "--no-progress"]
    tiny += ["--train-subset", "64", "--test-subset", "32", "--no-amp", "--threads", "1"]
    try:
        assert main(["-q", "train", *tiny, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    yield out


def _listening_on(proc) -> set[tuple[str, int]]:
    """The (address, port) pairs the server process listens on (the process's own sockets: another program on
    the same port of another address does not count)."""
    import psutil

    sockets = psutil.Process(proc.pid).net_connections("tcp")
    return {(c.laddr.ip, c.laddr.port) for c in sockets if c.status == psutil.CONN_LISTEN}


@pytest.mark.parametrize("kind", ["onnx", "int8", "run folder"])
def test_exported_files_and_run_folders_are_served_within_the_limits(
    kind, exported, run_folder, images, tmp_path, capsys
) -> None:
    """`--checkpoint` an fp32 ONNX file, an int8 ONNX file or a run folder: answers equal `resnetkit predict`'s on
    the same file; `--max-batch 2` splits three images into two forward passes; `--max-pixels` refuses a larger
    image (413); `--host 127.0.0.2` listens there and not on 127.0.0.1."""
    checkpoint = run_folder if kind == "run folder" else exported[kind]
    limits = ["--max-batch", "2", "--max-pixels", "1000000", "--host", "127.0.0.2", "--threads", "1"]
    s = start_server(tmp_path, *limits, checkpoint=checkpoint)
    try:
        assert s.url.startswith("http://127.0.0.2:")
        assert _listening_on(s.proc) == {("127.0.0.2", int(s.url.rsplit(":", 1)[1]))}  # there, and not on 127.0.0.1
        meta = httpx.get(f"{s.url}/v1/metadata").json()
        assert meta["runtime"] == ("pytorch" if kind == "run folder" else "onnxruntime"), meta
        passes = s.metric("resnetkit_batch_size_count")
        r = s.post([("file", (p.name, p.read_bytes())) for p in images.values()])
        assert r.status_code == 200, r.text
        assert s.metric("resnetkit_batch_size_count") - passes == 2
        for served, path in zip(r.json()["predictions"], images.values(), strict=True):
            _same_top(served["top"], _predict_cli(capsys, path, checkpoint))
        big = s.post([("file", ("big.png", _png_of(1200, 1000)))])  # 1.2 megapixels
        assert big.status_code == 413 and "1000000" in big.json()["error"]["message"].replace(",", ""), big.text
        assert s.post([("file", ("ok.png", _png_of(1000, 1000)))]).status_code == 200
    finally:
        assert s.stop() == 0, s.log.read_text()


def test_json_base64_bodies_give_the_same_answer(server, images) -> None:
    import base64

    data = images["dog"].read_bytes()
    by_json = server.post(json={"images": [base64.b64encode(data).decode()]}).json()["predictions"][0]["top"]
    by_form = server.post([("file", ("dog.jpg", data))]).json()["predictions"][0]["top"]
    _same_top(by_json, by_form)


def test_metadata_health_readiness_metrics_and_docs(server) -> None:
    meta = httpx.get(f"{server.url}/v1/metadata").json()
    assert meta["model"] == "resnet20" and len(meta["classes"]) == 10 and meta["classes"][3] == "cat"
    assert meta["preprocessing"]["size"] == 32 and meta["runtime"] == "pytorch"
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "alive"}
    assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready"}
    assert "/v1/predict" in httpx.get(f"{server.url}/openapi.json").json()["paths"]
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "resnetkit_requests_total",
        "resnetkit_request_seconds_bucket",
        "resnetkit_batch_size_bucket",
        "resnetkit_queue_depth",
        "resnetkit_forward_seconds_count",
    ):
        assert name in text


def _png_of(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, format="PNG")
    return out.getvalue()


def test_bad_requests_get_their_4xx_and_the_service_goes_on(server, images) -> None:
    jpeg = images["cat"].read_bytes()
    too_large = 'resnetkit_requests_total{endpoint="predict",status="413"}'
    before = server.metric(too_large)
    cases = {
        "text file": (server.post([("file", ("notes.txt", b"just some text, not an image"))]), 415),
        "truncated JPEG": (server.post([("file", ("cut.jpg", jpeg[: len(jpeg) // 3]))]), 422),
        "60-megapixel PNG": (server.post([("file", ("huge.png", _png_of(7746, 7746)))]), 413),
        "body over the cap": (server.post([("file", ("big.jpg", os.urandom(1_100_000)))]), 413),
        "wrong field name": (server.post([("image", ("cat.jpg", jpeg))]), 400),
        "empty body": (httpx.post(f"{server.url}/v1/predict", timeout=30), 400),
        "bad JSON": (server.post(content=b"{no", headers={"content-type": "application/json"}), 400),
        "unknown path": (httpx.get(f"{server.url}/v1/nothing"), 404),  # /v2 answers in OIP's shape (test_oip)
    }
    for what, (response, status) in cases.items():
        assert response.status_code == status, (what, response.text)
        error = response.json()["error"]
        assert error["status"] == status and error["message"] and "\n" not in error["message"], what
    assert server.post([("file", ("cat.jpg", jpeg))]).status_code == 200
    assert server.metric(too_large) - before == 2


def test_a_full_queue_answers_503_with_retry_after(server, images) -> None:
    data = images["cat"].read_bytes()
    r = server.post([("file", (f"{i}.jpg", data)) for i in range(9)])  # the queue holds 8 images
    assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text


def test_concurrent_requests_share_forward_passes(server, images) -> None:
    """Twelve requests at once: dynamic batching answers them in fewer forward passes than requests."""
    data = images["dog"].read_bytes()

    before = server.metric("resnetkit_batch_size_count")
    together = threading.Barrier(6)
    results: list[int] = []

    def one() -> None:
        together.wait()  # sent at once; the first image's batch waits --max-delay-ms (250) for the others
        results.append(server.post([("file", ("d.jpg", data))]).status_code)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 6
    assert server.metric("resnetkit_batch_size_count") - before < 6


def test_sigterm_lets_requests_in_flight_finish_then_exits_0(tmp_path, images) -> None:
    s = start_server(
        tmp_path, "--max-delay-ms", "3000", "--threads", "1", checkpoint=WEIGHTS
    )  # a lone request waits 3 s for company
    answer: list[httpx.Response] = []
    t = threading.Thread(target=lambda: answer.append(s.post([("file", ("cat.jpg", images["cat"].read_bytes()))])))
    try:
        t.start()
        in_flight = 'resnetkit_requests_in_progress{endpoint="predict"}'
        deadline = time.monotonic() + READY_LIMIT_S
        while s.metric(in_flight) < 1:  # the request has reached the service: now it is in flight
            assert t.is_alive() and time.monotonic() < deadline, (answer, s.log.read_text())
            time.sleep(0.01)
    finally:
        code = s.stop()  # stops the server whatever the assertions find
    assert code == 0, s.log.read_text()
    t.join()
    assert answer[0].status_code == 200 and answer[0].json()["predictions"][0]["top"]


def test_a_request_past_the_timeout_gets_504_and_the_service_goes_on(tmp_path, images) -> None:
    s = start_server(
        tmp_path, "--max-delay-ms", "3000", "--timeout", "0.5", "--threads", "1", checkpoint=WEIGHTS
    )  # a lone image waits 3 s
    try:
        r = s.post([("file", ("cat.jpg", images["cat"].read_bytes()))])
        assert r.status_code == 504, r.text
        assert r.json()["error"]["status"] == 504 and "0.5 s" in r.json()["error"]["message"]
        assert httpx.get(f"{s.url}/healthz", timeout=5).status_code == 200
    finally:
        assert s.stop() == 0, s.log.read_text()


def test_several_worker_processes_serve_and_stop_cleanly(tmp_path, images) -> None:
    s = start_server(tmp_path, "--workers", "2", "--threads", "1", checkpoint=WEIGHTS)
    try:
        workers = procs.descendants(s.proc.pid)
        assert len(workers) >= 2, workers  # uvicorn's supervisor and its worker processes
        data = images["dog"].read_bytes()
        answers = [s.post([("file", ("d.jpg", data))]) for _ in range(6)]
        assert [r.status_code for r in answers] == [200] * 6
        assert len({json.dumps(r.json()["predictions"]) for r in answers}) == 1  # every worker, the same answer
    finally:
        assert s.stop() == 0, s.log.read_text()


def test_serve_refuses_a_bad_checkpoint_in_one_line(capsys) -> None:
    assert main(["serve", "--checkpoint", "no_such_model.rk_nothing"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no_such_model" in err


def test_explain_returns_the_grad_cam_overlay_png(server, images) -> None:
    """A PNG at least 256 px a side for a 32 px model, naming the predicted class, which differs from the plain
    upscaled photo (the heat map is drawn over it), and a 400 for two images at once."""
    data = images["cat"].read_bytes()
    r = httpx.post(f"{server.url}/v1/explain", files=[("file", ("cat.jpg", data))], timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    picture = Image.open(io.BytesIO(r.content))
    assert picture.format == "PNG" and min(picture.size) >= 256 and picture.mode == "RGB"
    assert r.headers["x-class"] == "cat" and 0 < float(r.headers["x-probability"]) <= 1
    top = server.post([("file", ("cat.jpg", data))]).json()["predictions"][0]["top"][0]
    assert abs(float(r.headers["x-probability"]) - top["prob"]) < 1e-4
    photo = Image.open(images["cat"]).convert("RGB").resize(picture.size)
    assert np.abs(np.asarray(picture, dtype=float) - np.asarray(photo, dtype=float)).mean() > 10
    two = httpx.post(f"{server.url}/v1/explain", files=[("file", ("a.jpg", data)), ("file", ("b.jpg", data))])
    assert two.status_code == 400 and "one image" in two.json()["error"]["message"]


def test_the_page_in_a_real_browser(server, images, tmp_path, monkeypatch) -> None:
    """Debian's Chromium, headless, through Selenium: the page loads the model's description, a cat photo picked
    in its file input gets its top-5 bars with "cat" first and its Grad-CAM overlay image loads."""
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for a browser or driver online
    webdriver = require_module("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = require_program("chromium")
    quiet = ("--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,800", *quiet):
        options.add_argument(flag)  # quiet: no look-ups of Google's hosts, which this closed network refuses
    service = webdriver.ChromeService(executable_path=require_program("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "resnet20" in d.find_element(By.ID, "model").text)
        upload = driver.find_element(By.ID, "file-input")
        upload.send_keys(str(images["cat"]))
        best = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".result .top-class"))[0]
        assert best.get_attribute("textContent") == "cat"
        assert len(driver.find_elements(By.CSS_SELECTOR, ".result .bar")) == 5
        wait.until(
            lambda d: d.execute_script(
                "const i = document.querySelector('.result img.overlay');"
                "return i && i.complete && i.naturalWidth >= 256;"
            )
        )
        shot = Path(os.environ.get("RESNETKIT_SCREENSHOT", tmp_path / "page.png"))
        driver.save_screenshot(str(shot))
        assert Image.open(shot).size[0] > 500
    finally:
        driver.quit()
        procs.reap(service.process)  # chromedriver, and a Chromium that outlived quit()


def test_without_the_serve_extra_serve_names_it(capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed: `import uvicorn` raises ImportError
    assert main(["serve", "--checkpoint", WEIGHTS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'resnetkit[serve]'" in err and "uvicorn" in err
