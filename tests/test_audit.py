"""`resnetkit audit` and `train --exclude` on planted problems in real CIFAR-10 images: labels flipped into wrong
class folders, duplicates (exact, resized, re-encoded, mirrored; within training data and leaking into the held-out
part), broken and odd files; confident learning on a hand-computed example; bad input as one line."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetkit.audit.labels import find_label_issues
from resnetkit.cli.main import main
from resnetkit.data.cifar import load_cifar
from resnetkit.data.exclude import read_exclusions

from conftest import shared_data

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FLIPS = 15


@pytest.fixture()
def run_cli(capsys):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        try:
            code = main(list(args))
        except SystemExit as exit_:
            code = exit_.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return run


def _png(pixels: torch.Tensor, path: Path, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(path, **save)
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cifar_test() -> torch.Tensor:
    return load_cifar(shared_data("cifar-10-batches-bin"), "cifar10", "test", progress=False)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, cifar_test) -> dict:
    """train/ (30 CIFAR-10 test images per class, 15 of them in a wrong class folder, 4 planted copies) and val/ (10
    per class, 2 of them copies of training images). resnet20.rk_cifar10 never trained on any of these images."""
    root = tmp_path_factory.mktemp("planted")
    images, labels = cifar_test.images, cifar_test.labels
    rng = np.random.default_rng(0)
    per_class = {c: torch.nonzero(labels == c).flatten()[:40].tolist() for c in range(10)}
    train = [(i, c) for c in range(10) for i in per_class[c][:30]]
    flipped = set(rng.choice(len(train), FLIPS, replace=False).tolist())
    truth = {}
    for n, (i, c) in enumerate(train):
        given = (c + 1 + int(rng.integers(9))) % 10 if n in flipped else c
        path = _png(images[i], root / "train" / CLASSES[given] / f"t{i}.png")
        if n in flipped:
            truth[path.relative_to(root).as_posix()] = CLASSES[c]
    for c in range(10):
        for i in per_class[c][30:]:
            _png(images[i], root / "val" / CLASSES[c] / f"v{i}.png")
    a, b, c_, d, f, h = (per_class[k][1] for k in (0, 1, 2, 3, 4, 5))
    copies = {
        "exact": (f"train/airplane/t{a}.png", _png(images[a], root / "train" / "airplane" / "copy_exact.png")),
        "resized": (f"train/automobile/t{b}.png", _resized(images[b], root / "train" / "automobile" / "copy_big.png")),
        "jpeg": (f"train/bird/t{c_}.png", _png(images[c_], root / "train" / "bird" / "copy.jpg", quality=75)),
        "mirror": (f"train/cat/t{d}.png", _png(images[d].flip(-1), root / "train" / "cat" / "copy_mirror.png")),
    }
    leaks = {
        "near": (_png(images[f], root / "val" / "deer" / "leak.jpg", quality=80), f"train/deer/t{f}.png"),
        "exact": (_png(images[h], root / "val" / "dog" / "leak.png"), f"train/dog/t{h}.png"),
    }
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    pairs = {kind: (orig, rel(copy)) for kind, (orig, copy) in copies.items()}
    leaked = {kind: (rel(copy), orig) for kind, (copy, orig) in leaks.items()}
    return {"root": root, "flips": truth, "pairs": pairs, "leaks": leaked}


def _resized(pixels: torch.Tensor, path: Path) -> Path:
    big = Image.fromarray(pixels.permute(1, 2, 0).numpy()).resize((80, 80), Image.Resampling.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    big.save(path)
    return path


@pytest.fixture(scope="module")
def planted_audit(planted, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("audit")
    code = main(
        ["audit", "--data", "folder", "--data-dir", str(planted["root"]), "--checkpoint", "resnet20.rk_cifar10"]
        + ["--out", str(out), "--no-progress"]
    )
    assert code == 0
    return out


def test_planted_label_flips_are_found_from_a_model_that_never_saw_them(planted, planted_audit) -> None:
    rows = [r for r in _rows(planted_audit / "label_issues.csv") if r["split"] == "train"]
    flagged = {r["path"]: r for r in rows}
    found = set(flagged) & set(planted["flips"])
    assert len(found) >= 12, f"found {len(found)} of {FLIPS} flipped labels"
    assert len(found) / len(flagged) >= 0.6, f"{len(flagged)} flagged for {len(found)} true flips"
    right = sum(flagged[p]["suggested"] == planted["flips"][p] for p in found)
    assert right >= 0.8 * len(found)  # the suggested label is the image's true class
    ranks = sorted(int(r["rank"]) for r in rows)
    assert ranks == list(range(1, len(rows) + 1))
    confidences = [float(r["self_confidence"]) for r in sorted(rows, key=lambda r: int(r["rank"]))]
    assert confidences == sorted(confidences)  # lowest self-confidence first
    numbers = json.loads((planted_audit / "audit.json").read_text())
    assert numbers["label_issues"]["probabilities"] == "checkpoint"
    assert numbers["label_issues"]["train"]["scored"] == 304  # 300 images and 4 planted copies
    assert numbers["exclude"]["label_issues.csv"] == len(rows)


def test_planted_duplicates_and_leaks_are_paired_with_their_originals(planted, planted_audit) -> None:
    pairs = {(r["path_a"], r["path_b"]): r for r in _rows(planted_audit / "duplicates_train.csv")}
    for kind, (orig, copy) in planted["pairs"].items():
        row = pairs.get((orig, copy)) or pairs.get((copy, orig))
        assert row is not None, f"the {kind} copy {copy} of {orig} was not paired"
        assert row["kind"] == ("exact" if kind == "exact" else "near")
    planted_keys = {frozenset(p) for p in planted["pairs"].values()}
    others = [k for k in pairs if frozenset(k) not in planted_keys]
    assert len(others) <= 2, f"unplanted pairs: {others}"
    leaks = _rows(planted_audit / "duplicates_test_train.csv")
    found = {(r["test_path"], r["train_path"]): r["kind"] for r in leaks}
    for kind, pair in planted["leaks"].items():
        assert found.get(pair) == kind, f"the {kind} leak {pair} is missing"
    similarities = [float(r["similarity"]) for r in leaks]
    assert similarities == sorted(similarities, reverse=True)  # most similar first
    numbers = json.loads((planted_audit / "audit.json").read_text())
    assert numbers["duplicates"]["test_train"]["test_images"] == len({r["test_path"] for r in leaks})
    report = (planted_audit / "report.html").read_text()
    assert report.count("data:image/png;base64") >= 2 * len(leaks) + len(pairs)  # pairs side by side
    assert "leak.jpg" in report


def test_exclude_drops_the_flagged_images_from_training(planted, planted_audit, tmp_path: Path, run_cli) -> None:
    issues = planted_audit / "label_issues.csv"
    listed = {r["path"] for r in _rows(issues) if r["split"] == "train"}
    proc = run_cli(
        "train", "--data", "folder", "--data-dir", str(planted["root"]), "--exclude", str(issues),
        "--epochs", "1", "--batch-size", "64", "--no-amp", "--out", str(tmp_path / "run"), "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())["datasets"]["train"]
    assert record["n"] == 304 - len(listed)
    assert record["excluded"]["removed"] == len(listed) and record["excluded"]["file"] == str(issues.resolve())
    from resnetkit.config import TrainConfig
    from resnetkit.data.factory import load_training_data
    from resnetkit.models import resolve_data_config

    cfg = TrainConfig(data="folder", data_dir=str(planted["root"]), exclude=str(issues), progress=False)
    data = load_training_data(cfg, resolve_data_config("resnet20", None))
    assert not listed & set(data.train.info["files"])


def test_exclude_reads_the_leakage_csv_by_its_train_column(planted, planted_audit) -> None:
    items = read_exclusions(planted_audit / "duplicates_test_train.csv").items
    assert {train for _, train in planted["leaks"].values()} <= set(items)
    assert not any(i.startswith("val/") for i in items)


def test_exclude_takes_a_plain_list_and_refuses_what_is_not_in_the_training_set(tmp_path: Path, run_cli) -> None:
    listing = tmp_path / "drop.txt"
    listing.write_text("# two images\n3\n17\n")
    proc = run_cli(
        "train", "--data", "sample", "--exclude", str(listing), "--epochs", "1", "--no-amp",
        "--out", str(tmp_path / "run"), "--no-progress", "--max-steps", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())["datasets"]["train"]
    assert record["n"] == 1998 and record["excluded"]["removed"] == 2
    listing.write_text("3\n20000\n")
    proc = run_cli("train", "--data", "sample", "--exclude", str(listing), "--epochs", "1", "--no-amp")
    assert proc.returncode == 2 and "'20000' is not an index of the 2000 sample training images" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("image,score\na.png,1\n")
    proc = run_cli("train", "--data", "sample", "--exclude", str(bad))
    assert proc.returncode == 2 and "needs one of the columns" in proc.stderr
    proc = run_cli("train", "--data", "sample", "--exclude", str(tmp_path / "missing.csv"))
    assert proc.returncode == 2 and "no such file" in proc.stderr


@pytest.fixture(scope="module")
def broken(tmp_path_factory, cifar_test) -> Path:
    """Two class folders of real images with broken and odd files among them."""
    root = tmp_path_factory.mktemp("broken")
    for c, name in ((3, "cat"), (5, "dog")):
        for i in torch.nonzero(cifar_test.labels == c).flatten()[:6].tolist():
            _png(cifar_test.images[i], root / name / f"{i}.png")
    photo = Image.fromarray(cifar_test.images[0].permute(1, 2, 0).numpy()).resize((120, 90))
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG")
    (root / "cat" / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "cat" / "garbage.jpg").write_bytes(b"not an image at all" * 10)
    photo.convert("L").save(root / "cat" / "grey.png")
    photo.convert("CMYK").save(root / "cat" / "cmyk.jpg")
    Image.fromarray((np.arange(120 * 90).reshape(90, 120) * 6).astype(np.uint16)).save(root / "dog" / "deep.png")
    photo.convert("RGBA").save(root / "dog" / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(root / "dog" / "rotated.jpg", exif=exif)
    photo.resize((8, 8)).save(root / "dog" / "tiny.png")
    photo.resize((200, 20)).save(root / "dog" / "wide.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_broken_and_odd_files_are_listed_not_fatal(broken, tmp_path: Path, run_cli) -> None:
    proc = run_cli("audit", "--data", "folder", "--data-dir", str(broken), "--out", str(tmp_path), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    problems = {(r["path"], r["problem"]) for r in _rows(tmp_path / "odd_files.csv")}
    expected = {
        ("cat/truncated.jpg", "unreadable"),
        ("cat/garbage.jpg", "unreadable"),
        ("cat/grey.png", "greyscale"),
        ("cat/cmyk.jpg", "cmyk"),
        ("dog/deep.png", "high_bit_depth"),
        ("dog/alpha.png", "alpha"),
        ("dog/rotated.jpg", "exif_rotated"),
        ("dog/tiny.png", "too_small"),
        ("dog/wide.png", "extreme_aspect"),
        ("dog/notes.txt", "not_an_image"),
    }
    assert expected <= problems, expected - problems
    assert not {p for p, _ in problems if p.split("/")[1][0].isdigit()}  # the plain CIFAR images are fine
    numbers = json.loads((tmp_path / "audit.json").read_text())
    assert numbers["files"]["problems"]["unreadable"] == 2
    assert "truncated" in next(r["detail"] for r in _rows(tmp_path / "odd_files.csv") if r["path"].endswith("d.jpg"))
    assert "Label issues</h2><p>Not audited" in (tmp_path / "report.html").read_text()


def test_fold_models_each_score_only_the_images_they_did_not_train_on(broken, tmp_path: Path, run_cli) -> None:
    proc = run_cli(
        "audit", "--data", "folder", "--data-dir", str(broken), "--folds", "2", "--epochs", "1",
        "--set", "amp=false", "--set", "batch_size=4", "--set", "img_size=32", "--out", str(tmp_path), "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    held = [set((tmp_path / "folds" / f"fold{k}" / "held_out.txt").read_text().split()) for k in range(2)]
    train_ids = set((tmp_path / "probabilities" / "train_ids.txt").read_text().split())
    assert not held[0] & held[1] and held[0] | held[1] == train_ids
    for k in range(2):
        record = json.loads((tmp_path / "folds" / f"fold{k}" / "run" / "run.json").read_text())["datasets"]["train"]
        assert record["excluded"]["removed"] == len(held[k]) and record["n"] == len(train_ids) - len(held[k])
    probs = torch.load(tmp_path / "probabilities" / "train.pt", weights_only=True)["probs"]
    assert torch.isfinite(probs).all() and torch.allclose(probs.sum(1), torch.ones(len(probs), dtype=probs.dtype))
    saved = (tmp_path / "folds" / "fold0" / "probs.pt").stat().st_mtime_ns
    again = run_cli(
        "audit", "--data", "folder", "--data-dir", str(broken), "--folds", "2", "--out", str(tmp_path), "--no-progress"
    )
    assert again.returncode == 0 and "reusing" in again.stderr
    assert (tmp_path / "folds" / "fold0" / "probs.pt").stat().st_mtime_ns == saved


def test_confident_learning_on_a_hand_computed_example() -> None:
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 1])
    probs = torch.tensor(
        [
            [0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.1, 0.85, 0.05],  # the 4th: truly class 1
            [0.1, 0.8, 0.1], [0.05, 0.9, 0.05], [0.2, 0.7, 0.1], [0.15, 0.75, 0.1],
            [0.1, 0.1, 0.8], [0.05, 0.05, 0.9], [0.1, 0.2, 0.7], [0.7, 0.1, 0.2],  # the 12th: truly class 0
            [float("nan")] * 3,  # an unreadable image
        ]
    )  # fmt: skip
    issues = find_label_issues(labels, probs)
    # t_j: mean probability of class j over the images labelled j
    assert torch.allclose(issues.thresholds, torch.tensor([0.625, 0.7875, 0.65], dtype=torch.float64))
    assert issues.ranked.tolist() == [3, 11]  # self-confidence 0.1, then 0.2
    assert issues.suggested[3] == 1 and issues.suggested[11] == 0
    assert issues.confident_joint[0, 1] == 1 and issues.confident_joint[2, 0] == 1
    assert issues.scored == 12 and issues.estimated_issues == 2
    off = find_label_issues(labels, probs, method="confident_joint")
    assert sorted(off.ranked.tolist()) == [3, 11]


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such folder"),
        ("one_class", "needs at least 2 classes"),
        ("undecodable", "has no readable images"),
        ("other_classes", "predicts 10 classes"),
        ("one_fold", "at least 2 folds"),
    ],
)
def test_bad_input_is_one_line(case: str, message: str, tmp_path: Path, run_cli, cifar_test) -> None:
    data = tmp_path / "data"
    extra: list[str] = []
    if case == "one_class":
        _png(cifar_test.images[0], data / "cat" / "a.png")
    elif case == "undecodable":
        for name in ("cat", "dog"):
            (data / name).mkdir(parents=True)
            (data / name / "x.jpg").write_bytes(b"junk")
    elif case == "other_classes":
        for name, i in (("cat", 0), ("dog", 1)):
            _png(cifar_test.images[i], data / name / "a.png")
            _png(cifar_test.images[i + 2], data / name / "b.png")
        extra = ["--checkpoint", "resnet20.rk_cifar10"]
    elif case == "one_fold":
        data.mkdir()
        extra = ["--folds", "1"]
    proc = run_cli("audit", "--data", "folder", "--data-dir", str(data), "--out", str(tmp_path / "o"), *extra)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("resnetkit: error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in proc.stderr, proc.stderr


def test_a_checkpoint_audits_only_the_splits_it_did_not_train_on(tmp_path: Path, run_cli) -> None:
    """resnet20.rk_cifar10 trained on CIFAR-10's training set, which the embedded sample is drawn from: its labels
    are audited on the test images alone (a model vouches for the labels it was trained on)."""
    proc = run_cli(
        "audit", "--data", "sample", "--checkpoint", "resnet20.rk_cifar10", "--out", str(tmp_path), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    numbers = json.loads(proc.stdout)
    assert "train" not in numbers["label_issues"] and numbers["label_issues"]["test"]["scored"] == 500
    assert {r["split"] for r in _rows(tmp_path / "label_issues.csv")} <= {"test"}
    assert numbers["label_issues"]["test"]["out_of_sample_top1"] > 0.85


def test_model_embeddings_pair_a_mirror_copy_with_its_original(planted, tmp_path: Path, run_cli) -> None:
    """--embedding model: the checkpoint's pooled features, compared against the mirror image's too."""
    proc = run_cli(
        "audit", "--data", "folder", "--data-dir", str(planted["root"]), "--embedding", "model",
        "--embed-model", "resnet20.rk_cifar10", "--threshold", "0.99", "--out", str(tmp_path), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["duplicates"]["embed_model"] == "resnet20.rk_cifar10"
    pairs = {frozenset((r["path_a"], r["path_b"])): r for r in _rows(tmp_path / "duplicates_train.csv")}
    for kind in ("exact", "mirror"):
        row = pairs[frozenset(planted["pairs"][kind])]
        assert float(row["similarity"]) > 0.999 and row["kind"] == ("exact" if kind == "exact" else "near")
