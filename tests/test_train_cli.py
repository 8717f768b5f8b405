"""End to end through the real CLI on real data: files written, metric keys, eval JSON, predict, resume exactness."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetkit.cli.main import main
from resnetkit.engine import runner

import faults
import procs
from conftest import REPO, confusion_from_predictions, shared_data

FAULTS = Path(faults.__file__)

QUIET = ["-q"]
TINY = ["--no-progress", "--batch-size", "32", "--train-subset", "128", "--threads", "2"]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([*QUIET, *args])
    out, err = capsys.readouterr()
    return code, out, err


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_train_eval_predict_on_cifar10(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = shared_data("cifar-10-batches-bin")
    run = tmp_path / "run"
    code, out, err = cli(
        capsys, "train", "--data", "cifar10", "--data-dir", str(data), "--epochs", "1", "--out", str(run), *TINY
    )
    assert code == 0, err
    assert "completed after 4 steps" in out
    for name in (
        "config.yaml",
        "run.json",
        "metrics.jsonl",
        "curves.png",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and {
        "epoch",
        "step",
        "lr",
        "train_loss",
        "train_top1",
        "test_loss",
        "test_top1",
        "test_top5",
        "train_images_per_s",
    } <= set(rows[0])
    info = json.loads((run / "run.json").read_text())
    assert info["datasets"]["train"]["n"] == 128 and info["datasets"]["test"]["n"] == 10_000
    code, out, err = cli(
        capsys, "eval", "--checkpoint", str(run), "--data", "cifar10", "--data-dir", str(data), "--json", "--no-compile"
    )
    assert code == 0, err
    res = json.loads(out)
    assert res["n"] == 10_000 and 0.0 <= res["top1"] <= res["top5"] <= 1.0 and res["loss"] > 0
    # eval (BatchNorm folded, channels_last) and the training loop's eager evaluation agree, up to a rare tie
    assert res["top1"] == pytest.approx(rows[0]["test_top1"], abs=2e-4)
    assert len(res["per_class_accuracy"]) == 10 and sum(map(sum, res["confusion_matrix"])) == 10_000
    # predict: the first 8 test images of each class as PNG files (read from the binary here); predict's top-1
    # of each image is eval's argmax for the same images, so both confusion matrices are the same
    classes = res["classes"]
    raw = np.fromfile(data / "test_batch.bin", dtype=np.uint8).reshape(10_000, 3073)
    folder = tmp_path / "pngs"
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in np.flatnonzero(raw[:, 0] == c)[:8]:
            Image.fromarray(raw[i, 1:].reshape(3, 32, 32).transpose(1, 2, 0)).save(folder / name / f"{i}.png")
    code, out, err = cli(
        capsys,
        "eval",
        "--checkpoint",
        str(run),
        "--data",
        "folder",
        "--data-dir",
        str(folder),
        "--split",
        "all",
        "--json",
        "--no-compile",
    )
    assert code == 0, err
    sub = json.loads(out)
    assert sub["n"] == 80 and sub["classes"] == classes
    code, out, err = cli(capsys, "predict", "--checkpoint", str(run), str(folder), "--topk", "3", "--json")
    assert code == 0, err
    preds = json.loads(out)
    assert len(preds) == 80 and all(len(p["top"]) == 3 for p in preds)
    assert confusion_from_predictions(preds, classes) == sub["confusion_matrix"]
    top1 = sum(Path(p["path"]).parent.name == p["top"][0]["class"] for p in preds) / 80
    assert top1 == pytest.approx(sub["top1"])


def test_train_eval_predict_on_an_image_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = shared_data("cats_vs_dogs")
    run = tmp_path / "run"
    code, out, err = cli(
        capsys,
        "train",
        "--config",
        "cats_vs_dogs",
        "--data-dir",
        str(data),
        "--img-size",
        "32",
        "--max-steps",
        "3",
        "--out",
        str(run),
        *TINY,
    )
    assert code == 0, err
    assert json.loads((run / "run.json").read_text())["classes"] == ["cat", "dog"]
    code, out, err = cli(
        capsys,
        "eval",
        "--checkpoint",
        str(run / "checkpoints" / "best.pt"),
        "--data",
        "folder",
        "--data-dir",
        str(data),
        "--split",
        "val",
        "--json",
    )
    assert code == 0, err
    res = json.loads(out)
    assert res["n"] == 1000 and res["classes"] == ["cat", "dog"] and len(res["confusion_matrix"]) == 2
    # predict on every held-out image: its top-1 is eval's argmax for the same images (same confusion matrix)
    images = [sorted((data / "val" / c).glob("*.jpg")) for c in ("cat", "dog")]
    code, out, err = cli(capsys, "predict", "--checkpoint", str(run), str(data / "val"), "--topk", "2", "--json")
    assert code == 0, err
    preds = json.loads(out)
    assert sorted(p["path"] for p in preds) == sorted(str(i) for i in images[0] + images[1])
    assert all([t["class"] for t in p["top"]] in (["cat", "dog"], ["dog", "cat"]) for p in preds)
    assert confusion_from_predictions(preds, ["cat", "dog"]) == res["confusion_matrix"]


@pytest.mark.parametrize("stop_at", [4, 6])  # the end of epoch 1, and the middle of epoch 2
def test_resume_gives_identical_weights(tmp_path: Path, capsys, monkeypatch, stop_at: int) -> None:
    # mixup draws from per-batch generators, stochastic depth from the global RNG: both must resume exactly
    args = [
        "train",
        "--epochs",
        "2",
        "--seed",
        "3",
        "--set",
        "mixup=0.2",
        "--set",
        "model_kwargs={drop_path_rate: 0.1}",
    ]
    args += TINY
    assert cli(capsys, *args, "--out", str(tmp_path / "straight"))[0] == 0
    with monkeypatch.context() as patch:  # a real SIGINT after step `stop_at`, as Ctrl-C would send
        patch.setattr(runner, "run_training", faults.with_callbacks([faults.sigint_at(stop_at)]))
        code, _, err = cli(capsys, *args, "--out", str(tmp_path / "split"))
    assert code == 130 and "interrupted at epoch" in err and "--resume" in err
    assert torch.load(tmp_path / "split/checkpoints/last.pt", weights_only=True)["step"] == stop_at
    code, _, err = cli(capsys, "train", "--resume", str(tmp_path / "split"), "--no-progress")
    assert code == 0, err
    straight, split = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert all(torch.equal(straight[k], split[k]) for k in straight)
    lines = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("straight", "split")]
    drop = ("train_time_s", "train_images_per_s", "data_wait_share")
    rows = [[{k: v for k, v in json.loads(r).items() if k not in drop} for r in ls] for ls in lines]
    assert rows[0] == rows[1]


def test_interrupt_exit_code_in_a_real_process(tmp_path: Path) -> None:
    env = {**os.environ, "FAULT_SIGINT_AT": "2"}  # a real SIGINT after step 2
    proc = procs.run([sys.executable, str(FAULTS), "train", "--out", str(tmp_path / "r"), *TINY], env=env, cwd=REPO)
    assert proc.returncode == 130
    assert proc.stderr.strip().splitlines()[-1].startswith("resnetkit: interrupted at epoch 1, step 2; checkpoint")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--set", "epoch=3"], "unknown key 'epoch' in flags; did you mean 'epochs'?"),
        (["train", "--data", "folder", "--data-dir", "/nonexistent/imgs"], "/nonexistent/imgs"),
        (["train", "--data", "cifar10", "--data-dir", "/nonexistent/c10"], "/nonexistent/c10"),
        (["train", "--config", "no_such_recipe"], "config file not found: no_such_recipe"),
        (["train", "--model", "resnet5"], "unknown model 'resnet5'; did you mean"),
        (["eval", "--checkpoint", "/nonexistent/run"], "checkpoint not found"),
        (["predict", "--checkpoint", "/nonexistent/run", "x.png"], "checkpoint not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, monkeypatch, capsys, args: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)  # runs/ would be created here
    code, _, err = cli(capsys, *args)
    assert code == 2
    assert message in err and err.strip().count("\n") == 0 and err.startswith("resnetkit: error: ")
    assert list(tmp_path.iterdir()) == []  # a failed start leaves no empty run folder behind


def test_resume_refuses_recipe_changes_and_existing_runs_are_kept(tmp_path: Path, capsys) -> None:
    run = str(tmp_path / "r")
    assert cli(capsys, "train", "--max-steps", "1", "--out", run, *TINY)[0] == 0
    code, _, err = cli(capsys, "train", "--max-steps", "1", "--out", run, *TINY)
    assert code == 2 and "already holds a run; continue it with --resume" in err
    code, _, err = cli(capsys, "train", "--resume", run, "--model", "resnet32")
    assert code == 2 and "cannot change model when resuming" in err


def test_non_finite_loss_stops_without_saving_bad_weights(tmp_path: Path, capsys) -> None:
    run = tmp_path / "nan"
    # lr 1e5 (seed 0, 4 steps an epoch): steps 1 and 2 stay finite; by step 3 the BatchNorm running variances
    # overflow (the weights one step later): a checkpoint of step 3 would be finite weights with inf statistics
    code, _, err = cli(capsys, "train", "--out", str(run), "--set", "lr=1e5", "--checkpoint-every", "1", *TINY)
    saved = run / "checkpoints" / "last.pt"
    assert code == 2 and "non-finite" in err and "try a lower --lr" in err
    assert f"kept the last good checkpoint {saved}" in err
    bad_step = int(re.search(r"non-finite (?:by|at) step (\d+)", err).group(1))
    assert bad_step >= 2  # so that a good checkpoint came first
    ckpt = torch.load(saved, weights_only=True)
    assert ckpt["step"] == bad_step - 1  # the last good step, not an earlier one
    floats = [v for v in ckpt["model"].values() if v.is_floating_point()]
    assert floats and all(torch.isfinite(v).all() for v in floats)


def test_demo_trains_evaluates_and_predicts_offline(tmp_path: Path, capsys) -> None:
    code, out, err = cli(capsys, "demo", "--out", str(tmp_path / "demo"), "--epochs", "1")
    assert code == 0, err
    assert "1/3 train" in out and "2/3 eval" in out and "3/3 predict" in out
    assert "n 500" in out  # the held-out sample images
    assert len(list((tmp_path / "demo" / "examples").glob("*.png"))) == 10
    assert out.count("(true: ") == 10


def test_validation_split_early_stopping_and_regularisers(tmp_path: Path, capsys) -> None:
    run = tmp_path / "r"
    extras = ["--set", "cutmix=1.0", "--set", "cutout=8", "--set", "grad_clip=1.0", "--set", "amp=true"]
    code, out, err = cli(
        capsys,
        "train",
        "--val-size",
        "200",
        "--early-stopping",
        "1",
        "--epochs",
        "4",
        "--out",
        str(run),
        *extras,
        *TINY,
    )
    assert code == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all({"val_top1", "test_top1"} <= set(r) for r in rows)
    best = rows[0]["val_top1"]
    for i, r in enumerate(rows[1:], start=1):  # patience 1: the first epoch without a better val top-1 ends it
        if r["val_top1"] <= best:
            assert i == len(rows) - 1 and "early_stopping" in out
        best = max(best, r["val_top1"])
    info = json.loads((run / "run.json").read_text())
    assert info["datasets"]["val"]["n"] == 200 and info["datasets"]["train"]["n"] == 128
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["epoch"] == max(range(len(rows)), key=lambda i: (rows[i]["val_top1"], -i)) + 1


def test_resume_with_more_max_steps_takes_them_after_a_ragged_epoch(tmp_path: Path, keep_threads) -> None:
    """A run stopped by --max-steps 3 in its first epoch of 10 steps closes that ragged epoch; resumed with
    --max-steps 5 it takes steps 4 and 5 in the next epoch (it once took none: 5 steps "fit" in one epoch)."""
    run = tmp_path / "run"
    args = ["-q", "train", "--data", "sample", "--no-progress", "--batch-size", "32", "--train-subset", "320"]
    args += ["--test-subset", "32", "--threads", "1", "--no-amp", "--set", "model_kwargs={widths: [8, 16, 32]}"]
    assert main([*args, "--max-steps", "3", "--out", str(run)]) == 0
    assert main(["-q", "train", "--resume", str(run), "--max-steps", "5", "--no-progress"]) == 0
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 5
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 3), (2, 5)]
