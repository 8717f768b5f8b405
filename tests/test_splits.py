"""Every seeded split draws the images it drew before the splits shared one helper (issue 13): checkpoints re-create
their validation split from the seed and run.json records held-out lists, so a changed draw would silently score
training images. The expected values were recorded from the code before the change (commit 9a8bbb2)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from resnetkit.config import TrainConfig
from resnetkit.data.cifar import load_sample, paper_split
from resnetkit.data.datasets import ImageTensorDataset
from resnetkit.data.factory import load_training_data
from resnetkit.data.folder import load_image_folder, scan_image_folder
from resnetkit.data.paths import require_folder
from resnetkit.data.splits import seeded_split, stratified_split
from resnetkit.errors import DataError
from resnetkit.models import create_model

from conftest import shared_data

# load_image_folder(<folder>, val_fraction, seed) held out exactly these files before the change
FOLDER_HELD_OUT = [
    (
        {"a": 20, "b": 10, "c": 2},
        0.2,
        3,
        ["a/003.png", "a/006.png", "a/007.png", "a/012.png", "b/001.png", "b/004.png", "c/000.png"],
    ),
    ({"cat": 12, "dog": 9}, 0.1, 0, ["cat/008.png", "dog/002.png"]),
    (
        {"cat": 12, "dog": 9},
        0.3,
        7,
        ["cat/000.png", "cat/003.png", "cat/004.png", "cat/005.png", "dog/000.png", "dog/001.png", "dog/003.png"],
    ),
]
# cats_vs_dogs/train used as a folder of class sub-folders (seed 0, 10%): 200 files, this sha256 of their list
CVD_HELD_OUT_SHA256 = "96bbd06cc714d76315206e540af50f1d4d28b4208f86dbe911531942516b388c"
# positions in the embedded sample of TrainConfig(data="sample", train_subset=16, test_subset=20, val_size=100,
# seed=1)'s training subset (in its drawn order), validation split and test subset
SAMPLE_TRAIN = [49, 714, 1752, 357, 216, 1339, 1097, 304, 1507, 566, 1288, 1365, 61, 1545, 1373, 1018]
SAMPLE_VAL = [
    2,
    16,
    20,
    42,
    53,
    83,
    86,
    107,
    143,
    151,
    178,
    199,
    208,
    222,
    239,
    244,
    251,
    265,
    269,
    306,
    341,
    351,
    368,
    375,
    376,
    383,
    388,
    407,
    410,
    452,
    455,
    456,
    460,
    464,
    465,
    472,
    600,
    611,
    625,
    627,
    649,
    688,
    751,
    780,
    803,
    832,
    860,
    865,
    890,
    925,
    935,
    980,
    992,
    1025,
    1028,
    1029,
    1054,
    1064,
    1070,
    1083,
    1107,
    1129,
    1135,
    1145,
    1162,
    1176,
    1204,
    1216,
    1220,
    1282,
    1289,
    1370,
    1376,
    1408,
    1410,
    1457,
    1461,
    1483,
    1488,
    1497,
    1512,
    1565,
    1583,
    1590,
    1623,
    1631,
    1648,
    1649,
    1653,
    1659,
    1669,
    1692,
    1698,
    1739,
    1741,
    1751,
    1841,
    1845,
    1923,
    1999,
]
SAMPLE_TEST = [24, 44, 74, 80, 87, 132, 139, 143, 152, 169, 208, 221, 225, 263, 271, 279, 296, 334, 441, 446]


def _make_classes(root: Path, counts: dict[str, int]) -> Path:
    for label, (name, n) in enumerate(counts.items()):
        for i in range(n):
            path = root / name / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (6, 4), (label * 80, 0, 0)).save(path)
    return root


@pytest.mark.parametrize(("counts", "fraction", "seed", "held_out"), FOLDER_HELD_OUT)
def test_folder_held_out_files_are_those_drawn_before(tmp_path: Path, counts, fraction, seed, held_out) -> None:
    root = _make_classes(tmp_path, counts)
    train, val = load_image_folder(root, size=8, val_fraction=fraction, seed=seed, progress=False)
    assert val.info["held_out"] == val.info["files"] == held_out
    assert sorted(train.info["files"] + val.info["files"]) == sorted(
        f"{c}/{i:03d}.png" for c in counts for i in range(counts[c])
    )


def test_held_out_list_of_real_photographs_is_the_one_recorded_before() -> None:
    root = shared_data("cats_vs_dogs") / "train"
    classes, samples = scan_image_folder(root)  # the draw needs only the labels: no image is decoded
    labels = torch.tensor([label for _, label in samples])
    held_idx, rest_idx = stratified_split(labels, classes, 0.1, seed=0)
    held_out = [samples[i][0].relative_to(root).as_posix() for i in held_idx.tolist()]
    assert len(held_out) == 200 and held_out[:3] == ["cat/cat.103.jpg", "cat/cat.111.jpg", "cat/cat.115.jpg"]
    assert hashlib.sha256("\n".join(held_out).encode()).hexdigest() == CVD_HELD_OUT_SHA256
    assert sorted(held_idx.tolist() + rest_idx.tolist()) == list(range(len(samples)))


def test_paper_split_draws_the_validation_images_it_drew_before() -> None:
    images = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1)
    train, val = paper_split(ImageTensorDataset(images, torch.zeros(50, dtype=torch.long), ["x"]), 7, seed=5)
    assert val.images.flatten().tolist() == [4, 6, 11, 30, 33, 34, 43]
    assert sorted(train.images.flatten().tolist() + val.images.flatten().tolist()) == list(range(50))


def _positions(subset: ImageTensorDataset, full: ImageTensorDataset) -> list[int]:
    flat = full.images.flatten(1)
    return [int((flat == image.flatten()).all(1).nonzero()[0]) for image in subset.images]


def test_training_subsets_and_validation_split_are_those_drawn_before() -> None:
    cfg = TrainConfig(data="sample", train_subset=16, test_subset=20, val_size=100, seed=1, progress=False)
    data = load_training_data(cfg, create_model("resnet20").default_cfg)
    full_train, full_test = load_sample("train"), load_sample("test")
    assert _positions(data.train, full_train) == SAMPLE_TRAIN  # the drawn order, not sorted
    assert _positions(data.val, full_train) == SAMPLE_VAL
    assert _positions(data.test, full_test) == SAMPLE_TEST


def test_seeded_split_parts_are_sorted_disjoint_and_cover_everything() -> None:
    picked, rest = seeded_split(30, 8, seed=4)
    assert len(picked) == 8 and picked.tolist() == sorted(picked.tolist()) and rest.tolist() == sorted(rest.tolist())
    assert sorted(picked.tolist() + rest.tolist()) == list(range(30))
    assert torch.equal(seeded_split(30, 8, seed=4)[0], picked) and not torch.equal(seeded_split(30, 8, 5)[0], picked)


def test_require_folder(tmp_path: Path) -> None:
    assert require_folder(tmp_path, "data folder") == tmp_path
    assert require_folder(tmp_path / "new", "data folder", missing_ok=True) == tmp_path / "new"
    with pytest.raises(DataError, match=r"^data folder .*nope does not exist; try this$"):
        require_folder(tmp_path / "nope", "data folder", hint="; try this")
    (tmp_path / "file").write_text("x")
    for missing_ok in (False, True):
        with pytest.raises(DataError, match=r"^data folder .*file is not a folder$"):
            require_folder(tmp_path / "file", "data folder", missing_ok=missing_ok)
