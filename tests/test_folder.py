"""Image folders: decoding every pixel mode, folder layouts, error paths, the held-out split and the cache."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from resnetkit.data import folder
from resnetkit.data.datasets import ImageTensorDataset
from resnetkit.data.folder import (
    list_image_files,
    load_image_folder,
    load_image_folder_split,
    scan_image_folder,
)
from resnetkit.data.images import read_image
from resnetkit.errors import DataError, ResnetkitError

from conftest import shared_data

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
CLASS_COLOURS = [RED, GREEN, BLUE]


def _save(path: Path, image: Image.Image, **params: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **params)
    return path


def _palette_image(transparent: bool) -> Image.Image:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * (254 * 3))
    if transparent:
        image.info["transparency"] = 1
    return image


def _pixel(tensor: torch.Tensor, y: int | None = None, x: int | None = None) -> tuple[int, ...]:
    h, w = tensor.shape[1:]
    return tuple(tensor[:, h // 2 if y is None else y, w // 2 if x is None else x].tolist())


def _close(got: tuple[int, ...], want: tuple[int, ...], tol: int) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(got, want, strict=True))


# (file name, image factory, expected RGB, tolerance)
MODES: list[tuple[str, Callable[[], Image.Image], tuple[int, int, int], int]] = [
    ("rgb.png", lambda: Image.new("RGB", (8, 8), (12, 34, 56)), (12, 34, 56), 0),
    ("rgb.jpg", lambda: Image.new("RGB", (8, 8), RED), RED, 6),
    ("grey.png", lambda: Image.new("L", (8, 8), 128), (128, 128, 128), 0),
    ("la_opaque.png", lambda: Image.new("LA", (8, 8), (100, 255)), (100, 100, 100), 0),
    ("la_clear.png", lambda: Image.new("LA", (8, 8), (100, 0)), WHITE, 0),
    ("palette.png", lambda: _palette_image(False), (10, 200, 30), 0),
    ("palette.gif", lambda: _palette_image(False), (10, 200, 30), 0),
    ("palette_clear.png", lambda: _palette_image(True), WHITE, 0),
    ("palette_clear.gif", lambda: _palette_image(True), WHITE, 0),
    ("rgba_clear.png", lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 0)), WHITE, 0),
    ("rgba_opaque.webp", lambda: Image.new("RGBA", (8, 8), (0, 0, 255, 255)), BLUE, 8),
    ("rgba_half.png", lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 128)), (255, 127, 127), 1),
    ("cmyk.jpg", lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)), RED, 8),
    ("cmyk.tiff", lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)), RED, 0),
    ("grey16.png", lambda: Image.new("I;16", (8, 8), 65535), WHITE, 0),
    ("grey16_half.tif", lambda: Image.new("I;16", (8, 8), 32768), (128, 128, 128), 0),
    ("grey16.pgm", lambda: Image.new("I", (8, 8), 65535), WHITE, 0),
    ("float.tif", lambda: Image.new("F", (8, 8), 0.5), (128, 128, 128), 0),
    ("bilevel_on.bmp", lambda: Image.new("1", (8, 8), 1), WHITE, 0),
    ("bilevel_off.png", lambda: Image.new("1", (8, 8), 0), (0, 0, 0), 0),
    ("rgb.ppm", lambda: Image.new("RGB", (8, 8), GREEN), GREEN, 0),
]


@pytest.mark.parametrize(("name", "make", "want", "tol"), MODES, ids=[m[0] for m in MODES])
def test_every_mode_becomes_rgb_uint8(
    tmp_path: Path, name: str, make: Callable[[], Image.Image], want: tuple[int, int, int], tol: int
) -> None:
    path = _save(tmp_path / name, make())
    image = read_image(path, size=12)
    assert image.dtype == torch.uint8 and image.shape == (3, 12, 12)
    assert _close(_pixel(image), want, tol), (Image.open(path).mode, _pixel(image), want)
    assert _close(_pixel(image, 0, 0), want, tol)


@pytest.mark.parametrize("extent", [(5, 3), (3000, 20), (20, 3000), (1, 1)])
def test_any_size_is_resized_and_center_cropped(tmp_path: Path, extent: tuple[int, int]) -> None:
    path = _save(tmp_path / "strip.png", Image.new("RGB", extent, GREEN))
    image = read_image(path, size=16)
    assert image.shape == (3, 16, 16)
    assert _pixel(image) == GREEN and _pixel(image, 0, 0) == GREEN and _pixel(image, 15, 15) == GREEN


def test_center_crop_keeps_the_middle_of_the_long_side(tmp_path: Path) -> None:
    strip = Image.new("RGB", (30, 10), RED)
    strip.paste(Image.new("RGB", (10, 10), BLUE), (10, 0))  # only the middle third is blue
    image = read_image(_save(tmp_path / "strip.png", strip), size=10)
    assert _pixel(image, 5, 1) == BLUE and _pixel(image, 5, 8) == BLUE


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    landscape = Image.new("RGB", (40, 20), RED)
    landscape.paste(Image.new("RGB", (20, 20), BLUE), (20, 0))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the left half becomes the top half
    path = _save(tmp_path / "rotated.jpg", landscape, exif=exif, quality=95)
    image = read_image(path, size=20)
    assert _close(_pixel(image, 3, 10), RED, 12) and _close(_pixel(image, 16, 10), BLUE, 12)


def test_large_jpeg_is_decoded_in_draft_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(tmp_path / "big.jpg", Image.new("RGB", (2000, 1500), BLUE))
    sizes = []
    original = Image.Image.resize

    def spy(self: Image.Image, *args: object, **kwargs: object) -> Image.Image:
        sizes.append(self.size)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    assert _close(_pixel(read_image(path, size=32)), BLUE, 6)
    assert sizes == [(250, 188)]  # decoded at 1/8 scale: still at least 32 on both sides


@pytest.mark.parametrize("content", [b"this is not an image", b""])
def test_unreadable_file_raises_data_error_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError, match="broken.jpg"):
        read_image(path, size=8)
    assert issubclass(DataError, ResnetkitError)


# ---------------------------------------------------------------------------------------------------------
# Folders


def _make_classes(root: Path, counts: dict[str, int], ext: str = "png") -> Path:
    """One folder per class, each image filled with its class colour (so labels can be checked by pixel)."""
    for label, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _save(root / name / f"{i:03d}.{ext}", Image.new("RGB", (6, 4), CLASS_COLOURS[label]))
    return root


def _assert_labels_match_pixels(dataset: torch.Tensor, labels: torch.Tensor) -> None:
    colours = torch.tensor(CLASS_COLOURS, dtype=torch.uint8)
    assert torch.equal(dataset[:, :, 0, 0], colours[labels])


def test_scan_sorts_classes_and_files_and_skips_hidden_and_non_images(tmp_path: Path) -> None:
    root = _make_classes(tmp_path, {"b": 2, "a": 1})
    (root / "a" / "notes.txt").write_text("x")
    (root / "a" / ".hidden.png").write_bytes(b"")
    (root / "a" / "UPPER.JPG").write_bytes(b"")
    (root / ".git").mkdir()
    classes, samples = scan_image_folder(root)
    assert classes == ["a", "b"]
    assert [(p.relative_to(root).as_posix(), label) for p, label in samples] == [
        ("a/000.png", 0),
        ("a/UPPER.JPG", 0),
        ("b/000.png", 1),
        ("b/001.png", 1),
    ]


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "does not exist"),
        ({"a": 1}, "needs at least 2 classes"),
        ({"a": 1, "b": 0}, r"class folder .*b has no images"),
        ("files only", "has no class sub-folders"),
    ],
)
def test_bad_folders_raise_one_line_data_errors(tmp_path: Path, layout: object, message: str) -> None:
    root = tmp_path / "data"
    if layout == "files only":
        _save(root / "x.png", Image.new("RGB", (4, 4)))
    elif layout:
        _make_classes(root, layout)
    for call in (lambda: scan_image_folder(root), lambda: load_image_folder(root, size=8, progress=False)):
        with pytest.raises(DataError, match=message) as info:
            call()
        assert str(root) in str(info.value) and "\n" not in str(info.value)


def _folder_with_bad_files(tmp_path: Path) -> Path:
    root = _make_classes(tmp_path / "data", {"a": 4, "b": 4})
    good = root / "a" / "000.png"
    truncated = root / "a" / "corrupt.jpg"
    _save(truncated, Image.effect_noise((64, 64), 50).convert("RGB"), quality=90)
    truncated.write_bytes(truncated.read_bytes()[: good.stat().st_size // 2 + 200])
    (root / "b" / "text.jpg").write_text("just text with an image name")
    (root / "b" / "readme.txt").write_text("not an image")
    return root


def test_unreadable_files_are_skipped_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _folder_with_bad_files(tmp_path)
    with caplog.at_level(logging.WARNING, logger="resnetkit.data.folder"):
        train, val = load_image_folder(root, size=8, val_fraction=0.25, progress=False)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "skipped 2 unreadable file(s)" in message and "a/corrupt.jpg" in message and "b/text.jpg" in message
    assert "not images: b/readme.txt" in message
    assert len(train) + len(val) == 8
    assert sorted(s.split(":")[0] for s in train.info["skipped"]) == ["a/corrupt.jpg", "b/text.jpg"]
    assert train.info["not_images"] == ["b/readme.txt"]


def test_strict_mode_raises_on_the_first_unreadable_file(tmp_path: Path) -> None:
    root = _folder_with_bad_files(tmp_path)
    with pytest.raises(DataError, match=r"cannot read image .*a/corrupt\.jpg.*strict"):
        load_image_folder(root, size=8, strict=True, progress=False)


def test_a_class_left_without_readable_images_is_an_error(tmp_path: Path) -> None:
    root = _make_classes(tmp_path, {"a": 2, "b": 0})
    (root / "b" / "bad.png").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"class folder .*b has no readable images"):
        load_image_folder(root, size=8, progress=False)


@pytest.mark.parametrize("held_out", ["val", "valid", "validation", "test"])
def test_train_val_layout(tmp_path: Path, held_out: str) -> None:
    _make_classes(tmp_path / "train", {"a": 3, "b": 2})
    _make_classes(tmp_path / held_out, {"a": 1, "b": 2})
    train, val = load_image_folder(tmp_path, size=8, progress=False)
    assert (len(train), len(val)) == (5, 3) and train.classes == val.classes == ["a", "b"]
    assert train.info["split"] == "train" and val.info["split"] == "val" and val.info["folder"] == held_out
    assert val.info["class_counts"] == {"a": 1, "b": 2} and val.info["storage_size"] == 8
    assert val.info["files"] == [f"{held_out}/a/000.png", f"{held_out}/b/000.png", f"{held_out}/b/001.png"]
    _assert_labels_match_pixels(train.images, train.labels)
    _assert_labels_match_pixels(val.images, val.labels)


def test_train_val_layout_with_different_classes_names_the_difference(tmp_path: Path) -> None:
    _make_classes(tmp_path / "train", {"a": 1, "b": 1, "c": 1})
    _make_classes(tmp_path / "val", {"a": 1, "b": 1})
    (tmp_path / "val" / "d").mkdir()
    _save(tmp_path / "val" / "d" / "x.png", Image.new("RGB", (4, 4)))
    with pytest.raises(DataError, match=r"classes differ .*only in train: \['c'\]; only in val: \['d'\]"):
        load_image_folder(tmp_path, size=8, progress=False)


def test_held_out_split_is_stratified_seeded_disjoint_and_recorded(tmp_path: Path) -> None:
    root = _make_classes(tmp_path, {"a": 20, "b": 10, "c": 2})
    train, val = load_image_folder(root, size=8, val_fraction=0.2, seed=3, progress=False)
    assert val.info["class_counts"] == {"a": 4, "b": 2, "c": 1}
    assert train.info["class_counts"] == {"a": 16, "b": 8, "c": 1}
    assert set(train.info["files"]).isdisjoint(val.info["files"]) and len(train.info["files"]) == 25
    assert val.info["held_out"] == val.info["files"] == train.info["held_out"]
    assert all(f.split("/")[0] == val.classes[label] for f, label in zip(val.info["files"], val.labels, strict=True))
    assert (val.info["val_seed"], val.info["val_fraction"]) == (3, 0.2)
    _assert_labels_match_pixels(train.images, train.labels)
    again = load_image_folder(root, size=8, val_fraction=0.2, seed=3, progress=False)[1]
    other = load_image_folder(root, size=8, val_fraction=0.2, seed=4, progress=False)[1]
    assert again.info["held_out"] == val.info["held_out"] != other.info["held_out"]
    assert torch.equal(again.images, val.images)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_held_out_fraction_must_be_a_proper_fraction(tmp_path: Path, fraction: float) -> None:
    root = _make_classes(tmp_path, {"a": 2, "b": 2})
    with pytest.raises(DataError, match="val_fraction"):
        load_image_folder(root, size=8, val_fraction=fraction, progress=False)


def test_held_out_split_needs_two_images_per_class(tmp_path: Path) -> None:
    root = _make_classes(tmp_path, {"a": 3, "b": 1})
    with pytest.raises(DataError, match="class 'b' has 1 image"):
        load_image_folder(root, size=8, progress=False)


# ---------------------------------------------------------------------------------------------------------
# One part of a folder, for evaluation (issue 13)


def _part(root: Path, split: str, trained_on: bool) -> ImageTensorDataset:
    return load_image_folder_split(root, split, size=8, trained_on=trained_on, val_fraction=0.25, progress=False)


def test_class_folders_a_model_was_not_trained_on_are_scored_whole(tmp_path: Path) -> None:
    root = _make_classes(tmp_path, {"a": 4, "b": 3})
    every = [f"a/{i:03d}.png" for i in range(4)] + [f"b/{i:03d}.png" for i in range(3)]
    for split in ("test", "val", "all"):
        part = _part(root, split, trained_on=False)
        assert part.info["files"] == every and part.info["split"] == "all" and len(part) == 7
        _assert_labels_match_pixels(part.images, part.labels)
    with pytest.raises(DataError, match=r"has class sub-folders only .* no training part; split 'all'") as info:
        _part(root, "train", trained_on=False)
    assert str(root) in str(info.value)


def test_class_folders_a_model_was_trained_on_keep_their_held_out_split(tmp_path: Path) -> None:
    root = _make_classes(tmp_path, {"a": 4, "b": 4})
    train, val = load_image_folder(root, size=8, val_fraction=0.25, progress=False)
    for split in ("test", "val"):
        part = _part(root, split, trained_on=True)
        assert part.info["files"] == val.info["held_out"] and part.info["split"] == "val" and len(part) == 2
    assert _part(root, "train", trained_on=True).info["files"] == train.info["files"]
    assert len(_part(root, "all", trained_on=True)) == 8


@pytest.mark.parametrize("trained_on", [True, False])
def test_a_train_val_folder_gives_the_part_asked_for(tmp_path: Path, trained_on: bool) -> None:
    _make_classes(tmp_path / "train", {"a": 3, "b": 2})
    _make_classes(tmp_path / "val", {"a": 1, "b": 2})
    (tmp_path / "val" / "a" / "notes.txt").write_text("x")
    val = _part(tmp_path, "test", trained_on)
    assert val.info["files"] == ["val/a/000.png", "val/b/000.png", "val/b/001.png"] and val.info["folder"] == "val"
    assert _part(tmp_path, "train", trained_on).info["files"][0] == "train/a/000.png"
    every = _part(tmp_path, "all", trained_on)
    assert len(every) == 8 and every.info["split"] == "all" and every.info["parts"] == ["train", "val"]
    assert every.info["files"][:3] == ["train/a/000.png", "train/a/001.png", "train/a/002.png"]
    assert every.info["files"][-3:] == val.info["files"] and every.info["not_images"] == ["val/a/notes.txt"]
    assert every.info["class_counts"] == {"a": 4, "b": 4}
    _assert_labels_match_pixels(every.images, every.labels)


def test_folder_split_errors(tmp_path: Path) -> None:
    root = _make_classes(tmp_path / "data", {"a": 2, "b": 2})
    with pytest.raises(DataError, match=r"unknown split 'tset' for an image folder; choose from train, val, test, all"):
        _part(root, "tset", trained_on=False)
    (tmp_path / "file.png").write_bytes(b"x")
    for call in (lambda: _part(tmp_path / "file.png", "all", False), lambda: scan_image_folder(tmp_path / "file.png")):
        with pytest.raises(DataError, match=r"^image folder .*file\.png is not a folder$"):
            call()


# ---------------------------------------------------------------------------------------------------------
# Cache


def _refuse_to_decode(path: object, **how: object) -> torch.Tensor:
    raise AssertionError("decoded although the cache was valid")


def test_cache_round_trips_and_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _make_classes(tmp_path / "data", {"a": 5, "b": 5})
    cache = tmp_path / "cache"
    first = load_image_folder(root, size=8, cache_dir=cache, progress=False)
    [cache_file] = cache.iterdir()
    assert cache_file.name.startswith("folder-") and cache_file.suffix == ".pt"
    monkeypatch.setattr(folder, "read_image", _refuse_to_decode)
    second = load_image_folder(root, size=8, cache_dir=cache, progress=False)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.info == b.info
    with pytest.raises(AssertionError, match="decoded although"):  # another size is another cache entry
        load_image_folder(root, size=6, cache_dir=cache, progress=False)


def test_cache_is_invalidated_by_a_changed_file(tmp_path: Path) -> None:
    root = _make_classes(tmp_path / "data", {"a": 2, "b": 2})
    cache = tmp_path / "cache"
    load_image_folder(root, size=8, cache_dir=cache, progress=False)
    _save(root / "a" / "000.png", Image.new("RGB", (50, 50), BLUE))
    train, val = load_image_folder(root, size=8, cache_dir=cache, progress=False)
    assert len(list(cache.iterdir())) == 2
    assert any(_pixel(img) == BLUE for img in torch.cat([train.images, val.images]))


def test_corrupt_cache_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _make_classes(tmp_path / "data", {"a": 3, "b": 3})
    cache = tmp_path / "cache"
    first = load_image_folder(root, size=8, cache_dir=cache, progress=False)
    [cache_file] = cache.iterdir()
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="resnetkit.data.folder"):
        rebuilt = load_image_folder(root, size=8, cache_dir=cache, progress=False)
    assert "ignoring unreadable cache" in caplog.text
    assert torch.equal(first[0].images, rebuilt[0].images)
    assert [p.name for p in cache.iterdir()] == [cache_file.name]  # rewritten, no temporary files left
    assert torch.load(cache_file, weights_only=True)["images"].shape == (6, 3, 8, 8)


def test_strict_mode_also_applies_to_a_cache_with_skipped_files(tmp_path: Path) -> None:
    root = _folder_with_bad_files(tmp_path)
    cache = tmp_path / "cache"
    load_image_folder(root, size=8, cache_dir=cache, progress=False)
    with pytest.raises(DataError, match="strict"):
        load_image_folder(root, size=8, cache_dir=cache, strict=True, progress=False)


# ---------------------------------------------------------------------------------------------------------
# list_image_files


def test_list_image_files_expands_folders_recursively(tmp_path: Path) -> None:
    root = _make_classes(tmp_path / "imgs", {"b": 2, "a": 1})
    (root / "a" / "deeper").mkdir()
    _save(root / "a" / "deeper" / "x.JPEG", Image.new("RGB", (4, 4)))
    (root / "a" / "notes.txt").write_text("x")
    (root / ".cache").mkdir()
    _save(root / ".cache" / "y.png", Image.new("RGB", (4, 4)))
    single = _save(tmp_path / "single.webp", Image.new("RGB", (4, 4)))
    found = list_image_files([str(single), root, single])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "single.webp",
        "imgs/a/000.png",
        "imgs/a/deeper/x.JPEG",
        "imgs/b/000.png",
        "imgs/b/001.png",
    ]


def test_list_image_files_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.png does not exist"):
        list_image_files([tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files found in .*empty"):
        list_image_files([tmp_path / "empty"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="notes.txt is not an image file"):
        list_image_files([tmp_path / "notes.txt"])


# ---------------------------------------------------------------------------------------------------------
# Real data


def test_cats_vs_dogs_loads_with_its_train_val_split() -> None:
    root = shared_data("cats_vs_dogs")
    train, val = load_image_folder(root, size=32, progress=False, strict=True)  # draft mode: see the 2000x1500 test
    assert train.classes == val.classes == ["cat", "dog"]
    assert train.images.shape == (2000, 3, 32, 32) and val.images.shape == (1000, 3, 32, 32)
    assert train.info["class_counts"] == {"cat": 1000, "dog": 1000}
    assert val.info["class_counts"] == {"cat": 500, "dog": 500}
    assert torch.bincount(val.labels).tolist() == [500, 500] and train.info["skipped"] == []
    assert 60 < train.images.float().mean() < 200  # real photographs, not blank tensors
