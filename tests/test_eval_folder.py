"""Issue 13, end to end on real photographs: `eval --data folder` scores every image of a folder the checkpoint was
not trained on, the held-out split of its own training folder, every image with `--split all`, and always says
which images of which folder it scored."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from resnetkit.cli.main import main
from resnetkit.workflows.inference import predict_split

from conftest import pin_precision, shared_data

pytestmark = pytest.mark.usefixtures("one_thread")

OWN_PER_CLASS, OTHER_PER_CLASS = 20, 15  # files copied per class into the training folder and into another folder
LAYOUT_TRAIN, LAYOUT_VAL = 6, 7  # per class, in a third folder with train/ and val/
TRAIN = [
    "--config",
    "cats_vs_dogs",
    "--img-size",
    "32",
    "--max-steps",
    "1",
    "--batch-size",
    "8",
    "--no-progress",
    "--threads",
    "1",
]


@dataclass
class Folders:
    run: Path
    own: Path  # the run's training folder: class sub-folders only, so a seeded 10% is held out
    other: Path  # class sub-folders the run never saw
    layout: Path  # train/ + val/, never seen either


def _copy(src: Path, dest: Path, per_class: int) -> None:
    """The first `per_class` photos of each class folder of `src` (sorted by name) into dest/<class>/."""
    for cls in ("cat", "dog"):
        (dest / cls).mkdir(parents=True)
        for f in sorted((src / cls).glob("*.jpg"))[:per_class]:
            shutil.copy(f, dest / cls / f.name)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Folders]:
    cvd = shared_data("cats_vs_dogs")
    tmp = tmp_path_factory.mktemp("eval_folder")
    own, other, layout = tmp / "own", tmp / "other", tmp / "layout"
    _copy(cvd / "train", own, OWN_PER_CLASS)
    _copy(cvd / "val", other, OTHER_PER_CLASS)
    _copy(cvd / "train", layout / "train", LAYOUT_TRAIN)
    _copy(cvd / "val", layout / "val", LAYOUT_VAL)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETKIT_HOME", str(pin_precision(tmp / "home")))  # the decode cache: not the user's home
        mp.setenv("RESNETKIT_OFFLINE", "1")
        with pytest.MonkeyPatch.context() as cwd:
            cwd.chdir(tmp)  # trained with a relative --data-dir: its config says "own", its run.json the full path
            assert main(["-q", "train", *TRAIN, "--data-dir", "own", "--out", str(tmp / "run")]) == 0
        yield Folders(tmp / "run", own, other, layout)


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


def _eval(capsys: pytest.CaptureFixture[str], checkpoint: Path | str, data_dir: Path | str, *extra: str) -> dict:
    capsys.readouterr()
    code = main(
        [
            "-q",
            "eval",
            "--checkpoint",
            str(checkpoint),
            "--data",
            "folder",
            "--data-dir",
            str(data_dir),
            "--no-compile",
            "--json",
            *extra,
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_a_folder_the_checkpoint_was_not_trained_on_is_scored_whole(folders: Folders, capsys) -> None:
    res = _eval(capsys, folders.run, folders.other)
    assert res["n"] == len(_files(folders.other)) == 2 * OTHER_PER_CLASS
    assert sum(map(sum, res["confusion_matrix"])) == 2 * OTHER_PER_CLASS
    assert res["split"] == "all" and res["requested_split"] == "test" and res["source"] == str(folders.other.resolve())
    assert res["scored"] == f"all of {folders.other.resolve()} (not the checkpoint's training folder)"
    assert (
        main(
            [
                "-q",
                "eval",
                "--checkpoint",
                str(folders.run),
                "--data",
                "folder",
                "--data-dir",
                str(folders.other),
                "--no-compile",
            ]
        )
        == 0
    )
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"scored 30 images: all of {folders.other.resolve()} (not the checkpoint's training folder)"


def test_its_own_training_folder_is_scored_on_the_held_out_split(folders: Folders, capsys, monkeypatch) -> None:
    recorded = json.loads((folders.run / "run.json").read_text())["datasets"]["test"]
    assert 0 < len(recorded["held_out"]) < 2 * OWN_PER_CLASS
    res = _eval(capsys, folders.run / "checkpoints" / "last.pt", folders.own)
    assert res["n"] == len(recorded["held_out"]) == recorded["n"]
    assert res["split"] == "val" and "the checkpoint's own training folder" in res["scored"]
    assert res["scored"].startswith(f"the held-out 10% (seed 0) of {folders.own.resolve()}")
    ids = predict_split(folders.run, "folder", str(folders.own), progress=False, compile=False).ids
    assert ids == recorded["held_out"]  # exactly the images the run held out, none it trained on
    monkeypatch.chdir(folders.own.parent)  # the same folder named by a relative path
    assert _eval(capsys, folders.run, folders.own.name)["n"] == len(recorded["held_out"])


def test_a_copied_checkpoint_without_its_run_folder_still_knows_its_training_folder(
    folders: Folders, capsys, monkeypatch, tmp_path: Path
) -> None:
    assert torch.load(folders.run / "checkpoints" / "last.pt", weights_only=True)["config"]["data_dir"] == "own"
    copy = tmp_path / "model.pt"
    shutil.copy(folders.run / "checkpoints" / "last.pt", copy)
    recorded = json.loads((folders.run / "run.json").read_text())["datasets"]["test"]["held_out"]
    monkeypatch.chdir(folders.own.parent)  # where the relative data_dir of the checkpoint's config resolves to it
    assert _eval(capsys, copy, folders.own)["n"] == len(recorded)
    monkeypatch.chdir(tmp_path)  # elsewhere, only the run folder's run.json still knows it
    assert _eval(capsys, folders.run, folders.own)["n"] == len(recorded)


def test_exported_files_score_the_held_out_images_their_checkpoint_scores(folders: Folders, capsys, tmp_path) -> None:
    """An exported file keeps its checkpoint's data provenance: `eval` of the .onnx, int8 .onnx and .pt2 files on the
    training folder scores exactly the held-out images the checkpoint scores, and says it is that folder."""
    recorded = json.loads((folders.run / "run.json").read_text())["datasets"]["test"]["held_out"]
    files = {"onnx": tmp_path / "m.onnx", "int8": tmp_path / "m8.onnx", "pt2": tmp_path / "m.pt2"}
    for kind, extra in (
        ("onnx", []),
        ("int8", ["--int8", "--data", "folder", "--data-dir", str(folders.own)]),
        ("pt2", ["--format", "pt2"]),
    ):
        assert main(["-q", "export", "--checkpoint", str(folders.run), *extra, "--out", str(files[kind])]) == 0, kind
    for kind, file in files.items():
        preds = predict_split(file, "folder", str(folders.own), progress=False, compile=False)
        assert preds.ids == recorded, kind  # the same images, none the model trained on
        assert "the checkpoint's own training folder" in preds.info["scored"], kind
        assert _eval(capsys, file, folders.own)["n"] == len(recorded)


def test_split_all_scores_every_image_of_the_training_folder(folders: Folders, capsys) -> None:
    res = _eval(capsys, folders.run, folders.own, "--split", "all")
    assert res["n"] == len(_files(folders.own)) == 2 * OWN_PER_CLASS and res["split"] == "all"
    assert res["scored"] == f"all of {folders.own.resolve()} (the checkpoint's own training folder)"


@pytest.mark.parametrize(
    ("split", "n", "scored"),
    [
        ("test", 2 * LAYOUT_VAL, "the val/ folder of {root}"),
        ("val", 2 * LAYOUT_VAL, "the val/ folder of {root}"),
        ("train", 2 * LAYOUT_TRAIN, "the train/ folder of {root}"),
        ("all", 2 * (LAYOUT_TRAIN + LAYOUT_VAL), "all of {root}: train/ and val/"),
    ],
)
def test_a_train_val_folder_is_scored_on_the_part_asked_for(folders: Folders, capsys, split, n, scored) -> None:
    res = _eval(capsys, folders.run, folders.layout, "--split", split)
    parts = {"test": ["val"], "val": ["val"], "train": ["train"], "all": ["train", "val"]}[split]
    assert res["n"] == n == sum(len(_files(folders.layout / p)) for p in parts)
    root = folders.layout.resolve()
    assert res["scored"] == scored.format(root=root) + " (not the checkpoint's training folder)"


def test_train_split_of_a_foreign_folder_of_class_sub_folders_is_an_error(folders: Folders, capsys) -> None:
    code = main(
        [
            "-q",
            "eval",
            "--checkpoint",
            str(folders.run),
            "--data",
            "folder",
            "--data-dir",
            str(folders.other),
            "--split",
            "train",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert str(folders.other) in err and "no training part" in err and "split 'all'" in err


def test_unknown_split_is_an_error(folders: Folders, capsys) -> None:
    code = main(
        [
            "-q",
            "eval",
            "--checkpoint",
            str(folders.run),
            "--data",
            "folder",
            "--data-dir",
            str(folders.other),
            "--split",
            "tset",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "unknown split 'tset' for an image folder; choose from train, val, test, all" in err


def test_a_changed_training_folder_is_warned_about(folders: Folders, caplog, tmp_path: Path) -> None:
    extra = folders.own / "cat" / "added.jpg"
    shutil.copy(next((folders.other / "cat").iterdir()), extra)
    try:
        with caplog.at_level(logging.WARNING, logger="resnetkit.workflows.inference"):
            preds = predict_split(folders.run, "folder", str(folders.own), progress=False, compile=False)
    finally:
        extra.unlink()
    recorded = json.loads((folders.run / "run.json").read_text())["datasets"]["test"]["held_out"]
    assert preds.ids != recorded
    [record] = [r for r in caplog.records if r.name == "resnetkit.workflows.inference"]
    assert "were not held out in training" in record.getMessage()


def test_report_says_what_it_scored(folders: Folders, capsys, tmp_path: Path) -> None:
    code = main(
        [
            "-q",
            "report",
            "--checkpoint",
            str(folders.run),
            "--data",
            "folder",
            "--data-dir",
            str(folders.other),
            "--no-compile",
            "--out",
            str(tmp_path / "report"),
            "--format",
            "markdown",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"scored 30 images: all of {folders.other.resolve()} (not the checkpoint's training folder)" in out


def test_cifar_data_has_no_split_all(capsys) -> None:
    code = main(["-q", "eval", "--checkpoint", "resnet20.rk_cifar10", "--data", "sample", "--split", "all"])
    err = capsys.readouterr().err
    assert code == 2 and "split 'all' (every image) is for image folders; sample has the splits train and test" in err


def test_cifar_eval_says_what_it_scored(capsys) -> None:
    code = main(["-q", "eval", "--checkpoint", "resnet20.rk_cifar10", "--data", "sample", "--no-compile"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert (
        out.splitlines()[0] == "scored 500 images: the cifar10-sample test set in resnetkit/data/sample/"
        "cifar10_sample_test.bin.gz"
    )
