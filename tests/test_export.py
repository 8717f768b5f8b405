"""Deploy (issue 16): `resnetkit export` to ONNX (fp32 and int8) and torch.export `.pt2`, and every inference
command running the exported file on its own runtime, on real CIFAR-10 images."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import resnetkit
from resnetkit.cli.main import main
from resnetkit.constants import VERSION
from resnetkit.data.cifar import load_cifar
from resnetkit.transforms import preprocessing_for
from resnetkit.weights.registry import SHIPPED, get_weights

from conftest import cifar_test_images, require_module, shared_data

onnx = require_module("onnx")
ort = require_module("onnxruntime")
WEIGHTS = "resnet20.rk_cifar10"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("RESNETKIT_OFFLINE", "1")  # the session's own RESNETKIT_HOME (conftest)


@pytest.fixture(scope="module")
def cifar() -> str:
    return str(shared_data("cifar-10-batches-bin"))


def _eval(capsys, checkpoint: str | Path, cifar: str) -> dict:
    assert (
        main(
            [
                "-q",
                "eval",
                "--checkpoint",
                str(checkpoint),
                "--data",
                "cifar10",
                "--data-dir",
                cifar,
                "--json",
                "--no-compile",
            ]
        )
        == 0
    )
    return json.loads(capsys.readouterr().out)


def test_onnx_runtime_logits_equal_pytorch_at_batch_1_and_256(exported, cifar) -> None:
    x = cifar_test_images(cifar, 1000)
    with torch.no_grad():
        want = resnetkit.create_model("resnet20", weights=WEIGHTS).eval()(x).numpy()
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    one = np.concatenate([session.run(None, {name: x[i : i + 1].numpy()})[0] for i in range(len(x))])
    big = np.concatenate([session.run(None, {name: x[i : i + 256].numpy()})[0] for i in range(0, len(x), 256)])
    assert one.shape == big.shape == (1000, 10)
    assert np.abs(one - want).max() <= 1e-4 and np.abs(big - want).max() <= 1e-4
    ops = {n.op_type for n in onnx.load(str(exported["onnx"])).graph.node}
    assert "Conv" in ops and "BatchNormalization" not in ops  # folded into the convolutions


def test_exported_files_describe_themselves(exported) -> None:
    meta = json.loads(next(p.value for p in onnx.load(str(exported["onnx"])).metadata_props if p.key == "resnetkit"))
    entry = get_weights(WEIGHTS)
    assert meta["classes"] == list(entry.classes) and meta["architecture"] == "resnet20"
    assert meta["preprocessing"]["size"] == 32 and meta["preprocessing"]["mean"] == list(entry.data_config.mean)
    assert meta["resnetkit_version"] == VERSION and meta["precision"] == "fp32" and meta["format"] == "onnx"
    assert meta["source_sha256"] == hashlib.sha256((SHIPPED / entry.url).read_bytes()).hexdigest()
    extra = {"resnetkit.json": ""}
    torch.export.load(str(exported["pt2"]), extra_files=extra)
    assert json.loads(extra["resnetkit.json"])["classes"] == list(entry.classes)
    int8 = onnx.load(str(exported["int8"]))
    meta8 = json.loads(next(p.value for p in int8.metadata_props if p.key == "resnetkit"))
    assert meta8["precision"] == "int8" and meta8["calibration"]["images"] == 512
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in int8.graph.node}
    assert exported["int8"].stat().st_size < 0.4 * exported["onnx"].stat().st_size  # int8 weights: a quarter


def test_eval_on_every_format_gives_the_checkpoints_top1(exported, cifar, capsys, cifar10_eval) -> None:
    """All 10,000 test images: fp32 ONNX and .pt2 score what the weights score; int8 within 0.5 points."""
    ref = cifar10_eval(WEIGHTS)
    for kind in ("onnx", "pt2", "int8"):
        res = _eval(capsys, exported[kind], cifar)
        assert res["n"] == 10_000 and res["classes"] == ref["classes"]
        if kind == "int8":
            assert abs(res["top1"] - ref["top1"]) <= 0.005, res["top1"]
        else:
            assert res["top1"] == ref["top1"] and res["confusion_matrix"] == ref["confusion_matrix"]


def test_predict_runs_every_format(exported, tmp_path, capsys) -> None:
    from resnetkit.data import load_sample
    from resnetkit.data.examples import write_example_images

    folder = write_example_images(load_sample("test"), tmp_path / "ex")
    tops = {}
    for kind in (WEIGHTS, *exported):
        assert main(["-q", "predict", "--checkpoint", str(exported.get(kind, kind)), str(folder), "--json"]) == 0
        tops[kind] = [[c["class"] for c in p["top"][:1]] for p in json.loads(capsys.readouterr().out)]
    assert len(tops[WEIGHTS]) == 10
    assert tops["onnx"] == tops["pt2"] == tops[WEIGHTS]
    assert sum(a == b for a, b in zip(tops["int8"], tops[WEIGHTS], strict=True)) >= 9


def test_explain_refuses_an_exported_file(exported, tmp_path, capsys) -> None:
    code = main(["explain", "--checkpoint", str(exported["onnx"]), str(tmp_path), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "without gradients" in err and err.count("\n") == 1


def _fails(capsys, *args: str) -> str:
    code = main(["export", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("resnetkit: error:") and err.count("\n") == 1, err
    return err


def test_bad_exports_fail_in_one_line_and_write_nothing(tmp_path, capsys, cifar) -> None:
    out = tmp_path / "out" / "m.onnx"
    base = ["--checkpoint", WEIGHTS, "--out", str(out)]
    assert "unknown export format 'tflite'" in _fails(capsys, *base, "--format", "tflite")
    assert "--int8 calibrates on real images" in _fails(capsys, *base, "--int8")
    assert "--calib-size must be at least 1" in _fails(
        capsys, *base, "--int8", "--data", "cifar10", "--data-dir", cifar, "--calib-size", "0"
    )
    assert "use --format onnx" in _fails(capsys, *base, "--int8", "--format", "pt2", "--data", "cifar10")
    assert "say what to export" in _fails(capsys, "--out", str(out))
    assert not out.parent.exists() or not list(out.parent.iterdir())  # no file, no temporary left behind


def test_a_missing_extra_is_named(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed: import raises ImportError
    err = _fails(capsys, "--checkpoint", WEIGHTS, "--out", str(tmp_path / "m.onnx"))
    assert "pip install 'resnetkit[deploy]'" in err and "onnxscript" in err
    assert not list(tmp_path.iterdir())


def test_files_that_are_not_resnetkit_onnx(tmp_path, capsys, cifar) -> None:
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    code = main(["eval", "--checkpoint", str(text), "--data", "cifar10", "--data-dir", cifar])
    err = capsys.readouterr().err
    assert code == 2 and "is not an ONNX" in err and err.count("\n") == 1

    # a plain torch.onnx export of the same weights: no metadata, still runs (CIFAR statistics assumed at 32 px)
    model = resnetkit.create_model("resnet20", weights=WEIGHTS).eval()
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(foreign), dynamo=True, verbose=False)
    assert main(["-q", "eval", "--checkpoint", str(foreign), "--data", "cifar10", "--data-dir", cifar, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["top1"] == get_weights(WEIGHTS).metrics["cifar10_test_top1"] and res["classes"][3] == "cat"
    code = main(["bench", "infer", "--checkpoint", str(foreign), "--seconds", "0.1"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()  # the warning of what was assumed, then the one error line
    assert code == 2 and "names no architecture" in lines[-1] and sum("error:" in line for line in lines) == 1

    class TwoInputs(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a + b

    two = tmp_path / "two.onnx"
    torch.onnx.export(TwoInputs().eval(), (torch.zeros(1, 4), torch.zeros(1, 4)), str(two), dynamo=True, verbose=False)
    code = main(["eval", "--checkpoint", str(two), "--data", "cifar10", "--data-dir", cifar])
    err = capsys.readouterr().err
    assert code == 2 and "not one image batch (N, 3, H, W)" in err and err.count("\n") == 1


def test_classes_that_do_not_match_the_data_are_refused(exported, capsys) -> None:
    folder = shared_data("cats_vs_dogs")
    args = ["--checkpoint", str(exported["onnx"]), "--data", "folder", "--data-dir", str(folder)]
    code = main(["-q", "eval", *args])  # -q: a decoded-images cache left by an earlier test says nothing
    err = capsys.readouterr().err
    assert code == 2 and "classes" in err and "differ" in err and err.count("\n") == 1


@pytest.mark.slow
def test_resnet50_at_224_round_trips(tmp_path, capsys) -> None:
    """An untrained ImageNet-style ResNet-50 (random weights, BatchNorm statistics randomized so folding matters)
    agrees with PyTorch to 1e-4 relative through ONNX Runtime."""
    from conftest import randomize_norm_stats

    torch.manual_seed(0)
    model = randomize_norm_stats(resnetkit.create_model("resnet50")).eval()
    weights = tmp_path / "r50.pt"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "r50.onnx"
    assert main(["-q", "export", "--checkpoint", str(weights), "--model", "resnet50", "--out", str(out)]) == 0
    x = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        want = model(x).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_report_runs_an_int8_file(exported, cifar, tmp_path, capsys) -> None:
    out = tmp_path / "report"
    assert (
        main(
            [
                "-q",
                "report",
                "--checkpoint",
                str(exported["int8"]),
                "--data",
                "cifar10",
                "--data-dir",
                cifar,
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 10_000 and abs(res["top1"] - get_weights(WEIGHTS).metrics["cifar10_test_top1"]) <= 0.005
    assert (out / "report.html").is_file() and (out / "confusion.png").stat().st_size > 1000


def _bench(capsys, *args: str) -> dict:
    assert main(["-q", "bench", *args, "--threads", "1"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_runs_each_format_against_the_eager_fp32_model(exported, capsys) -> None:
    """bench infer: the file on its runtime against the standard eager model holding the same (source) weights,
    with batch-1 latency; bench eval: a whole evaluation of the embedded sample's test images."""
    runtimes = {"onnx": ("onnxruntime", "fp32"), "int8": ("onnxruntime", "int8"), "pt2": ("torch.export", "fp32")}
    for kind, (runtime, precision) in runtimes.items():
        r = _bench(capsys, "infer", "--checkpoint", str(exported[kind]), "--batch-size", "4", "--seconds", "0.2")
        x = r["extra"]
        assert (x["runtime"], x["precision"], x["same_weights"]) == (runtime, precision, True)
        assert 0 < x["p50_ms"] <= x["p99_ms"] and 0 < x["baseline_p50_ms"] <= x["baseline_p99_ms"]
        assert r["images_per_sec"] > 0 and r["baseline_images_per_sec"] > 0
        assert x["file_mb"] == pytest.approx(exported[kind].stat().st_size / 1e6)
        if kind == "int8":
            assert 1e-4 < r["max_abs_diff"] < 3.0  # quantized: close to the fp32 logits, not equal
        else:
            assert r["max_abs_diff"] <= 1e-4
    r = _bench(capsys, "eval", "--checkpoint", str(exported["int8"]))
    assert r["extra"]["baseline_top1"] > 0.8 and abs(r["extra"]["top1"] - r["extra"]["baseline_top1"]) <= 0.02
    assert r["extra"]["n"] == 500 and r["bench"] == "eval"


def test_damaged_metadata_is_a_one_line_error_and_new_keys_are_ignored(exported, tmp_path, capsys, cifar) -> None:
    model = onnx.load(str(exported["onnx"]))
    entry = next(p for p in model.metadata_props if p.key == "resnetkit")
    meta = json.loads(entry.value)
    entry.value = json.dumps(meta | {"written_by_a_later_version": True})
    onnx.save(model, str(tmp_path / "newer.onnx"))
    assert main(["-q", "eval", "--checkpoint", str(tmp_path / "newer.onnx"), "--data", "sample", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == meta["classes"]
    for damaged in ("[1, 2]", json.dumps({k: v for k, v in meta.items() if k != "classes"}), "{not json"):
        entry.value = damaged
        onnx.save(model, str(tmp_path / "damaged.onnx"))
        code = main(["eval", "--checkpoint", str(tmp_path / "damaged.onnx"), "--data", "cifar10", "--data-dir", cifar])
        err = capsys.readouterr().err
        assert code == 2 and "resnetkit metadata is damaged" in err and err.count("\n") == 1, err


def test_int8_calibration_holds_one_batch_of_activations_at_a_time(cifar, monkeypatch) -> None:
    """ORT's histogram calibrator would keep every activation of every calibration batch (ResNet-50 at 224 px:
    ~40 MB an image; 512 images ran this 24 GiB machine out of memory); resnetkit feeds it one batch per
    collection, so each histogram update sees one batch."""
    from onnxruntime.quantization import calibrate

    from resnetkit.export.int8 import quantize_onnx
    from resnetkit.export.metadata import ExportMeta
    from resnetkit.export.onnx_writer import onnx_proto
    from resnetkit.models import create_model

    seen: list[int] = []
    original = calibrate.HistogramCollector.collect

    def spy(self, name_to_arr):  # noqa: ANN001, ANN202
        seen.append(max(len(arrays) for arrays in name_to_arr.values()))
        return original(self, name_to_arr)

    monkeypatch.setattr(calibrate.HistogramCollector, "collect", spy)
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    pre = preprocessing_for(model.default_cfg, "cifar")
    meta = ExportMeta(
        architecture="resnet20",
        classes=tuple("abcdefghij"),
        preprocessing=pre.to_dict(),
        format="onnx",
        source="test",
        source_sha256="",
    )
    images = cifar_test_images(cifar, 48)
    batches = [images[i : i + 16].numpy() for i in range(0, 48, 16)]
    _, record = quantize_onnx(onnx_proto(model, (3, 32, 32), meta), batches)
    assert seen == [1, 1, 1]
    assert record["images"] == 48


def test_onnx_files_are_fed_nchw_batches_without_a_copy(exported, cifar, tmp_path, monkeypatch) -> None:
    """ONNX Runtime takes NCHW arrays: evaluation and `predict` prepare their batches in that layout for an ONNX file
    (a channels_last batch would be copied back on every call) and channels_last for PyTorch models."""
    from resnetkit.data.datasets import ImageTensorDataset
    from resnetkit.data.examples import write_example_images
    from resnetkit.data.loader import BatchLoader
    from resnetkit.runtime import OnnxRuntimeModule, Predictor

    ds = load_cifar(cifar, "cifar10", "test", progress=False)
    small = ImageTensorDataset(ds.images[:8], ds.labels[:8], list(ds.classes))
    for source, contiguous in ((exported["onnx"], True), (exported["int8"], True), (WEIGHTS, False)):
        predictor = Predictor.load(source)
        x, _ = next(
            BatchLoader(
                small, predictor.preprocessing, batch_size=8, train=False, memory_format=predictor.memory_format
            ).epoch()
        )
        assert x.is_contiguous() == contiguous
        assert x.is_contiguous(memory_format=torch.channels_last) != contiguous
    handed: list[bool] = []  # what `predict` hands the ONNX Runtime module: NCHW-contiguous batches?
    forward = OnnxRuntimeModule.forward
    monkeypatch.setattr(
        OnnxRuntimeModule, "forward", lambda self, x: (handed.append(x.is_contiguous()), forward(self, x))[1]
    )
    folder = write_example_images(small, tmp_path / "ex")
    assert main(["-q", "predict", "--checkpoint", str(exported["onnx"]), str(folder), "--json"]) == 0
    assert handed == [True]  # one batch of the 8 images


def test_one_predictor_runs_every_source(exported, cifar) -> None:
    """`resnetkit.Predictor` (the Python API): the registered weights and their .onnx / int8 / .pt2 files give the same
    classes through one interface, describe their runtime and precision, and only the weights give gradients."""
    from resnetkit import Predictor
    from resnetkit.errors import ExportError

    images = load_cifar(cifar, "cifar10", "test", progress=False).images[:64]
    tops, described = {}, {}
    for kind, source in (("weights", WEIGHTS), *exported.items()):
        predictor = Predictor.load(source)
        probs = predictor.probabilities(images)
        assert probs.shape == (64, 10) and torch.allclose(probs.sum(1), torch.ones(64), atol=1e-4)
        rows = predictor.topk(probs, 3)
        assert [len(r) for r in rows] == [3] * 64 and all(r[0]["prob"] >= r[1]["prob"] >= r[2]["prob"] for r in rows)
        tops[kind] = [r[0]["class"] for r in rows]
        described[kind] = predictor.describe()
    assert tops["onnx"] == tops["pt2"] == tops["weights"]
    assert sum(a == b for a, b in zip(tops["int8"], tops["weights"], strict=True)) >= 60
    assert {k: (d["runtime"], d["precision"], d["gradients"]) for k, d in described.items()} == {
        "weights": ("pytorch", "fp32", True),
        "onnx": ("onnxruntime", "fp32", False),
        "int8": ("onnxruntime", "int8", False),
        "pt2": ("torch.export", "fp32", False),
    }
    assert all(d["model"] == "resnet20" and d["classes"][3] == "cat" for d in described.values())
    row = torch.full((10,), 0.03).index_fill(0, torch.tensor([1]), 0.73)  # one image's probabilities
    top = Predictor.load(WEIGHTS).topk(row, 99)  # k is capped at the 10 classes
    assert len(top) == 1 and len(top[0]) == 10 and top[0][0] == {"class": "automobile", "prob": pytest.approx(0.73)}
    with pytest.raises(ExportError, match="without gradients"):
        Predictor.load(exported["pt2"], gradients=True)


def test_torch_steps_aside_while_onnx_runtime_computes(exported) -> None:
    """Around an ONNX Runtime model's loop torch runs on one thread (ORT has its own pool; two pools on the same
    cores stall each other) and gets its threads back afterwards; PyTorch models keep torch's threads."""
    from resnetkit.runtime import Predictor

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with Predictor.load(exported["int8"]).running():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with Predictor.load(WEIGHTS).running():
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "openvino": ".xml", "executorch": ".pte"}


@pytest.mark.parametrize("fmt", ["onnx", "pt2", "openvino", "executorch"])
def test_an_export_that_disagrees_with_its_model_is_refused(fmt, tmp_path, monkeypatch, capsys) -> None:
    """Every export runs the written file on real images next to its PyTorch model: a graph that computes something
    else (here: a classifier whose weights the writer scaled by 1.5) is one error line, and nothing is at --out."""
    import copy

    import resnetkit.workflows.deploy as deploy

    write = deploy.export_model

    def wrong_graph(model, meta, out, **kwargs):
        other = copy.deepcopy(model)
        with torch.no_grad():
            other.get_classifier().weight.mul_(1.5)
        return write(other, meta, out, **kwargs)

    monkeypatch.setattr(deploy, "export_model", wrong_graph)
    if fmt in ("openvino", "executorch"):
        require_module(fmt)
    out = tmp_path / f"model{SUFFIXES[fmt]}"
    assert main(["export", "--checkpoint", WEIGHTS, "--format", fmt, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "disagrees with its model on real images" in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(deploy, "export_model", write)
    assert main(["-q", "export", "--checkpoint", WEIGHTS, "--format", fmt, "--out", str(out)]) == 0
    assert "checked on 32 real images" in capsys.readouterr().out and out.is_file()


def test_test_data_is_an_onnx_model_zoo_test_set(tmp_path, capsys) -> None:
    """--test-data 4: test_data_set_0/input_0.pb (4 real images, prepared) and output_0.pb beside the file, named
    as the graph's input and output; ONNX Runtime on the input gives the recorded output."""
    onnx = require_module("onnx")
    ort = require_module("onnxruntime")
    from onnx import numpy_helper

    out = tmp_path / "zoo" / "model.onnx"
    assert main(["-q", "export", "--checkpoint", WEIGHTS, "--out", str(out), "--test-data", "4"]) == 0
    folder = tmp_path / "zoo" / "test_data_set_0"
    x = onnx.load_tensor(str(folder / "input_0.pb"))
    y = onnx.load_tensor(str(folder / "output_0.pb"))
    graph = onnx.load(str(out)).graph
    assert (x.name, y.name) == (graph.input[0].name, graph.output[0].name)
    x, y = numpy_helper.to_array(x), numpy_helper.to_array(y)
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 10) and x.std() > 0.1  # real pictures, normalised
    got = ort.InferenceSession(str(out)).run(None, {graph.input[0].name: x})[0]
    assert np.allclose(got, y, atol=1e-4)
    assert (
        main(
            ["export", "--checkpoint", WEIGHTS, "--format", "pt2", "--out", str(tmp_path / "m.pt2"), "--test-data", "2"]
        )
        == 2
    )
    assert "use --format onnx" in capsys.readouterr().err
