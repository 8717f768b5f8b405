"""Issue 19: image folders streamed from disk (DataLoader workers, per-image augmentation), on real cats-vs-dogs
JPEGs: the same batches whatever the workers, every image once per epoch across torchrun processes, exact
mid-epoch resume, bad files and dying workers, and when `auto` streams."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from resnetkit.cli.main import main
from resnetkit.config import ConfigError, TrainConfig
from resnetkit.data.factory import streams
from resnetkit.data.stream import StreamingFolder, StreamLoader, stream_image_folder, transforms_for
from resnetkit.engine import runner
from resnetkit.errors import DataError
from resnetkit.models import create_model
from resnetkit.transforms import preprocessing_for

import faults
import procs
from conftest import REPO, shared_data

WORKER = Path(__file__).with_name("stream_worker.py")
PER_CLASS = {"train": 24, "val": 8}
RUN = [
    "--model",
    "resnet18",
    "--data",
    "folder",
    "--data-mode",
    "stream",
    "--img-size",
    "32",
    "--batch-size",
    "8",
    "--no-progress",
    "--threads",
    "1",
    "--set",
    "model_kwargs={drop_path_rate: 0.1}",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """train/{cat,dog}/ 24 photos each and val/ 8 each: real cats-vs-dogs JPEGs, re-encoded at half size."""
    src, root = shared_data("cats_vs_dogs"), tmp_path_factory.mktemp("cvd_small")
    for split, n in PER_CLASS.items():
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for path in sorted((src / split / c).glob("*.jpg"))[:n]:
                with Image.open(path) as im:
                    im.reduce(2).save(root / split / c / path.name, quality=90)
    return root


def _pre(size: int = 32):
    return preprocessing_for(create_model("resnet18").default_cfg, "imagenet", size)


def _loader(data: StreamingFolder, workers: int, **kw) -> StreamLoader:
    return StreamLoader(data, _pre(), batch_size=8, train=True, seed=3, workers=workers, **kw)


def test_workers_decode_the_same_batches_as_the_training_process(folder: Path) -> None:
    train, _ = stream_image_folder(folder, *transforms_for(_pre(), "trivial", 0.5))
    in_process = list(_loader(train, 0).epoch(1, 2))
    in_workers = list(_loader(train, 2).epoch(1, 2))
    assert len(in_process) == 48 // 8 - 2
    for (a, ya), (b, yb) in zip(in_process, in_workers, strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    assert a.shape == (8, 3, 32, 32) and a.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(in_process[0][0], next(iter(_loader(train, 0).epoch(2, 2)))[0])  # a new epoch, new draws


def test_a_streamed_batch_is_its_images_normalised(folder: Path) -> None:
    """Independent of the loader's batching (collate, shared memory, layout): the dataset's own views, stacked in
    the usual (N, C, H, W) order and normalised, in the evaluation order."""
    _, val = stream_image_folder(folder, *transforms_for(_pre()))
    for workers in (0, 1):
        x, y = next(iter(StreamLoader(val, _pre(), batch_size=8, train=False, workers=workers).epoch(0)))
        views = torch.stack([val[(i, 0)][0] for i in range(8)])
        assert views.shape == (8, 3, 32, 32)
        torch.testing.assert_close(x, _pre().normalize(views), rtol=0, atol=0)
        assert torch.equal(y, val.labels[:8])


def test_batches_from_workers_are_normalised_on_one_thread(folder: Path, monkeypatch) -> None:
    """The workers hold the cores: the hand-off's normalisation must not wake the training threads (which would
    spin on those cores), and the training keeps its thread count."""
    from resnetkit.transforms import Preprocessing

    seen: list[int] = []
    normalize = Preprocessing.normalize
    monkeypatch.setattr(
        Preprocessing, "normalize", lambda *a, **k: seen.append(torch.get_num_threads()) or normalize(*a, **k)
    )
    train, _ = stream_image_folder(folder, *transforms_for(_pre()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        list(_loader(train, 1).epoch(0, 4))
        assert seen == [1, 1] and torch.get_num_threads() == 2
        list(_loader(train, 0).epoch(0, 5))  # decoding in this process: the threads stay
        assert seen[2:] == [2]
    finally:
        torch.set_num_threads(before)


def test_each_image_once_per_epoch_across_two_torchrun_processes(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "seen"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(WORKER),
        "--folder",
        str(folder),
        "--epoch",
        "1",
        "--out",
        str(out),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]),
    }
    proc = procs.run(cmd, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    seen = ranks[0]["files"] + ranks[1]["files"]
    assert len(seen) == len(set(seen)) == ranks[0]["n"] == 48  # 6 global batches of 8: every image exactly once
    assert set(ranks[0]["files"]).isdisjoint(ranks[1]["files"])
    assert all(shape[0] == 4 for r in ranks for shape in r["batches"])  # each process: half of each global batch


@pytest.mark.parametrize("stop_at", [3, 8])  # the middle of epoch 1, the middle of epoch 2
def test_a_streamed_run_resumes_mid_epoch_exactly(folder: Path, tmp_path: Path, capsys, monkeypatch, stop_at) -> None:
    args = ["train", *RUN, "--data-dir", str(folder), "--epochs", "2", "--workers", "2", "--set", "augment_policy=rand"]
    assert main(["-q", *args, "--out", str(tmp_path / "straight")]) == 0
    with monkeypatch.context() as patch:
        patch.setattr(runner, "run_training", faults.with_callbacks([faults.sigint_at(stop_at)]))
        assert main(["-q", *args, "--out", str(tmp_path / "split"), "--checkpoint-every", "1"]) == 130
    assert main(["-q", "train", "--resume", str(tmp_path / "split"), "--no-progress"]) == 0
    capsys.readouterr()
    straight, split = (
        torch.load(tmp_path / d / "checkpoints/last.pt", weights_only=True)["model"] for d in ("straight", "split")
    )
    assert all(torch.equal(straight[k], split[k]) for k in straight)
    row = json.loads((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 < row["data_wait_share"] < 1  # the share of the epoch the training process waited for batches
    info = json.loads((tmp_path / "straight" / "run.json").read_text())
    assert info["datasets"]["train"]["streamed"] and info["datasets"]["train"]["n"] == 48


def test_unreadable_files_are_skipped_with_a_warning_or_fail_under_strict(folder: Path, tmp_path, caplog) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    first = sorted((broken / "train" / "cat").glob("*.jpg"))[0]
    first.write_bytes(first.read_bytes()[:200])  # a truncated JPEG
    train, _ = stream_image_folder(broken, *transforms_for(_pre()))
    with caplog.at_level(logging.WARNING, logger="resnetkit"):
        labels = torch.cat([y for _, y in _loader(train, 0).epoch(0)])
    assert len(labels) == 47 and first.name in caplog.text and "unreadable" in caplog.text
    with pytest.raises(DataError, match=f"unreadable image .*{first.name}"):
        list(_loader(train, 0, strict=True).epoch(0))


class _Dies(StreamingFolder):
    def __getitem__(self, key):  # type: ignore[override]
        os.kill(os.getpid(), signal.SIGKILL)  # a worker killed, as the OOM killer would


def test_a_dying_worker_is_one_clear_error(folder: Path) -> None:
    train, _ = stream_image_folder(folder, *transforms_for(_pre()))
    dies = _Dies([(Path(p), y) for p, y in train.samples], train.classes, train.info, train.transform)
    with pytest.raises(DataError, match="image-loading worker failed") as e:
        list(_loader(dies, 1).epoch(0))
    assert "\n" not in str(e.value)


def test_auto_streams_only_when_the_decoded_folder_exceeds_the_budget(folder: Path) -> None:
    base = dict(data="folder", data_dir=str(folder), img_size=224)
    pre = _pre(224)  # 64 photos stored at 256 px: 64 x 3 x 256^2 = 12.6 MB decoded
    assert not streams(TrainConfig(**base, memory_budget_gb=0.02), pre)
    assert streams(TrainConfig(**base, memory_budget_gb=0.01), pre)
    assert streams(TrainConfig(**base, augment_policy="trivial"), pre)  # per-image policies need workers
    assert not streams(TrainConfig(**base, data_mode="memory"), pre)
    with pytest.raises(ConfigError, match="streamed from disk"):
        streams(TrainConfig(data="sample", data_mode="stream"), pre)


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_fixres_trains_on_smaller_crops_and_evaluates_the_resized_center(folder: Path, mode: str) -> None:
    from resnetkit.data.factory import load_training_data
    from resnetkit.data.stream import loader_for
    from resnetkit.models import resolve_data_config

    cfg = TrainConfig(
        model="resnet18",
        data="folder",
        data_dir=str(folder),
        data_mode=mode,
        img_size=64,
        train_img_size=48,
        eval_resize=72,
        progress=False,
    )
    data = load_training_data(cfg, resolve_data_config("resnet18"))
    assert data.preprocessing.storage_size == 72 and data.preprocessing.train_crop == 48
    kw = dict(workers=0, strict=False, batch_size=8)
    x_train, _ = next(iter(loader_for(data.train, data.preprocessing, train=True, **kw).epoch(0)))
    x_eval, _ = next(iter(loader_for(data.test, data.preprocessing, train=False, **kw).epoch(0)))
    assert x_train.shape[-2:] == (48, 48) and x_eval.shape[-2:] == (64, 64)


def test_adamw_trains_with_decoupled_weight_decay_and_no_decay_on_norms(tmp_path: Path) -> None:
    from resnetkit.engine.runner import run_training

    run_training(
        TrainConfig(
            model="resnet20",
            data="sample",
            optimizer="adamw",
            lr=1e-3,
            weight_decay=0.05,
            no_decay_bn_bias=True,
            epochs=1,
            max_steps=2,
            batch_size=16,
            train_subset=32,
            test_subset=16,
            progress=False,
            threads=1,
            out=str(tmp_path / "run"),
        )
    )
    opt = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["optimizer"]
    assert [g["weight_decay"] for g in opt["param_groups"]] == [0.05, 0.0]
    assert all(g["betas"] == (0.9, 0.999) for g in opt["param_groups"])
    assert {"exp_avg", "exp_avg_sq"} <= set(next(iter(opt["state"].values())))  # Adam's moments, not SGD's buffer


def test_big_jpegs_are_decoded_at_a_reduced_scale_that_still_covers_the_crop(tmp_path: Path) -> None:
    from resnetkit.data.images import read_image

    photo = sorted((shared_data("cats_vs_dogs") / "train" / "cat").glob("*.jpg"))[0]
    with Image.open(photo) as im:
        big = im.convert("RGB").resize((im.width * 4, im.height * 4))
    big.save(tmp_path / "big.jpg", quality=90)
    big.save(tmp_path / "big.png")
    full, drafted = read_image(tmp_path / "big.png", draft_side=224), read_image(tmp_path / "big.jpg", draft_side=224)
    assert full.shape[1:] == (big.height, big.width) and full.dtype == torch.uint8
    assert 224 <= min(drafted.shape[1:]) < big.height // 2  # DCT scaling skipped most of the decode
    small = read_image(photo, draft_side=224)  # the photo itself: full size, through libjpeg-turbo
    with Image.open(photo) as im:
        assert small.shape[1:] == (im.height, im.width)


def test_bench_data_times_both_pipelines(folder: Path, capsys) -> None:
    code = main(
        [
            "-q",
            "bench",
            "data",
            "--data-dir",
            str(folder),
            "--img-size",
            "64",
            "--batch-size",
            "8",
            "--images",
            "16",
            "--rounds",
            "1",
            "--workers",
            "1",
        ]
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and result["bench"] == "data"
    assert result["images_per_sec"] > 0 and result["baseline_images_per_sec"] > 0
    assert result["ratio"] == pytest.approx(result["images_per_sec"] / result["baseline_images_per_sec"])


def test_photos_are_read_as_the_in_memory_loader_reads_them(tmp_path: Path) -> None:
    import numpy as np

    from resnetkit.data.images import read_image

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.new("RGB", (60, 40), (200, 30, 30)).save(tmp_path / "rotated.jpg", exif=exif)
    assert read_image(tmp_path / "rotated.jpg", draft_side=32).shape == (3, 60, 40)  # as displayed: 40 wide, 60 high
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)  # fully transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    assert read_image(tmp_path / "clear.png", draft_side=16).unique().tolist() == [255]  # composited onto white
    Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert read_image(tmp_path / "deep.png", draft_side=16).unique().tolist() == [255]  # 16-bit white is 8-bit white


@pytest.mark.parametrize("split", ["val", "all", "train"])
def test_streamed_evaluation_scores_the_images_memory_mode_scores(folder: Path, split: str) -> None:
    """The same files in the same order with the same labels and `info`, and the same pictures up to resampling
    (memory mode stores center squares resized by PIL; streaming resizes the whole photo's short side in torch)."""
    from resnetkit.data.folder import load_image_folder_split
    from resnetkit.data.loader import BatchLoader
    from resnetkit.data.stream import stream_folder_split

    pre = _pre()
    memory = load_image_folder_split(folder, split, size=pre.storage_size, progress=False)
    streamed = stream_folder_split(folder, split, transforms_for(pre)[1])
    assert streamed.info["files"] == memory.info["files"]
    assert len(streamed) == {"val": 16, "all": 64, "train": 48}[split]
    assert {k: streamed.info[k] for k in ("source", "split")} == {k: memory.info[k] for k in ("source", "split")}
    loaders = (
        BatchLoader(memory, pre, batch_size=8, train=False),
        StreamLoader(streamed, pre, batch_size=8, train=False, workers=1),
    )
    (xm, ym), (xs, ys) = ((torch.cat(x), torch.cat(y)) for x, y in (zip(*ld.epoch(0), strict=True) for ld in loaders))
    assert torch.equal(ym, ys) and xm.shape == xs.shape
    assert (xm - xs).abs().mean() < 0.2  # normalised units; another photo in each place differs by ~1
    assert (xm - xs.roll(1, 0)).abs().mean() > 0.5


def test_eval_streams_a_folder_and_leaves_out_unreadable_files(
    folder: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    run = tmp_path / "run"
    assert main(["-q", "train", *RUN, "--data-dir", str(folder), "--max-steps", "2", "--out", str(run)]) == 0
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    bad = sorted((broken / "val" / "dog").glob("*.jpg"))[0]
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated JPEG: found only when its batch is read
    capsys.readouterr()
    eval_args = ["eval", "--checkpoint", str(run), "--data", "folder", "--data-dir", str(broken), "--json"]
    with monkeypatch.context() as patch:  # streamed: nothing is decoded into memory first
        patch.setattr("resnetkit.data.folder.load_image_folder_split", lambda *a, **k: pytest.fail("decoded"))
        assert main([*eval_args, "--split", "all", "--data-mode", "stream", "--workers", "1"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out.strip().splitlines()[-1])
    assert result["n"] == 63 and result["split"] == "all" and bad.name in out.err
    from resnetkit.workflows.inference import predict_split

    preds = predict_split(run, "folder", str(broken), split="val", data_mode="stream", workers=0, progress=False)
    assert len(preds.ids) == len(preds.labels) == 15 and bad.relative_to(broken).as_posix() not in preds.ids
    assert preds.ids == [
        f for f in predict_split(run, "folder", str(broken), split="val", data_mode="memory", progress=False).ids
    ]
    assert main(["eval", "--checkpoint", str(run), "--data", "sample", "--data-mode", "stream"]) == 2
    assert "is for image folders streamed from disk" in capsys.readouterr().err
