"""CIFAR-10 and CIFAR-100 from the official binary or python releases, read into memory as uint8 tensors.

Reading never runs pickled code: the python release is unpickled with a whitelist of the numpy globals
an array needs. Downloads come from the official URLs (overridable for mirrors and tests), are checked
against the published md5 sums and extracted only if no member would land outside the target folder.
An embedded sample of real CIFAR-10 images (`load_sample`) lets the quickstart run offline.
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import tarfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from resnetkit.data.datasets import ImageTensorDataset
from resnetkit.data.paths import require_folder
from resnetkit.data.splits import seeded_split
from resnetkit.errors import DataError
from resnetkit.fetch import FetchError, fetch_url, file_digest

log = logging.getLogger(__name__)

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
ENV_CIFAR_URL = "RESNETKIT_CIFAR_URL"  # a mirror (or a test server) in place of CIFAR_URL
IMAGE_SHAPE = (3, 32, 32)  # each record stores the R, G and B planes, each 32x32 row-major
_PIXELS = 3 * 32 * 32
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


@dataclass(frozen=True)
class CifarRelease:
    """One official release: where it is downloaded from and which files it extracts to."""

    name: str  # "cifar10" or "cifar100"
    fmt: str  # "binary" or "python"
    folder: str  # the top-level folder inside the archive
    archive: str
    md5: str  # published at https://www.cs.toronto.edu/~kriz/cifar.html
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    num_classes: int


RELEASES: dict[tuple[str, str], CifarRelease] = {
    ("cifar10", "binary"): CifarRelease(
        name="cifar10",
        fmt="binary",
        folder="cifar-10-batches-bin",
        archive="cifar-10-binary.tar.gz",
        md5="c32a1d4ab5d03f1284b67883e8d87530",
        train=tuple(f"{b}.bin" for b in _TRAIN_BATCHES),
        test=("test_batch.bin",),
        meta="batches.meta.txt",
        num_classes=10,
    ),
    ("cifar10", "python"): CifarRelease(
        name="cifar10",
        fmt="python",
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train=_TRAIN_BATCHES,
        test=("test_batch",),
        meta="batches.meta",
        num_classes=10,
    ),
    ("cifar100", "binary"): CifarRelease(
        name="cifar100",
        fmt="binary",
        folder="cifar-100-binary",
        archive="cifar-100-binary.tar.gz",
        md5="03b5dce01913d631647c71ecec9e9cb8",
        train=("train.bin",),
        test=("test.bin",),
        meta="fine_label_names.txt",
        num_classes=100,
    ),
    ("cifar100", "python"): CifarRelease(
        name="cifar100",
        fmt="python",
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train=("train",),
        test=("test",),
        meta="meta",
        num_classes=100,
    ),
}
NAMES = ("cifar10", "cifar100")
FORMATS = ("binary", "python")  # binary first: it is preferred when both are present, and downloaded by default
SPLITS = ("train", "test")


def load_cifar(
    root: str | os.PathLike[str],
    name: str = "cifar10",
    split: str = "train",
    *,
    download: bool = False,
    progress: bool = True,
    fmt: str | None = None,
    base_url: str | None = None,
) -> ImageTensorDataset:
    """CIFAR-10 or CIFAR-100 (fine labels) `split` ("train" or "test") as uint8 (N, 3, 32, 32) images.

    `root` is the folder holding the files (e.g. `cifar-10-batches-bin`) or a folder above the extracted
    release folders. `fmt` ("binary" or "python") picks a release; by default whichever is present, binary
    first. With `download`, a missing release is fetched from `base_url` (else $RESNETKIT_CIFAR_URL, else
    the official site), md5-checked and extracted into `root` (or beside it, when `root` is named after the
    release folder).
    """
    _check_choice("dataset", name, NAMES)
    _check_choice("split", split, SPLITS)
    hint = f"; pass --download (download=True) to fetch it into {root}"
    root = require_folder(root, f"{name} not found:", missing_ok=download, hint=hint)
    folder, release = _locate(root, name, fmt)
    if folder is not None:
        missing = _missing_files(folder, release, split)
        if not missing:
            return _read_release(folder, release, split)
        if not download:
            raise DataError(
                f"{release.name} {release.fmt} files missing in {folder}: {', '.join(missing)}; "
                "pass --download (download=True) to fetch them"
            )
    elif not download:
        raise DataError(_not_found_message(root, release))
    folder = download_cifar(root, release, progress=progress, base_url=base_url)
    return _read_release(folder, release, split)


def paper_split(
    train: ImageTensorDataset, val_size: int = 5000, seed: int = 0
) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    """The 45k/5k train/validation split of He et al. 2015 (sec. 4.2) drawn from the CIFAR training set.

    A seeded random permutation picks `val_size` validation images; both parts keep file order. The
    seed and sizes go into each part's `info`, so a run folder records which images it held out.
    """
    n = len(train)
    if not 0 < val_size < n:
        raise DataError(f"validation size {val_size} must be between 1 and {n - 1} for {n} training images")
    val_idx, train_idx = seeded_split(n, val_size, seed)
    record = {"seed": seed, "val_size": val_size, "train_size": n - val_size}
    return (
        train.subset(train_idx, paper_split={**record, "part": "train"}),
        train.subset(val_idx, paper_split={**record, "part": "val"}),
    )


def load_sample(split: str = "train") -> ImageTensorDataset:
    """The CIFAR-10 sample shipped in the package: 200 (train) or 50 (test) real images per class.

    Enough to run the quickstart offline; see `data/sample/SOURCE.md` for which records it holds.
    """
    _check_choice("split", split, SPLITS)
    sample = resources.files("resnetkit.data").joinpath("sample")
    file_name = f"cifar10_sample_{split}.bin.gz"
    images, labels = parse_binary(gzip.decompress(sample.joinpath(file_name).read_bytes()), file_name)
    classes = _class_names_from_text(sample.joinpath("batches.meta.txt").read_text(), "batches.meta.txt", 10)
    info = {"dataset": "cifar10-sample", "source": f"resnetkit/data/sample/{file_name}", "split": split}
    return _dataset(images, labels, classes, {**info, "format": "binary"})


def parse_binary(raw: bytes, source: str, label_bytes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) and labels (N,) from the CIFAR binary record format.

    A record is `label_bytes` label bytes (CIFAR-100: coarse then fine; the last one is used) followed by
    the 3072 pixel bytes. The whole buffer is viewed at once with numpy rather than looped over.
    """
    record = label_bytes + _PIXELS
    if not raw or len(raw) % record:
        raise DataError(f"{source} is not a CIFAR binary file: {len(raw)} bytes is not a multiple of {record}")
    table = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    return table[:, label_bytes:].reshape(-1, *IMAGE_SHAPE), table[:, label_bytes - 1].astype(np.int64)


def download_cifar(
    root: str | os.PathLike[str], release: CifarRelease, *, progress: bool = True, base_url: str | None = None
) -> Path:
    """Fetch, md5-check and safely extract `release` into `root`; the folder holding its files.

    An archive already in `root` (copied by hand on an offline machine) is checked and used instead, and kept.
    """
    root = Path(root)
    dest = root.parent if root.name == release.folder else root
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / release.archive
    fetched = not archive.is_file()
    if fetched:
        _fetch_archive(release, archive, progress, base_url)
    try:
        _check_md5(archive, release.md5)
        safe_extract(archive, dest)
    finally:  # the extracted folder is the data; a downloaded archive beside it would only double the disk use
        if fetched:
            archive.unlink(missing_ok=True)
    folder = dest / release.folder
    if _missing_files(folder, release, "train") or _missing_files(folder, release, "test"):
        raise DataError(f"{archive} did not hold the {release.folder} folder of the official {release.archive}")
    return folder


def _check_md5(archive: Path, md5: str) -> None:
    got = file_digest(archive, "md5")
    if got != md5:
        archive.unlink(missing_ok=True)
        raise DataError(f"md5 mismatch for {archive}: expected {md5}, got {got}; the file was deleted")


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive, refusing it whole if any member is a link, a device, absolute or has '..'."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            tar.extractall(dest, members=members, **_tar_filter())
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"cannot extract {archive}: {e}") from None


def _tar_filter() -> dict[str, Any]:
    # Python >= 3.12 (and security backports) add tarfile's own "data" filter: a second line of defence.
    return {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or member.name.startswith(("/", "\\")) or "\\" in member.name:
        raise DataError(f"refusing to extract {archive}: member {member.name!r} would land outside the folder")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"refusing to extract {archive}: member {member.name!r} is a link or special file")


def _fetch_archive(release: CifarRelease, archive: Path, progress: bool, base_url: str | None) -> None:
    base = base_url or os.environ.get(ENV_CIFAR_URL) or CIFAR_URL
    url = base.rstrip("/") + "/" + release.archive
    log.info("downloading %s to %s", url, archive)
    try:
        fetch_url(url, archive, progress=progress)
    except FetchError as e:
        raise DataError(
            f"cannot download {url} ({e.reason}); offline, put {release.archive} in {archive.parent}"
        ) from None


def _locate(root: Path, name: str, fmt: str | None) -> tuple[Path | None, CifarRelease]:
    """The folder holding a release of `name` (binary preferred) and that release; (None, default) if none."""
    if fmt is not None:
        _check_choice("format", fmt, FORMATS)
    releases = [RELEASES[name, f] for f in FORMATS if fmt in (None, f)]
    for release in releases:
        for folder in (root / release.folder, root):  # the standard subfolder wins over stray files
            if any((folder / f).is_file() for f in (release.meta, *release.train, *release.test)):
                return folder, release
    return None, releases[0]


def _missing_files(folder: Path, release: CifarRelease, split: str) -> list[str]:
    files = release.train if split == "train" else release.test
    return [f for f in (*files, release.meta) if not (folder / f).is_file()]


def _not_found_message(root: Path, release: CifarRelease) -> str:
    where = f"holds neither {release.train[0]} nor a {release.folder} folder"
    return f"{release.name} not found: {root} {where}; pass --download (download=True) to fetch it into {root}"


def _read_release(folder: Path, release: CifarRelease, split: str) -> ImageTensorDataset:
    files = list(release.train if split == "train" else release.test)
    read = _read_binary_file if release.fmt == "binary" else _read_python_file
    parts = [read(folder / f, release) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    classes = _read_classes(folder / release.meta, release)
    info = {
        "dataset": release.name,
        "source": str(folder.resolve()),
        "split": split,
        "format": release.fmt,
        "files": files,
    }
    return _dataset(images, labels, classes, info)


def _dataset(images: np.ndarray, labels: np.ndarray, classes: list[str], info: dict[str, Any]) -> ImageTensorDataset:
    source = info["source"]
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(f"{source}: labels {labels.min()}..{labels.max()} do not fit {len(classes)} classes")
    # np.frombuffer views are read-only; torch needs writable memory, so copy those (and only those).
    images = np.require(images, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])
    labels = np.require(labels, np.int64, ["C_CONTIGUOUS", "WRITEABLE"])
    return ImageTensorDataset(torch.from_numpy(images), torch.from_numpy(labels), classes, info)


def _read_binary_file(path: Path, release: CifarRelease) -> tuple[np.ndarray, np.ndarray]:
    # CIFAR-100 binary records carry a coarse and a fine label byte; the fine one is the 100-class label.
    return parse_binary(path.read_bytes(), str(path), label_bytes=1 if release.name == "cifar10" else 2)


def _read_python_file(path: Path, release: CifarRelease) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path)
    data, labels = batch.get("data"), batch.get("labels", batch.get("fine_labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise DataError(f"{path} is not a CIFAR python batch: 'data' is not a uint8 N x {_PIXELS} array")
    if labels is None or len(labels) != len(data):
        raise DataError(f"{path} is not a CIFAR python batch: it has no label for every image")
    return data.reshape(-1, *IMAGE_SHAPE), np.asarray(labels, dtype=np.int64)


def _read_classes(path: Path, release: CifarRelease) -> list[str]:
    if release.fmt == "binary":
        return _class_names_from_text(path.read_text(), str(path), release.num_classes)
    meta = _load_pickle(path)
    names = meta.get("label_names", meta.get("fine_label_names"))
    if not isinstance(names, list):
        raise DataError(f"{path} is not a CIFAR meta file: it has no label names")
    return _check_class_count([_text(n) for n in names], str(path), release.num_classes)


def _class_names_from_text(text: str, source: str, num_classes: int) -> list[str]:
    return _check_class_count([line.strip() for line in text.splitlines() if line.strip()], source, num_classes)


def _check_class_count(names: list[str], source: str, num_classes: int) -> list[str]:
    if len(names) != num_classes:
        raise DataError(f"{source} lists {len(names)} class names, expected {num_classes}")
    return names


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DataError(f"unknown {what} {value!r}; choose from {', '.join(choices)}")


# --- the python release: pickles read without running code ---------------------------------------------------


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What `_codecs.encode` does in protocol-2 pickles written by Python 3 (bytes as latin-1 text), only that."""
    if encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# The globals an ndarray and its dtype need to be rebuilt (numpy 1 and 2 spell the module differently);
# the array's reduce function is looked up from numpy itself instead of importing a deprecated path.
_RECONSTRUCT = np.ndarray((0,), np.uint8).__reduce__()[0]
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _CifarUnpickler(pickle.Unpickler):
    """Resolves only the whitelisted numpy globals; anything else (os.system, builtins.eval ...) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def _load_pickle(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:  # the official files were written by Python 2: str there is bytes here
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except _RefusedGlobal as e:
        raise DataError(f"refusing to load {path}: it pickles {e}, which CIFAR data never needs") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{path} is not a CIFAR python pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR python pickle: it holds a {type(obj).__name__}, not a dict")
    return {_text(k): v for k, v in obj.items()}
