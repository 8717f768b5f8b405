"""Issue 20: detection fine-tuning on a COCO-format folder that the test writes from real cats-vs-dogs photos
(each canvas holds one or two photo crops pasted side by side, boxed and labelled cat or dog): the run folder,
validation mAP from torchmetrics (pycocotools), resume at an epoch boundary equal to an uninterrupted run,
`resnetkit detect` on the result; malformed COCO data is a one-line error before anything trains."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageFilter

from resnetkit.checkpoint import load_checkpoint
from resnetkit.cli.main import main

import procs
from conftest import shared_data

# A small Faster R-CNN: ResNet-18 FPN at 128 px, fewer proposals and sampled boxes than torchvision's defaults (the
# box head's 12.8M-parameter MLP runs once per sampled box).
SMALL = {
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
    "box_batch_size_per_image": 32,
    "rpn_batch_size_per_image": 64,
}


def write_coco(root: Path, n: dict[str, int], side: int = 128, layout: str = "roboflow", seed: int = 0) -> Path:
    """root as a COCO-format set: canvases of blurred noise with one or two cat/dog photo crops pasted without
    overlap, each boxed. layout "roboflow": <split>/_annotations.coco.json; "coco": annotations/instances_<split>.json
    and <split>/ images."""
    rng = random.Random(seed)
    photos = {c: sorted((shared_data("cats_vs_dogs") / "train" / c).glob("*.jpg"))[:40] for c in ("cat", "dog")}
    for split, count in n.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(count):
            canvas = Image.effect_noise((side, side), 50).convert("RGB").filter(ImageFilter.GaussianBlur(2))
            canvas = Image.blend(canvas, Image.new("RGB", canvas.size, tuple(rng.randint(60, 200) for _ in "rgb")), 0.5)
            size = rng.randint(side // 3, side // 2 - 2)
            slots = rng.sample([(0, 0), (side // 2, 0), (0, side // 2), (side // 2, side // 2)], rng.randint(1, 2))
            for sx, sy in slots:  # one crop per quadrant: no overlap
                cls = rng.choice(("cat", "dog"))
                with Image.open(rng.choice(photos[cls])) as photo:
                    crop = photo.convert("RGB").resize((size, size))
                x, y = sx + rng.randint(0, side // 2 - size), sy + rng.randint(0, side // 2 - size)
                canvas.paste(crop, (x, y))
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i + 1,
                        "category_id": 1 if cls == "cat" else 2,
                        "bbox": [x, y, size, size],
                        "area": size * size,
                        "iscrowd": 0,
                    }
                )
            canvas.save(folder / f"{i:04d}.jpg", quality=92)
            images.append({"id": i + 1, "file_name": f"{i:04d}.jpg", "width": side, "height": side})
        categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
        doc = {"images": images, "annotations": anns, "categories": categories}
        if layout == "roboflow":
            (folder / "_annotations.coco.json").write_text(json.dumps(doc))
        else:
            (root / "annotations").mkdir(exist_ok=True)
            (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """A small Faster R-CNN run (detection trains in float32: --no-amp is all it accepts of the precision flags)."""
    return [
        "train",
        "--task",
        "detection",
        "--data",
        "coco",
        "--data-dir",
        str(data),
        "--model",
        "resnet18",
        "--detector",
        "fasterrcnn",
        "--img-size",
        "128",
        "--batch-size",
        "4",
        "--lr",
        "0.01",
        "--threads",
        "2",
        "--no-progress",
        "--out",
        str(out),
        "--set",
        f"model_kwargs={json.dumps(SMALL)}",
        "--set",
        "warmup_steps=6",
        "--set",
        "grad_clip=10.0",
        "--no-amp",
        *extra,
    ]


def _break(root: Path, how: str) -> None:
    path = root / "train" / "_annotations.coco.json"
    doc = json.loads(path.read_text())
    if how == "missing image":
        (root / "train" / doc["images"][1]["file_name"]).unlink()
    elif how == "box outside":
        doc["annotations"][0]["bbox"] = [100, 100, 60, 20]  # x + width = 160 > 128
    elif how == "unknown category":
        doc["annotations"][0]["category_id"] = 7
    elif how == "wrong size":
        doc["images"][0]["width"] = 300
    elif how == "not an image":
        (root / "train" / doc["images"][2]["file_name"]).write_bytes(b"not a jpeg")
    if how == "not json":
        path.write_text('{"images": [')
    elif how != "missing image":
        path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("missing image", "references 1 image(s) missing from"),
        ("box outside", "annotation 1 box [100, 100, 60, 20] lies outside its image 0000.jpg (128x128)"),
        ("unknown category", "annotation 1 has category 7, which is not defined"),
        ("wrong size", "0000.jpg is 128x128, not 300x128"),
        ("not json", "is not valid JSON"),
        ("not an image", "image 0002.jpg cannot be read"),
    ],
)
def test_malformed_coco_data_is_one_line(how: str, message: str, tmp_path: Path, capsys) -> None:
    data = write_coco(tmp_path / "coco", {"train": 4, "val": 2})
    _break(data, how)
    code, _, err = cli(capsys, *_train_args(data, tmp_path / "run", "--epochs", "1"))
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_detection_options_are_checked(tmp_path: Path, capsys) -> None:
    for args, message in (
        (["train", "--task", "detection", "--data", "folder", "--data-dir", str(tmp_path)], "--data coco --data-dir"),
        (
            ["train", "--task", "detection", "--data", "coco", "--data-dir", str(tmp_path), "--detector", "maskrcnn"],
            "unknown detector 'maskrcnn'",
        ),
        (["train", "--task", "detection", "--data", "coco", "--data-dir", str(tmp_path)], "no COCO-format training"),
        (
            ["train", "--task", "detection", "--data", "coco", "--data-dir", str(tmp_path), "--set", "mixup=0.2"],
            "--task detection does not use mixup=0.2: drop it",
        ),
        (
            [
                "train",
                "--task",
                "detection",
                "--data",
                "coco",
                "--data-dir",
                str(tmp_path),
                "--amp",
                "--label-smoothing",
                "0.1",
                "--set",
                "ema_decay=0.99",
            ],
            "does not use label_smoothing=0.1, ema_decay=0.99, amp=True: drop them",
        ),
    ):
        code, _, err = cli(capsys, *args)
        assert code == 2 and err.count("\n") == 1 and message in err, err


# Measured on this machine (AMD EPYC, 2 cores): validation mAP@0.5 0.47 / 0.68 / 0.87 after 3 / 4 / 9 epochs of 96
# canvases at lr 0.02 (runs of benchmarks-sized sets); the test's 5 epochs of 64 reach LEARNED_MAP_50 with margin.
LEARNED_MAP_50 = 0.4


@pytest.mark.slow
def test_detection_finetune_learns_and_detects(tmp_path: Path, capsys) -> None:
    """From random weights, 40 steps (a few CPU minutes): the loss falls and validation mAP@0.5 rises past 0.4."""
    data = write_coco(tmp_path / "coco", {"train": 64, "val": 16}, layout="coco")
    run = tmp_path / "run"
    code, out, err = cli(
        capsys, *_train_args(data, run, "--epochs", "5", "--batch-size", "8", "--lr", "0.02", "--set", "warmup_steps=8")
    )
    assert code == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5] and {"val_map", "val_map_75", "train_images_per_s"} <= rows[
        0
    ].keys()
    assert rows[0]["train_loss_classifier"] < math.log(3) + 0.4  # a per-step mean: about ln(3 classes) at the start
    assert rows[-1]["train_loss"] < 0.7 * rows[0]["train_loss"]
    assert rows[-1]["val_map_50"] >= LEARNED_MAP_50 > rows[0]["val_map_50"], [r["val_map_50"] for r in rows]
    assert (run / "curves.png").is_file() and (run / "checkpoints" / "best.pt").is_file()
    assert "val_map_50" in out  # the closing report line
    photo = data / "val" / "0000.jpg"
    code, out, err = cli(
        capsys,
        "detect",
        "--checkpoint",
        str(run),
        str(photo),
        "--score",
        "0.5",
        "--json",
        "--out",
        str(tmp_path / "overlays"),
    )
    assert code == 0, err
    (record,) = json.loads(out)
    truth = json.loads((data / "annotations" / "instances_val.json").read_text())["annotations"]
    want = [a for a in truth if a["image_id"] == 1]
    assert 1 <= len(record["detections"]) and {d["label"] for d in record["detections"]} <= {"cat", "dog"}
    best = max(record["detections"], key=lambda d: d["score"])
    assert max(_iou(best["box"], a["bbox"]) for a in want) > 0.5  # the surest box sits on a pasted photo


def _iou(box: list[float], xywh: list[float]) -> float:
    x, y, w, h = xywh
    ix = max(0.0, min(box[2], x + w) - max(box[0], x))
    iy = max(0.0, min(box[3], y + h) - max(box[1], y))
    inter = ix * iy
    return inter / ((box[2] - box[0]) * (box[3] - box[1]) + w * h - inter)


@pytest.mark.slow
def test_detection_resume_continues_exactly(tmp_path: Path, capsys) -> None:
    """Stopped by --max-steps after its first epoch, or by a real Ctrl-C (SIGINT) in the middle of its second, and
    resumed, a run ends with the weights and metrics of the run that never stopped."""
    data = write_coco(tmp_path / "coco", {"train": 16, "val": 4})
    full, half, stopped = tmp_path / "full", tmp_path / "half", tmp_path / "stopped"
    assert cli(capsys, *_train_args(data, full, "--epochs", "2", "--schedule", "constant"))[0] == 0
    assert cli(capsys, *_train_args(data, half, "--epochs", "2", "--schedule", "constant", "--max-steps", "4"))[0] == 0
    assert load_checkpoint(half / "checkpoints" / "last.pt")["step"] == 4
    assert cli(capsys, "train", "--resume", str(half), "--max-steps", "8", "--no-progress")[0] == 0
    # a real SIGINT, sent once the first epoch's metrics are written: the run stops after a step of the second
    log = tmp_path / "stopped.log"
    args = _train_args(data, stopped, "--epochs", "2", "--schedule", "constant")
    cmd = [sys.executable, "-m", "resnetkit", "-q", *args]
    with procs.spawned(cmd, log, env={**os.environ, "OMP_NUM_THREADS": "2"}, cwd=tmp_path) as proc:
        _wait_for_a_row(stopped / "metrics.jsonl", proc, log)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=300) == 130, log.read_text()[-3000:]
    lines = log.read_text().strip().splitlines()
    said = r"resnetkit: interrupted at epoch 2, step [5-7]; checkpoint .* is intact: continue with `resnetkit train "
    assert len(lines) == 1 and re.fullmatch(said + r"--resume .*`", lines[0]), lines  # one line, no traceback
    mid = load_checkpoint(stopped / "checkpoints" / "last.pt")
    assert (mid["epoch"], mid["batch"]) == (1, mid["step"] - 4) and mid["partial"]["steps"] == mid["batch"]
    assert cli(capsys, "train", "--resume", str(stopped), "--no-progress")[0] == 0
    a = load_checkpoint(full / "checkpoints" / "last.pt")
    for run in (half, stopped):
        b = load_checkpoint(run / "checkpoints" / "last.pt")
        assert a["step"] == b["step"] == 8 and [r["epoch"] for r in b["history"]] == [1, 2]
        assert [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])] == [], run.name
    timing = ("train_time_s", "train_images_per_s", "data_wait_share")
    rows = [[{k: v for k, v in r.items() if k not in timing} for r in _rows(run)] for run in (full, stopped)]
    assert rows[0] == rows[1]  # the interrupted epoch's loss sums carried on


def _wait_for_a_row(path: Path, proc, log: Path, limit_s: float = 300) -> None:
    """Until `path` (metrics.jsonl, created empty when the run starts) holds a row; fails if `proc` ends first."""
    deadline = time.monotonic() + limit_s  # only a hang meets it: the wait ends when the row is written
    while not (path.is_file() and path.read_text().strip()):
        assert proc.poll() is None, f"exited with {proc.returncode}: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_detection_trains_under_torchrun_with_two_processes(tmp_path: Path) -> None:
    """torchrun, 2 processes (DistributedDataParallel on gloo): each takes half of every global batch; rank 0 writes
    the one run folder and validates."""
    data = write_coco(tmp_path / "coco", {"train": 16, "val": 4})
    run = tmp_path / "run"
    args = [a for a in _train_args(data, run, "--epochs", "1") if a != "train"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "resnetkit",
        "train",
        *args,
    ]
    cmd[cmd.index("--threads") + 1] = "1"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = procs.run(cmd, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 2 and info["steps_per_epoch"] == 4  # 16 images, 2 processes x batch 2
    (row,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert row["step"] == 4 and "val_map" in row and math.isfinite(row["train_loss"])
    assert load_checkpoint(run / "checkpoints" / "last.pt")["config"]["task"] == "detection"
