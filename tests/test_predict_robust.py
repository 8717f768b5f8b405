"""`predict` and `explain` on a folder of odd images (issue 13): every decodable file is predicted, each unreadable
one is reported (a warning line, an error record, exit code 3) and --strict stops at the first one (exit 2)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetkit.cli.exit_codes import EXIT_SOME_FILES_FAILED, EXIT_USER_ERROR
from resnetkit.cli.main import main
from resnetkit.data.images import read_image
from resnetkit.workflows.inference import predict_files

from conftest import shared_data

WEIGHTS = "resnet20.rk_cifar10"  # shipped inside the package: a real trained model, no network
BAD = ("notes.jpg", "truncated.jpg")
ORIENTATION = 0x0112  # the EXIF tag

pytestmark = pytest.mark.usefixtures("one_thread")


def _halves(left: tuple[int, int, int], right: tuple[int, int, int], size: tuple[int, int] = (60, 40)) -> Image.Image:
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[:, : size[0] // 2], pixels[:, size[0] // 2 :] = left, right
    return Image.fromarray(pixels)


def _save_rotated(path: Path, orientation: int) -> Path:
    """Red left half, blue right half as stored, with an EXIF orientation that says how to show it."""
    image = _halves((255, 0, 0), (0, 0, 255))
    exif = image.getexif()
    exif[ORIENTATION] = orientation
    image.save(path, exif=exif, quality=95)
    return path


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder with every kind of image a user's photo folder holds, and the two kinds of broken file."""
    folder = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    rgba = np.array(photo.convert("RGBA"))
    rgba[:, :32, 3] = 0  # the left half transparent
    Image.fromarray(rgba).save(folder / "rgba.png")
    photo.convert("P").save(folder / "palette.png", transparency=0)
    Image.fromarray(rng.integers(0, 65536, (48, 64)).astype(np.uint16)).save(folder / "grey16.png")
    _save_rotated(folder / "rotated.jpg", 6)
    photo.resize((4000, 3000), Image.Resampling.BILINEAR).save(folder / "huge.jpg", quality=85)
    Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(folder / "tiny.png")
    (folder / "notes.jpg").write_text("a text file with an image's name")
    real = sorted((shared_data("cats_vs_dogs") / "val" / "cat").glob("*.jpg"))[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(real[: len(real) // 2])  # an interrupted download
    return folder


def _header(path: Path) -> tuple[str, tuple[int, int], int | None]:
    with Image.open(path) as im:
        return im.mode, im.size, im.getexif().get(ORIENTATION)


def test_the_odd_folder_holds_what_it_claims(odd: Path) -> None:
    headers = {f.name: _header(f) for f in odd.iterdir() if f.name != "notes.jpg"}
    assert {name: mode for name, (mode, _, _) in headers.items()} == {
        "cmyk.jpg": "CMYK",
        "rgba.png": "RGBA",
        "palette.png": "P",
        "grey16.png": "I;16",
        "rotated.jpg": "RGB",
        "huge.jpg": "RGB",
        "tiny.png": "RGB",
        "truncated.jpg": "RGB",
    }
    assert headers["huge.jpg"][1] == (4000, 3000) and headers["tiny.png"][1] == (5, 4)
    assert headers["rotated.jpg"][2] == 6
    # the truncated file's header is intact: Pillow opens it and fails only when the pixels are decoded
    with Image.open(odd / "truncated.jpg") as im, pytest.raises(OSError, match="truncated"):
        im.load()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["-q", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _warnings(err: str) -> list[str]:
    lines = err.strip().splitlines()
    assert all(line.startswith("resnetkit: warning: ") for line in lines), err
    return lines


def test_predict_reports_unreadable_files_and_predicts_every_other(odd: Path, capsys) -> None:
    code, out, err = cli(capsys, "predict", "--checkpoint", WEIGHTS, str(odd), "--topk", "3", "--json")
    assert code == EXIT_SOME_FILES_FAILED == 3
    records = json.loads(out)
    assert [r["path"] for r in records] == [str(f) for f in sorted(odd.iterdir())]  # file order, nothing dropped
    failed = {Path(r["path"]).name: r["error"] for r in records if "error" in r}
    assert sorted(failed) == list(BAD)
    for name, error in failed.items():
        assert error.startswith(f"cannot read image {odd / name}: ") and "\n" not in error
    assert "truncated" in failed["truncated.jpg"]
    assert _warnings(err) == [f"resnetkit: warning: {failed[name]}" for name in BAD]
    for r in records:
        if "error" not in r:
            probs = [t["prob"] for t in r["top"]]
            assert len(probs) == 3 and all(math.isfinite(p) and 0 < p <= 1 for p in probs)
            assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5

    code, out, err = cli(capsys, "predict", "--checkpoint", WEIGHTS, str(odd), "--topk", "1")
    assert code == 3 and len(_warnings(err)) == 2
    lines = out.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == [r["path"] for r in records if "top" in r]


def test_each_prediction_belongs_to_its_file(odd: Path) -> None:
    """Failed files in the middle of a batch do not shift the predictions of the ones after them."""
    together = predict_files(WEIGHTS, [odd], topk=2, batch_size=3)
    for r in together:
        alone = predict_files(WEIGHTS, [r["path"]], topk=2)[0]
        assert r.keys() == alone.keys()
        if "top" in r:
            assert [t["class"] for t in r["top"]] == [t["class"] for t in alone["top"]]
            assert [t["prob"] for t in r["top"]] == pytest.approx([t["prob"] for t in alone["top"]], abs=1e-5)


def test_predict_strict_stops_at_the_first_unreadable_file(odd: Path, capsys) -> None:
    code, out, err = cli(capsys, "predict", "--checkpoint", WEIGHTS, str(odd), "--strict", "--json")
    assert code == EXIT_USER_ERROR == 2 and out == ""
    assert (
        err == f"resnetkit: error: cannot read image {odd / 'notes.jpg'}: not an image, or in a format Pillow "
        "cannot identify\n"
    )


def test_predict_exit_codes_when_all_or_none_of_the_files_fail(odd: Path, capsys) -> None:
    good = [str(f) for f in sorted(odd.iterdir()) if f.name not in BAD]
    code, out, err = cli(capsys, "predict", "--checkpoint", WEIGHTS, *good, "--json")
    assert code == 0 and err == "" and len(json.loads(out)) == len(good) == 7
    code, out, err = cli(capsys, "predict", "--checkpoint", WEIGHTS, *(str(odd / b) for b in BAD), "--json")
    assert code == 3 and [set(r) for r in json.loads(out)] == [{"path", "error"}] * 2 and len(_warnings(err)) == 2


@pytest.mark.parametrize(
    ("orientation", "top", "bottom"), [(6, (255, 0, 0), (0, 0, 255)), (8, (0, 0, 255), (255, 0, 0))]
)
def test_exif_orientation_is_applied_as_the_user_sees_the_photo(tmp_path: Path, orientation, top, bottom) -> None:
    # 6: shown turned 90 degrees clockwise, so the stored left half is on top; 8: counter-clockwise
    image = read_image(_save_rotated(tmp_path / "r.jpg", orientation), size=32).permute(1, 2, 0).int()
    for rows, colour in ((slice(2, 12), top), (slice(20, 30), bottom)):
        assert (image[rows] - torch.tensor(colour)).abs().max() <= 8, (orientation, colour)


def test_explain_reports_unusable_files_and_explains_every_other(odd: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cams"
    code, stdout, err = cli(capsys, "explain", "--checkpoint", WEIGHTS, str(odd), "--out", str(out), "--json")
    assert code == 3
    records = json.loads(stdout)
    assert [r["path"] for r in records] == [str(f) for f in sorted(odd.iterdir())]
    failed = {Path(r["path"]).name: r["error"] for r in records if "error" in r}
    # unreadable, plus the two explain refuses: a greyscale image for an RGB model, one under half the input size
    assert sorted(failed) == ["grey16.png", "notes.jpg", "tiny.png", "truncated.jpg"]
    assert "is a greyscale image (mode I;16)" in failed["grey16.png"] and "is 5x4;" in failed["tiny.png"]
    assert _warnings(err) == [f"resnetkit: warning: {failed[n]}" for n in sorted(failed)]
    explained = sorted(Path(r["out"]).name for r in records if "out" in r)
    assert explained == ["cmyk-cam.png", "huge-cam.png", "palette-cam.png", "rgba-cam.png", "rotated-cam.png"]
    assert sorted(p.name for p in out.iterdir()) == explained

    code, stdout, err = cli(
        capsys, "explain", "--checkpoint", WEIGHTS, str(odd), "--out", str(tmp_path / "s"), "--strict"
    )
    assert code == 2 and stdout == "" and not (tmp_path / "s").exists()
    assert err.startswith(f"resnetkit: error: {odd / 'grey16.png'} is a greyscale image") and err.count("\n") == 1
