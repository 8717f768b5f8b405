"""`resnetkit serve` speaks the Open Inference Protocol v2 over REST and gRPC (issue 30), checked with Triton's own
clients (`tritonclient.http`, `tritonclient.grpc`), nothing written here: health and metadata, inference from
encoded images (BYTES) and from normalised tensors (FP32), the classification extension, binary tensor data both
ways, OIP's errors, and gRPC requests drained on SIGTERM."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnetkit
from resnetkit.cli.main import main
from resnetkit.data.images import read_image
from resnetkit.runtime import Predictor

from conftest import require_module
from servers import Server, real_images, start_server

http = require_module("tritonclient.http")
grpc = require_module("tritonclient.grpc")
httpx = require_module("httpx")
InferenceServerException = require_module("tritonclient.utils").InferenceServerException
WEIGHTS = "resnet20.rk_cifar10"  # the shipped CIFAR-10 ResNet-20
MODEL = "resnet20"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    s = start_server(
        tmp_path_factory.mktemp("oip"), "--threads", "1", "--max-delay-ms", "20", "--grpc-port", "0", checkpoint=WEIGHTS
    )
    try:
        yield s
    finally:
        assert s.stop() == 0, s.log.read_text()


@pytest.fixture(scope="module")
def client(server) -> http.InferenceServerClient:
    return http.InferenceServerClient(server.url.removeprefix("http://"))


@pytest.fixture(scope="module")
def grpc_client(server) -> grpc.InferenceServerClient:
    port = httpx.get(f"{server.url}/v1/metadata", timeout=30).json()["grpc_port"]  # --grpc-port 0: the one taken
    return grpc.InferenceServerClient(f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    return real_images(tmp_path_factory.mktemp("images"))


def _encoded(paths: list[Path], binary: bool = True) -> http.InferInput:
    tensor = http.InferInput("image", [len(paths)], "BYTES")
    tensor.set_data_from_numpy(np.array([p.read_bytes() for p in paths], dtype=object), binary_data=binary)
    return tensor


def _predict_cli(capsys, paths: list[Path]) -> list[list[dict]]:
    assert main(["-q", "predict", "--checkpoint", WEIGHTS, "--json", "--topk", "10", *map(str, paths)]) == 0
    return [record["top"] for record in json.loads(capsys.readouterr().out)]


def test_health_and_metadata(client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1") and not client.is_model_ready("x")
    meta = client.get_server_metadata()
    assert meta["name"] == "resnetkit" and {"binary_tensor_data", "classification"} <= set(meta["extensions"])
    model = client.get_model_metadata(MODEL, "1")
    assert model["name"] == MODEL and model["versions"] == ["1"]
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in model["inputs"]} == {
        ("input", "FP32", (-1, 3, 32, 32)),
        ("image", "BYTES", (-1,)),
    }
    assert [(t["name"], t["shape"]) for t in model["outputs"]] == [("logits", [-1, 10]), ("probabilities", [-1, 10])]


def test_encoded_images_answer_as_predict_does(client, images, capsys) -> None:
    """Real photos and a CIFAR-10 PNG as BYTES: probabilities (binary) and logits (JSON) equal `resnetkit predict`'s
    on the same files (same backend: to 1e-5), and the classification extension names the same classes."""
    paths = list(images.values())
    outputs = [http.InferRequestedOutput("probabilities", binary_data=True), http.InferRequestedOutput("logits")]
    result = client.infer(MODEL, [_encoded(paths)], outputs=outputs, request_id="r1")
    probs, logits = result.as_numpy("probabilities"), result.as_numpy("logits")
    assert result.get_response()["id"] == "r1" and probs.shape == logits.shape == (3, 10)
    assert np.allclose(torch.from_numpy(logits.copy()).softmax(1).numpy(), probs, atol=1e-6)
    classes = Predictor.load(WEIGHTS).classes
    for row, top in zip(probs, _predict_cli(capsys, paths), strict=True):
        assert [classes[i] for i in np.argsort(-row)] == [t["class"] for t in top]
        assert np.allclose(np.sort(row)[::-1], [t["prob"] for t in top], atol=1e-5)
    assert classes[int(probs[0].argmax())] == "cat"  # the shipped model knows the cat photo
    ranked = client.infer(MODEL, [_encoded(paths)], outputs=[http.InferRequestedOutput("probabilities", class_count=3)])
    strings = ranked.as_numpy("probabilities")
    assert strings.shape == (3, 3)
    for row, probs_row in zip(strings, probs, strict=True):
        parts = [s.decode().split(":") for s in row]  # Triton's "score:index:label"
        assert [int(i) for _, i, _ in parts] == list(np.argsort(-probs_row)[:3])
        assert [label for _, _, label in parts] == [classes[int(i)] for _, i, _ in parts]
        assert np.allclose([float(score) for score, _, _ in parts], np.sort(probs_row)[::-1][:3], atol=1e-6)


def test_normalised_tensors_give_the_logits_of_the_same_images(client, images) -> None:
    """FP32 [N, 3, 32, 32] prepared as the model's preprocessing prepares the images (the exported ONNX file's
    input contract), sent as JSON and as binary data: the logits of the same images sent encoded."""
    paths = [images["cifar"], images["dog"]]
    predictor = Predictor.load(WEIGHTS)
    size = predictor.preprocessing.storage_size
    batch = torch.stack([read_image(p, size=size) for p in paths])
    x = predictor.prepare(batch).contiguous().numpy()
    want = client.infer(MODEL, [_encoded(paths)]).as_numpy("logits")
    for binary in (True, False):
        tensor = http.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        got = client.infer(MODEL, [tensor], model_version="1").as_numpy("logits")
        assert np.allclose(got, want, atol=1e-5), (binary, np.abs(got - want).max())


def _fp32(shape: list[int], datatype: str = "FP32", name: str = "input") -> http.InferInput:
    tensor = http.InferInput(name, shape, datatype)
    kind = np.float32 if datatype == "FP32" else np.int64
    tensor.set_data_from_numpy(np.zeros(shape, dtype=kind), binary_data=True)
    return tensor


def test_bad_requests_are_answered_in_oip_shape_and_the_server_goes_on(client, server, images, tmp_path) -> None:
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(images["cat"].read_bytes()[:2000])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    cases = {
        "unknown model": (lambda: client.infer("resnet50", [_fp32([1, 3, 32, 32])]), "404", "unknown model"),
        "unknown version": (
            lambda: client.infer(MODEL, [_fp32([1, 3, 32, 32])], model_version="7"),
            "404",
            "unknown version",
        ),
        "input name": (lambda: client.infer(MODEL, [_fp32([1, 3, 32, 32], name="x")]), "400", "unknown input"),
        "shape": (lambda: client.infer(MODEL, [_fp32([1, 3, 64, 64])]), "400", "[N, 3, 32, 32]"),
        "datatype": (lambda: client.infer(MODEL, [_fp32([1, 3, 32, 32], "INT64")]), "400", "FP32"),
        "output": (
            lambda: client.infer(MODEL, [_fp32([1, 3, 32, 32])], outputs=[http.InferRequestedOutput("x")]),
            "400",
            "unknown output",
        ),
        "too many images": (lambda: client.infer(MODEL, [_fp32([65, 3, 32, 32])]), "413", "more than 64"),
        "truncated": (lambda: client.infer(MODEL, [_encoded([truncated])]), "400", "truncated"),
        "not an image": (lambda: client.infer(MODEL, [_encoded([text])]), "400", "not an image"),
    }
    for name, (call, status, words) in cases.items():
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == status and words in caught.value.message(), (name, str(caught.value))
    r = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=b"{not json", timeout=30)
    assert r.status_code == 400 and isinstance(r.json()["error"], str)  # OIP's shape: {"error": "..."}
    as_text = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["abc"]}]}
    r = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=as_text, timeout=30)
    assert r.status_code == 400 and "binary data" in r.json()["error"]  # encoded images travel as binary data
    r = httpx.get(f"{server.url}/v2/models/{MODEL}/versions/1/nothing", timeout=30)
    assert r.status_code == 404 and isinstance(r.json()["error"], str)
    assert client.is_server_live() and client.is_server_ready()
    assert client.infer(MODEL, [_encoded([images["dog"]])]).as_numpy("probabilities").shape == (1, 10)


def test_a_png_with_alpha_reads_as_predict_reads_it(client, tmp_path, capsys) -> None:
    """The service decodes with the one image reader: transparency composited onto white, as `predict` does."""
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[10:30, 10:30] = (200, 30, 30, 255)
    path = tmp_path / "clear.png"
    Image.fromarray(rgba, "RGBA").save(path)
    probs = client.infer(MODEL, [_encoded([path])]).as_numpy("probabilities")[0]
    (top,) = _predict_cli(capsys, [path])
    assert np.allclose(np.sort(probs)[::-1], [t["prob"] for t in top], atol=1e-5)


def test_the_batcher_keeps_encoded_images_and_tensors_in_separate_batches() -> None:
    """uint8 images (/v1, OIP's BYTES) and OIP's float32 tensors queue together but never share a forward pass;
    each request gets its own rows back."""
    import asyncio

    from resnetkit.serve.batcher import DynamicBatcher

    batches: list[tuple[torch.dtype, int]] = []

    def run(batch: torch.Tensor) -> torch.Tensor:
        batches.append((batch.dtype, len(batch)))
        return batch.float().flatten(1)[:, :1]  # each image's first value: says whose row it is

    async def requests() -> list[list[float]]:
        batcher = DynamicBatcher(run, max_batch=8, max_delay_s=0.05, max_queue=64)
        batcher.start()
        u8 = [torch.full((3, 4, 4), i, dtype=torch.uint8) for i in range(3)]
        f32 = [torch.full((3, 2, 2), 10.0 + i) for i in range(3)]
        answers = await asyncio.gather(batcher.submit(u8[:2]), batcher.submit(f32), batcher.submit(u8[2:]))
        await batcher.stop()
        return [[float(a.row[0]) for a in answer] for answer in answers]

    assert asyncio.run(requests()) == [[0.0, 1.0], [10.0, 11.0, 12.0], [2.0]]
    assert batches == [(torch.uint8, 2), (torch.float32, 3), (torch.uint8, 1)]


def _grpc_encoded(paths: list[Path]) -> grpc.InferInput:
    tensor = grpc.InferInput("image", [len(paths)], "BYTES")
    tensor.set_data_from_numpy(np.array([p.read_bytes() for p in paths], dtype=object))
    return tensor


def test_grpc_answers_as_rest_does(grpc_client, client, images) -> None:
    """The same model over gRPC: health, metadata, BYTES and FP32 inputs, classification strings — the numbers of
    the REST answers to the same requests; errors as gRPC status codes, the server healthy after."""
    g = grpc_client
    assert g.is_server_live() and g.is_server_ready() and g.is_model_ready(MODEL, "1") and not g.is_model_ready("x")
    assert g.get_server_metadata(as_json=True)["name"] == "resnetkit"
    meta = g.get_model_metadata(MODEL, as_json=True)
    assert [t["name"] for t in meta["inputs"]] == ["input", "image"] and meta["outputs"][1]["shape"] == ["-1", "10"]
    paths = list(images.values())
    asked = [grpc.InferRequestedOutput("probabilities"), grpc.InferRequestedOutput("logits", class_count=2)]
    over_grpc = g.infer(MODEL, [_grpc_encoded(paths)], outputs=asked, request_id="g1")
    rest = [http.InferRequestedOutput("probabilities"), http.InferRequestedOutput("logits", class_count=2)]
    over_rest = client.infer(MODEL, [_encoded(paths)], outputs=rest)
    assert over_grpc.get_response().id == "g1"
    assert np.allclose(over_grpc.as_numpy("probabilities"), over_rest.as_numpy("probabilities"), atol=1e-6)
    assert over_grpc.as_numpy("logits").tolist() == over_rest.as_numpy("logits").tolist()  # "score:index:label"
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    tensors = grpc.InferInput("input", [2, 3, 32, 32], "FP32")
    tensors.set_data_from_numpy(x)
    rest_tensors = http.InferInput("input", [2, 3, 32, 32], "FP32")
    rest_tensors.set_data_from_numpy(x)
    got, want = g.infer(MODEL, [tensors]).as_numpy("logits"), client.infer(MODEL, [rest_tensors]).as_numpy("logits")
    assert np.allclose(got, want, atol=1e-5)
    for call, code in (
        (lambda: g.infer("resnet50", [tensors]), "StatusCode.NOT_FOUND"),
        (lambda: g.infer(MODEL, [tensors], model_version="2"), "StatusCode.NOT_FOUND"),
        (
            lambda: g.infer(MODEL, [_grpc_encoded([images["cat"]])], outputs=[grpc.InferRequestedOutput("x")]),
            "StatusCode.INVALID_ARGUMENT",
        ),
    ):
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert str(caught.value.status()) == code, str(caught.value)
    assert g.is_server_ready() and g.infer(MODEL, [_grpc_encoded([images["dog"]])]).as_numpy("probabilities").shape == (
        1,
        10,
    )


def test_sigterm_drains_grpc_requests_in_flight(tmp_path, images) -> None:
    """A gRPC request waiting in the batcher when SIGTERM comes is answered; the server then exits 0."""
    import threading
    import time

    s = start_server(tmp_path, "--max-delay-ms", "3000", "--threads", "1", "--grpc-port", "0", checkpoint=WEIGHTS)
    answer: list = []
    try:
        port = httpx.get(f"{s.url}/v1/metadata", timeout=30).json()["grpc_port"]
        g = grpc.InferenceServerClient(f"127.0.0.1:{port}")
        t = threading.Thread(target=lambda: answer.append(g.infer(MODEL, [_grpc_encoded([images["cat"]])])))
        t.start()
        in_flight = 'resnetkit_requests_in_progress{endpoint="v2_grpc_infer"}'
        deadline = time.monotonic() + 120
        while s.metric(in_flight) < 1:  # the request reached the batcher (a lone image waits 3 s for company)
            assert t.is_alive() and time.monotonic() < deadline, s.log.read_text()
            time.sleep(0.01)
    finally:
        code = s.stop()
    assert code == 0, s.log.read_text()
    t.join(timeout=60)
    assert answer and answer[0].as_numpy("probabilities").shape == (1, 10)


def test_an_api_key_guards_everything_but_health_and_is_never_shown(tmp_path, images) -> None:
    """--api-key-file: REST and gRPC refuse calls without `Bearer KEY` (401 / UNAUTHENTICATED) except liveness and
    readiness; with it they answer. The key is in neither /v1/metadata nor the server's output."""
    key = "k3y-for-this-test-only"
    (tmp_path / "key.txt").write_text(key + "\n")
    s = start_server(
        tmp_path, "--threads", "1", "--api-key-file", str(tmp_path / "key.txt"), "--grpc-port", "0", checkpoint=WEIGHTS
    )
    bearer = {"Authorization": f"Bearer {key}"}
    try:
        for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
            assert httpx.get(f"{s.url}{path}", timeout=30).status_code == 200, path
        for path in ("/v1/metadata", "/metrics", f"/v2/models/{MODEL}", "/v2"):
            refused = httpx.get(f"{s.url}{path}", timeout=30)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", path
            wrong = httpx.get(f"{s.url}{path}", headers={"Authorization": "Bearer nope"}, timeout=30)
            assert (
                wrong.status_code == 401 and httpx.get(f"{s.url}{path}", headers=bearer, timeout=30).status_code == 200
            )
        v1 = s.post([("file", ("cat.jpg", images["cat"].read_bytes()))])
        assert v1.status_code == 401 and "Bearer" in v1.json()["error"]["message"]  # /v1's error shape
        meta = httpx.get(f"{s.url}/v1/metadata", headers=bearer, timeout=30).json()
        assert key not in json.dumps(meta) and meta["settings"]["api_key_required"] is True
        rest = http.InferenceServerClient(s.url.removeprefix("http://"))
        assert rest.is_server_live() and rest.is_server_ready()
        with pytest.raises(InferenceServerException) as caught:
            rest.infer(MODEL, [_encoded([images["cat"]])])
        assert caught.value.status() == "401" and "Bearer" in caught.value.message()
        assert rest.infer(MODEL, [_encoded([images["cat"]])], headers=bearer).as_numpy("probabilities").shape == (1, 10)
        g = grpc.InferenceServerClient(f"127.0.0.1:{meta['grpc_port']}")
        assert g.is_server_live() and g.is_server_ready() and g.is_model_ready(MODEL)
        with pytest.raises(InferenceServerException) as caught:
            g.infer(MODEL, [_grpc_encoded([images["dog"]])])
        assert str(caught.value.status()) == "StatusCode.UNAUTHENTICATED"
        answer = g.infer(MODEL, [_grpc_encoded([images["dog"]])], headers={"authorization": f"Bearer {key}"})
        assert answer.as_numpy("probabilities").shape == (1, 10)
    finally:
        assert s.stop() == 0, s.log.read_text()
    assert key not in s.log.read_text()


def test_a_bad_api_key_source_is_one_line(tmp_path, capsys) -> None:
    (tmp_path / "empty.txt").write_text("\n")
    for args, words in (
        (["--api-key-file", str(tmp_path / "missing.txt")], "cannot read --api-key-file"),
        (["--api-key-file", str(tmp_path / "empty.txt")], "the API key is empty"),
        (["--grpc-port", "0", "--workers", "2"], "drop --workers"),
    ):
        assert main(["serve", "--checkpoint", WEIGHTS, "--port", "0", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err


def test_export_writes_a_triton_model_repository_entry(tmp_path, images, capsys) -> None:
    """`export --format triton`: config.pbtxt parsed with the schema tritonclient ships (ModelConfig) names the ONNX
    file's input and output with its dims (batch dimension dynamic), labels.txt holds the classes in order, and the
    file answers a real image with the logits `predict` computes; a second export onto the entry is refused."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    onnx = require_module("onnx")
    ort = require_module("onnxruntime")
    repo = tmp_path / "repo"
    assert (
        main(["-q", "export", "--checkpoint", WEIGHTS, "--format", "triton", "--out", str(repo), "--max-batch", "8"])
        == 0
    )
    entry = repo / MODEL
    config = text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == MODEL and config.backend == "onnxruntime" and config.max_batch_size == 8
    assert config.HasField("dynamic_batching")
    graph = onnx.load(str(entry / "1" / "model.onnx")).graph

    def dims(value) -> list[int]:
        return [d.dim_value for d in value.type.tensor_type.shape.dim][1:]  # the batch dimension is Triton's

    assert [(t.name, list(t.dims)) for t in config.input] == [(v.name, dims(v)) for v in graph.input]
    assert [(t.name, list(t.dims)) for t in config.output] == [(v.name, dims(v)) for v in graph.output]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32 and config.output[0].label_filename == "labels.txt"
    predictor = Predictor.load(WEIGHTS)
    assert (entry / "labels.txt").read_text().splitlines() == predictor.classes
    meta = {p.key: p.value for p in onnx.load(str(entry / "1" / "model.onnx")).metadata_props}
    assert json.loads(meta["resnetkit"])["resnetkit_version"] == resnetkit.__version__
    x = predictor.prepare(read_image(images["cat"], size=predictor.preprocessing.storage_size)[None])
    session = ort.InferenceSession(str(entry / "1" / "model.onnx"))
    got = session.run(None, {"input": x.contiguous().numpy()})[0]
    assert np.allclose(got, predictor.logits(x).numpy(), atol=1e-4)
    capsys.readouterr()
    assert main(["export", "--checkpoint", WEIGHTS, "--format", "triton", "--out", str(repo)]) == 2
    assert "exists already" in capsys.readouterr().err and sorted(p.name for p in repo.iterdir()) == [MODEL]


def test_with_preprocessing_takes_pixels_and_gives_the_float_files_logits(tmp_path, images, capsys) -> None:
    """--with-preprocessing: the ONNX input is uint8 [N, 32, 32, 3] pixels, normalised inside the graph; on real
    photos (center-cropped to the input size) it gives the float file's logits for the same photos. Its Triton
    entry declares TYPE_UINT8 [32, 32, 3] (parsed with tritonclient's schema, equal to the graph's input); resnetkit's
    own loaders refuse it in one line (they feed normalised floats)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    onnx = require_module("onnx")
    ort = require_module("onnxruntime")
    pixels, floats = tmp_path / "pixels.onnx", tmp_path / "floats.onnx"
    assert main(["-q", "export", "--checkpoint", WEIGHTS, "--with-preprocessing", "--out", str(pixels)]) == 0
    assert main(["-q", "export", "--checkpoint", WEIGHTS, "--out", str(floats)]) == 0
    predictor = Predictor.load(WEIGHTS)
    pre = predictor.preprocessing
    batch = torch.stack([read_image(p, size=pre.storage_size) for p in images.values()])
    as_pixels = batch[:, :, : pre.size, : pre.size].permute(0, 2, 3, 1).contiguous().numpy()  # CIFAR: no crop
    got = ort.InferenceSession(str(pixels)).run(None, {"input": as_pixels})[0]
    want = ort.InferenceSession(str(floats)).run(None, {"input": predictor.prepare(batch).contiguous().numpy()})[0]
    assert as_pixels.dtype == np.uint8 and np.allclose(got, want, atol=1e-4)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(pixels), "--data", "sample"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "takes uint8 pixels" in err
    repo = tmp_path / "repo"
    assert (
        main(
            ["-q", "export", "--checkpoint", WEIGHTS, "--format", "triton", "--with-preprocessing", "--out", str(repo)]
        )
        == 0
    )
    config = text_format.Parse((repo / MODEL / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    graph_input = onnx.load(str(repo / MODEL / "1" / "model.onnx")).graph.input[0]
    assert config.input[0].data_type == model_config_pb2.TYPE_UINT8 and list(config.input[0].dims) == [32, 32, 3]
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim][1:] == [32, 32, 3]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
