"""ExecuTorch (issue 32): `resnetkit export --format executorch` writes a `.pte` program lowered to XNNPACK (fp32, and
int8 through XNNPACK's PT2E quantizer) with its metadata inside, and every inference command runs it on ExecuTorch's
own runtime, on real CIFAR-10 images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import resnetkit
from resnetkit.cli.main import main
from resnetkit.runtime import Predictor
from resnetkit.weights.registry import get_weights

from conftest import cifar_test_images, one_line_error, require_module, shared_data

Runtime = require_module("executorch.runtime").Runtime
WEIGHTS = "resnet20.rk_cifar10"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("RESNETKIT_OFFLINE", "1")


@pytest.fixture(scope="module")
def cifar() -> str:
    return str(shared_data("cifar-10-batches-bin"))


@pytest.fixture(scope="module")
def ptes(tmp_path_factory, cifar) -> dict[str, Path]:
    """The shipped ResNet-20 as an fp32 and an int8 `.pte` (calibrated on 256 CIFAR-10 training images)."""
    folder = tmp_path_factory.mktemp("pte")
    files = {"fp32": folder / "r20.pte", "int8": folder / "r20_int8.pte"}
    assert main(["-q", "export", "--checkpoint", WEIGHTS, "--format", "executorch", "--out", str(files["fp32"])]) == 0
    int8 = ["--int8", "--data", "cifar10", "--data-dir", cifar, "--calib-size", "256", "--out", str(files["int8"])]
    assert main(["-q", "export", "--checkpoint", WEIGHTS, "--format", "executorch", *int8]) == 0
    return files


def test_pte_gives_pytorchs_logits_on_real_images(ptes, cifar) -> None:
    """fp32 on ExecuTorch equals PyTorch to 1e-4 at batch 200 (beyond the program's planned batch: run in chunks; the
    lowering once narrowed that bound to 15 images) and at batch 1; the metadata is read from inside the file."""
    x = cifar_test_images(cifar, 200, memory_format=torch.contiguous_format)
    with torch.no_grad():
        want = resnetkit.create_model("resnet20", weights=WEIGHTS).eval()(x)
    predictor = Predictor.load(ptes["fp32"])
    assert predictor.runtime == "executorch" and predictor.precision == "fp32"
    assert predictor.classes == list(get_weights(WEIGHTS).classes) and predictor.preprocessing.size == 32
    assert predictor.model.max_batch >= 16
    with predictor.running():
        got = predictor.logits(x)
        one = torch.cat([predictor.logits(x[i : i + 1]) for i in range(0, 200, 20)])
        planned = predictor.logits(x[: predictor.model.max_batch])
    assert (got - want).abs().max() <= 1e-4 and (one - want[::20]).abs().max() <= 1e-4
    assert (planned - want[: len(planned)]).abs().max() <= 1e-4


def test_int8_pte_agrees_with_pytorch_on_real_images(ptes, cifar) -> None:
    """XNNPACK's int8 keeps PyTorch's top-1 on 300 real test images (measured 99.4% on 1,000) in a quarter of the
    bytes, and says how it was calibrated."""
    x = cifar_test_images(cifar, 300, memory_format=torch.contiguous_format)
    with torch.no_grad():
        want = resnetkit.create_model("resnet20", weights=WEIGHTS).eval()(x)
    predictor = Predictor.load(ptes["int8"])
    assert predictor.runtime == "executorch" and predictor.precision == "int8"
    meta = json.loads(Runtime.get().load_program(ptes["int8"]).load_method("resnetkit_meta").execute([])[0])
    assert meta["calibration"]["images"] == 256 and meta["format"] == "executorch" and meta["precision"] == "int8"
    got = predictor.logits(x)
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.95
    assert ptes["int8"].stat().st_size < 0.4 * ptes["fp32"].stat().st_size


def test_eval_predict_and_bench_run_a_pte(ptes, tmp_path, capsys) -> None:
    """The embedded sample's 500 test images: the .pte scores what the weights score (same confusion matrix);
    predict gives the weights' top-1 on the example photos; bench infer runs it as deployed."""
    from resnetkit.data import load_sample
    from resnetkit.data.examples import write_example_images

    results = {}
    for source in (WEIGHTS, str(ptes["fp32"])):
        assert main(["-q", "eval", "--checkpoint", source, "--json", "--no-compile"]) == 0
        results[source] = json.loads(capsys.readouterr().out)
    ref, got = results[WEIGHTS], results[str(ptes["fp32"])]
    assert got["n"] == ref["n"] == 500 and got["confusion_matrix"] == ref["confusion_matrix"]
    folder = write_example_images(load_sample("test"), tmp_path / "ex")
    tops = {}
    for source in (WEIGHTS, str(ptes["fp32"]), str(ptes["int8"])):
        assert main(["-q", "predict", "--checkpoint", source, str(folder), "--json"]) == 0
        tops[source] = [p["top"][0]["class"] for p in json.loads(capsys.readouterr().out)]
    assert tops[str(ptes["fp32"])] == tops[WEIGHTS] and len(tops[WEIGHTS]) == 10
    assert sum(a == b for a, b in zip(tops[str(ptes["int8"])], tops[WEIGHTS], strict=True)) >= 9
    assert main(["-q", "bench", "infer", "--checkpoint", str(ptes["int8"]), "--seconds", "0.2"]) == 0
    bench = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert bench["extra"]["runtime"] == "executorch" and bench["extra"]["precision"] == "int8"
    assert bench["images_per_sec"] > 0 and bench["extra"]["same_weights"]


def test_a_pte_without_resnetkit_metadata_is_one_line(tmp_path, capsys) -> None:
    """A program ExecuTorch runs but resnetkit did not write (no classes, no preprocessing), and bytes that only
    look like a program: one error line each, exit 2."""
    from executorch.exir import to_edge_transform_and_lower

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).eval()
    program = torch.export.export(model, (torch.randn(1, 3, 8, 8),))
    foreign = tmp_path / "foreign.pte"
    foreign.write_bytes(to_edge_transform_and_lower(program).to_executorch().buffer)
    err = one_line_error(capsys, ["eval", "--checkpoint", str(foreign)])
    assert "was not made by resnetkit export: it has no resnetkit metadata" in err
    fake = tmp_path / "fake.pte"
    fake.write_bytes(b"\x1c\x00\x00\x00ET12" + bytes(120))
    assert "ExecuTorch cannot read" in one_line_error(capsys, ["predict", "--checkpoint", str(fake), str(tmp_path)])


def test_a_missing_edge_extra_is_named(ptes, tmp_path, capsys, monkeypatch) -> None:
    """Without executorch: exporting and running a .pte are each one line naming `pip install 'resnetkit[edge]'`."""
    monkeypatch.setitem(sys.modules, "executorch.exir", None)  # as if not installed: import raises ImportError
    monkeypatch.setitem(sys.modules, "executorch.runtime", None)
    out = tmp_path / "m.pte"
    err = one_line_error(capsys, ["export", "--checkpoint", WEIGHTS, "--format", "executorch", "--out", str(out)])
    assert "pip install 'resnetkit[edge]'" in err and "executorch" in err and not out.exists()
    err = one_line_error(capsys, ["eval", "--checkpoint", str(ptes["fp32"])])
    assert "pip install 'resnetkit[edge]'" in err
