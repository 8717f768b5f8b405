"""`resnetkit bench`: runs both sides in one process and ends with one JSON line (numbers are not asserted:
speed goals live in benchmarks/RESULTS.md, never in timed tests)."""

from __future__ import annotations

import json
import math

import pytest

from resnetkit.cli.main import main

KEYS = {"images_per_sec", "baseline_images_per_sec", "ratio", "gflops_per_sec", "compiled", "threads"}
# ResNet-20 at 32x32, counted by hand: conv1 32*32*16*27 + stage 1 6*(32*32*16*144) + stage 2 (16*16*32*144 +
# 5*16*16*32*288) + stage 3 (8*8*64*288 + 5*8*8*64*576) + fc 64*10 multiply-adds per image
RESNET20_MACS = 442_368 + 14_155_776 + 1_179_648 + 11_796_480 + 1_179_648 + 11_796_480 + 640


def _checked(out: str, flops_per_image: float) -> dict:
    """The final JSON line, after checking what can be checked of it without timing: both rates positive and
    finite, the printed table and ratio equal to it (to print precision), GFLOP/s = images/s x the FLOPs of one
    image counted by hand."""
    lines = out.strip().splitlines()
    result = json.loads(lines[-1])
    table = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines[1:3]}
    for who, prefix in (("baseline", "baseline_"), ("resnetkit", "")):
        ips, gflops = result[f"{prefix}images_per_sec"], result[f"{prefix}gflops_per_sec"]
        assert math.isfinite(ips) and ips > 0
        assert gflops == pytest.approx(ips * flops_per_image / 1e9, rel=1e-9)
        assert table[who][:2] == [round(ips, 1), round(gflops, 1)]
    assert lines[3].startswith(f"ratio {result['ratio']:.2f}x ") and result["ratio"] > 0
    assert result["ratio"] == pytest.approx(result["images_per_sec"] / result["baseline_images_per_sec"])  # defined so
    return result


def test_bench_infer_json_line(capsys) -> None:
    assert (
        main(["-q", "bench", "infer", "--model", "resnet20", "--batch-size", "4", "--seconds", "0.2", "--no-compile"])
        == 0
    )
    result = _checked(capsys.readouterr().out, 2 * RESNET20_MACS)
    assert KEYS <= set(result) and result["bench"] == "infer" and result["max_abs_diff"] < 1e-4  # same outputs
    for prefix in ("", "baseline_"):  # one batch of 4 per latency
        assert result[f"{prefix}latency_ms"] * result[f"{prefix}images_per_sec"] == pytest.approx(4000)


def test_bench_train_json_line(capsys) -> None:
    assert main(["-q", "bench", "train", "--steps", "2", "--batch-size", "32", "--no-compile"]) == 0
    result = _checked(capsys.readouterr().out, 6 * RESNET20_MACS)  # forward + backward ~ 3 forwards
    assert KEYS <= set(result) and result["bench"] == "train" and result["compiled"] is False


def test_bench_eval_compares_one_whole_evaluation(capsys) -> None:
    """Both sides evaluate the 500 test images of the embedded sample and produce the same logits."""
    assert main(["-q", "bench", "eval", "--model", "resnet20", "--batch-size", "100", "--no-compile"]) == 0
    result = _checked(capsys.readouterr().out, 2 * RESNET20_MACS)
    assert KEYS <= set(result) and result["bench"] == "eval" and result["compiled"] is False
    extra = result["extra"]
    assert extra["n"] == 500 and result["max_abs_diff"] < 1e-4  # both sides computed the same logits
    assert abs(extra["top1"] - extra["baseline_top1"]) <= 1 / 500  # a near-tie may flip one argmax at most
    # a rate is the 500 images over the seconds that one whole evaluation took
    assert result["images_per_sec"] * extra["seconds"] == pytest.approx(500)
    assert result["baseline_images_per_sec"] * extra["baseline_seconds"] == pytest.approx(500)
    warm = (extra["warm_images_per_sec"], extra["warm_baseline_images_per_sec"])
    assert all(math.isfinite(v) and v > 0 for v in warm)


class _RecordingSession:
    """An ONNX Runtime session's interface (inputs, outputs, run) that records the batch of every call."""

    def __init__(self, batch: int | str = "N") -> None:
        self.batch, self.calls = batch, []

    def get_inputs(self):  # type: ignore[no-untyped-def]
        return [type("Arg", (), {"name": "input", "shape": [self.batch, 3, "H", "W"]})]

    def get_outputs(self):  # type: ignore[no-untyped-def]
        return [type("Arg", (), {"name": "logits"})]

    def run(self, names, feed):  # type: ignore[no-untyped-def]
        x = feed["input"]
        self.calls.append(len(x))
        return [x.reshape(len(x), -1)[:, :2] * 2]  # per-image "logits", so any mix-up of rows shows


@pytest.mark.parametrize(
    ("batch", "size", "fixed", "calls"),
    [
        (250, 32, "N", [64, 64, 64, 58]),  # CIFAR-sized images: chunks of 64 (issue 32)
        (64, 32, "N", [64]),
        (7, 32, "N", [7]),
        (100, 64, "N", [16] * 6 + [4]),  # 4x the pixels: a quarter of the images per chunk
        (40, 224, "N", [40]),  # fewer than MIN_CHUNK images fit a chunk: the batch runs whole
        (250, 32, 8, [8] * 32),  # a file with a fixed batch gets exactly that (the last chunk zero-padded)
    ],
)
def test_onnx_runtime_module_runs_large_batches_of_small_images_in_chunks(batch, size, fixed, calls) -> None:
    import torch

    from resnetkit.runtime import OnnxRuntimeModule

    session = _RecordingSession(fixed)
    x = torch.randn(batch, 3, size, size)
    out = OnnxRuntimeModule(session)(x)
    assert session.calls == calls
    assert torch.equal(out, x.reshape(batch, -1)[:, :2] * 2)  # every row its own image's, in order


def test_int8_onnx_session_does_not_spin_and_chunks_give_the_whole_batch_logits(exported) -> None:
    """Issue 32: ONNX Runtime's idle workers do not busy-wait (they took the cores the batches being prepared and a
    training run beside needed), and a batch run in chunks gives exactly the logits of one call on the whole batch."""
    import torch

    from resnetkit.data.cifar import load_sample
    from resnetkit.runtime import Predictor

    predictor = Predictor.load(exported["int8"], runtime="onnxruntime")
    session = predictor.model.session
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    x = predictor.prepare(load_sample("test").images[:150])
    whole = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert torch.equal(predictor.logits(x), torch.from_numpy(whole))
