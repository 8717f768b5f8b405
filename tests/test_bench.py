"""`resnetkit bench`: runs both sides in one process and ends with one JSON line (numbers are not asserted:
speed goals live in benchmarks/RESULTS.md, never in timed tests)."""

from __future__ import annotations

import json

from resnetkit.cli.main import main

KEYS = {"images_per_sec", "baseline_images_per_sec", "ratio", "gflops_per_sec", "compiled", "threads"}


def test_bench_infer_json_line(capsys) -> None:
    assert main(["-q", "bench", "infer", "--model", "resnet20", "--batch-size", "4", "--seconds", "0.2",
                 "--no-compile"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert KEYS <= set(result) and result["bench"] == "infer" and result["max_abs_diff"] < 1e-4
    assert result["ratio"] == result["images_per_sec"] / result["baseline_images_per_sec"]


def test_bench_train_json_line(capsys) -> None:
    assert main(["-q", "bench", "train", "--steps", "2", "--batch-size", "32", "--no-compile"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert KEYS <= set(result) and result["bench"] == "train" and result["compiled"] is False


def test_bench_eval_compares_one_whole_evaluation(capsys) -> None:
    """Both sides evaluate the 500 test images of the embedded sample and produce the same logits."""
    assert main(["-q", "bench", "eval", "--model", "resnet20", "--batch-size", "100", "--no-compile"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert KEYS <= set(result) and result["bench"] == "eval" and result["compiled"] is False
    extra = result["extra"]
    assert extra["n"] == 500 and result["max_abs_diff"] < 1e-4
    assert abs(extra["top1"] - extra["baseline_top1"]) <= 1 / 500  # a near-tie may flip one argmax at most
    assert result["ratio"] == result["images_per_sec"] / result["baseline_images_per_sec"]
    assert extra["warm_ratio"] == extra["warm_images_per_sec"] / extra["warm_baseline_images_per_sec"]
