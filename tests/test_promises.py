"""README promises with a test each (issue 14, item 5): flip test-time augmentation (both implementations, and the
registered TTA number), refusal of checkpoints that carry pickled code (eval, predict, train --resume), fine-tuning
at the weights' own resolution and normalisation, and `finetune` continued by `train --resume`."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import resnetkit
from resnetkit.cli.main import main
from resnetkit.data import load_sample
from resnetkit.data.examples import write_example_images
from resnetkit.engine import runner
from resnetkit.engine.loop import evaluate
from resnetkit.transforms import DataConfig
from resnetkit.weights import registry
from resnetkit.weights.registry import SHIPPED, get_weights, list_weights
from resnetkit.workflows.inference import predict_split

import faults
from conftest import pin_precision, shared_data

WEIGHTS = "resnet20.rk_cifar10"


@pytest.fixture(autouse=True)
def _threads_restored(keep_threads: None) -> None:
    """Runs here use one thread (`--threads 1`: tiny models run fastest so on a shared 2-core machine)."""


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RESNETKIT_OFFLINE", "1")
    monkeypatch.setenv("RESNETKIT_HOME", str(pin_precision(tmp_path / "home")))


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["-q", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --- flip test-time augmentation ---------------------------------------------------------------------------------


def _flip_tta_by_hand() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, labels, plain logits, flip-TTA logits) of the shipped weights on the sample's 500 test images:
    normalised with the weights' recorded mean and std, the eager model's logits averaged with those of the
    left-right mirror image."""
    entry = get_weights(WEIGHTS)
    test = load_sample("test")
    mean = torch.tensor(entry.data_config.mean).view(1, 3, 1, 1)
    std = torch.tensor(entry.data_config.std).view(1, 3, 1, 1)
    x = (test.images.float() / 255 - mean) / std
    model = resnetkit.create_model("resnet20", weights=WEIGHTS).eval()
    with torch.no_grad():
        plain = model(x)
        mirrored = model(torch.flip(x, dims=[3]))  # width is the last axis of (N, C, H, W)
    return x, test.labels, plain, (plain + mirrored) / 2


@pytest.fixture(scope="module")
def by_hand() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _flip_tta_by_hand()


def test_eval_tta_flip_averages_the_logits_of_the_image_and_its_mirror(by_hand, capsys) -> None:
    """Both implementations: `collect_logits` (eval, report: through predict_split) and `engine.loop.evaluate`."""
    x, labels, plain, tta = by_hand
    assert (plain.argmax(1) != tta.argmax(1)).sum() >= 5  # flipping changes decisions: the test can tell them apart
    preds = predict_split(WEIGHTS, "sample", tta_flip=True, progress=False, compile=False)
    assert torch.equal(preds.labels, labels)
    torch.testing.assert_close(preds.logits, tta, atol=1e-4, rtol=0)  # folded BatchNorm: within 1e-4
    assert (preds.single_view_preds != plain.argmax(1)).sum() <= 1  # the same pass gives the image alone's class
    plain_preds = predict_split(WEIGHTS, "sample", tta_flip=False, progress=False, compile=False)
    torch.testing.assert_close(plain_preds.logits, plain, atol=1e-4, rtol=0)

    model = resnetkit.create_model("resnet20", weights=WEIGHTS)
    result = evaluate(model, [(x[:256], labels[:256]), (x[256:], labels[256:])], 10, tta_flip=True)
    assert result.n == 500 and result.top1 * 500 == pytest.approx(int((tta.argmax(1) == labels).sum()), abs=1e-9)
    assert result.loss == pytest.approx(F.cross_entropy(tta, labels).item(), rel=1e-5)

    code, out, err = cli(capsys, "eval", "--checkpoint", WEIGHTS, "--data", "sample", "--tta-flip", "--json")
    assert code == 0, err
    res = json.loads(out)
    right = int((tta.argmax(1) == labels).sum())
    assert res["tta_flip"] is True and res["n"] == 500 and abs(res["top1"] * 500 - right) <= 1  # a tie may flip
    assert res["loss"] == pytest.approx(F.cross_entropy(tta, labels).item(), rel=1e-4)
    assert abs(F.cross_entropy(plain, labels).item() - res["loss"]) > 0.01  # not the single view's loss
    alone = int((plain.argmax(1) == labels).sum())
    assert abs(res["single_view_top1"] * 500 - alone) <= 1 and alone != right  # the image alone's, not the TTA's
    assert "single_view_top1" not in json.loads(
        cli(capsys, "eval", "--checkpoint", WEIGHTS, "--data", "sample", "--json")[1]
    )


# --- checkpoints carrying pickled code are refused by eval, predict and train --resume --------------------------


class _RunsCode:
    """Unpickling this calls os.system: a checkpoint holding it would run a shell command when loaded unsafely."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


@pytest.fixture()
def poisoned(tmp_path: Path) -> tuple[Path, Path]:
    """(a run folder whose last.pt is a real, resumable checkpoint plus one pickled object, the marker file that
    object would create)."""
    run = tmp_path / "run"
    assert (
        main(
            [
                "-q",
                "train",
                "--no-progress",
                "--threads",
                "1",
                "--batch-size",
                "32",
                "--train-subset",
                "32",
                "--test-subset",
                "32",
                "--epochs",
                "2",
                "--max-steps",
                "1",
                "--out",
                str(run),
                "--set",
                "model_kwargs={widths: [4, 8, 16]}",
            ]
        )
        == 0
    )
    marker = tmp_path / "code-ran"
    ckpt = _last(run)
    ckpt["notes"] = _RunsCode(f"touch {marker}")
    torch.save(ckpt, run / "checkpoints" / "last.pt")
    assert not marker.exists()
    return run, marker


def test_a_checkpoint_with_pickled_code_is_refused_without_running_it(poisoned, tmp_path: Path, capsys) -> None:
    run, marker = poisoned
    path = run / "checkpoints" / "last.pt"
    image = sorted(write_example_images(load_sample("test"), tmp_path / "images").glob("*.png"))[0]
    commands = {
        "eval": ["eval", "--checkpoint", str(path), "--data", "sample", "--json"],
        "eval (run folder)": ["eval", "--checkpoint", str(run), "--data", "sample"],
        "predict": ["predict", "--checkpoint", str(path), str(image), "--json"],
        "train --resume": ["train", "--resume", str(run), "--no-progress"],
    }
    for what, args in commands.items():
        code, out, err = cli(capsys, *args)
        assert not marker.exists(), f"{what} ran the pickled code"
        assert code == 2 and out == "", what
        assert err.startswith(f"resnetkit: error: cannot read checkpoint {path}") and err.count("\n") == 1, (what, err)


# --- fine-tuning at the weights' own resolution and normalisation -------------------------------------------------


@pytest.fixture()
def small_folder(tmp_path: Path) -> Path:
    """16 cat and 16 dog photos of the shared folder (all around 300-500 pixels wide), as class sub-folders."""
    source = shared_data("cats_vs_dogs") / "train"
    folder = tmp_path / "pets"
    for cls in ("cat", "dog"):
        (folder / cls).mkdir(parents=True)
        for f in sorted((source / cls).glob("*.jpg"))[:16]:
            shutil.copy(f, folder / cls / f.name)
    return folder


FT = ["--no-progress", "--threads", "1", "--batch-size", "8", "--max-steps", "2"]


def _expected_preprocessing(cfg: DataConfig) -> dict:
    return {"size": cfg.input_size[-1], "mean": list(cfg.mean), "std": list(cfg.std), "crop_pct": cfg.crop_pct}


def _recorded(run: Path) -> tuple[dict, dict]:
    return json.loads((run / "run.json").read_text())["preprocessing"], _last(run)["preprocessing"]


def test_finetuning_prepares_inputs_as_the_weights_were_trained(small_folder: Path, tmp_path: Path, capsys) -> None:
    """Without --img-size, a fine-tuning run on photos (a folder, where nothing else says 32 px or CIFAR-10's
    statistics) prepares them at the registered weights' resolution, mean, std and crop, and records that in run.json
    and in the checkpoint (which eval and predict read)."""
    entry = get_weights(WEIGHTS)
    run = tmp_path / "ft"
    code, _, err = cli(
        capsys, "finetune", "--weights", WEIGHTS, "--data-dir", str(small_folder), "--out", str(run), *FT
    )
    assert code == 0, err
    in_run, in_ckpt = _recorded(run)
    want = _expected_preprocessing(entry.data_config)
    assert {k: in_run[k] for k in want} == want and {k: in_ckpt[k] for k in want} == want
    assert want["size"] == 32 and want["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])  # the entry's CIFAR values


def test_finetuning_follows_registered_weights_that_differ_from_the_architecture(
    small_folder: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """The shipped weights are prepared like resnet20's own default (32 px, CIFAR-10 statistics), so the test above
    cannot tell the weights' record from the architecture's. Here the same file is registered with another record
    (48 px, mean 0.5, std 0.25; not a claim about those weights, a record to follow): the run must follow it."""
    shipped = get_weights(WEIGHTS)
    other = replace(
        shipped,
        name="resnet20.test_48px",
        url=str(SHIPPED / shipped.url),
        data_config=DataConfig((3, 48, 48), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), crop_pct=1.0),
    )
    monkeypatch.setattr(registry, "_CACHE", {**{e.name: e for e in list_weights()}, other.name: other})
    assert resnetkit.create_model("resnet20").default_cfg.input_size == (3, 32, 32)  # the architecture's default
    run = tmp_path / "ft48"
    code, _, err = cli(
        capsys, "finetune", "--weights", other.name, "--data-dir", str(small_folder), "--out", str(run), *FT
    )
    assert code == 0, err
    in_run, in_ckpt = _recorded(run)
    want = _expected_preprocessing(other.data_config)
    assert {k: in_run[k] for k in want} == want and {k: in_ckpt[k] for k in want} == want
    code, out, err = cli(
        capsys, "eval", "--checkpoint", str(run), "--data", "folder", "--data-dir", str(small_folder), "--json"
    )
    assert code == 0 and json.loads(out)["n"] == 4, err  # the seeded 10% held out: 2 of each class


# --- `finetune` continued by `train --resume` ----------------------------------------------------------------------


def test_an_interrupted_finetune_resumes_with_train_resume_exactly(
    small_folder: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Stopped by a real SIGINT mid-epoch and continued with `train --resume`, a fine-tuning run (two parameter
    groups at different lrs, pretrained weights) ends with the weights, optimizer state and metrics of the run that
    was never stopped: the resumed run neither reloads the pretrained weights nor loses the fine-tuning setup."""
    args = [
        "finetune",
        "--weights",
        WEIGHTS,
        "--data-dir",
        str(small_folder),
        "--no-progress",
        "--threads",
        "1",
        "--batch-size",
        "8",
        "--epochs",
        "2",
        "--test-subset",
        "4",
    ]
    straight, split = tmp_path / "straight", tmp_path / "split"
    code, _, err = cli(capsys, *args, "--out", str(straight))
    assert code == 0, err
    with monkeypatch.context() as patch:
        patch.setattr(runner, "run_training", faults.with_callbacks([faults.sigint_at(5)]))
        code, _, err = cli(capsys, *args, "--out", str(split))
    assert code == 130 and "--resume" in err
    stopped = _last(split)
    assert stopped["step"] == 5 and stopped["epoch"] == 1 and stopped["config"]["weights"] == WEIGHTS
    code, _, err = cli(capsys, "train", "--resume", str(split), "--no-progress")
    assert code == 0, err
    a, b = _last(straight), _last(split)
    assert a["step"] == b["step"] == 6  # 28 training images (4 held out): 3 batches of 8 per epoch
    assert {**a["config"], "out": None} == {**b["config"], "out": None}
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    lrs = [g["initial_lr"] for g in b["optimizer"]["param_groups"]]
    assert len(lrs) == 2 and lrs[1] == pytest.approx(0.1 * lrs[0])  # head and backbone groups survived the resume
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    timing = ("train_time_s", "train_images_per_s", "data_wait_share")
    rows_a, rows_b = (
        [{k: v for k, v in r.items() if k not in timing} for r in _rows(run)] for run in (straight, split)
    )
    assert len(rows_a) == 2 and rows_a == rows_b  # the interrupted epoch's training loss and accuracy included
