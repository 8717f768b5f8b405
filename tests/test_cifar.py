"""CIFAR readers on the real CIFAR-10 release (../shared/data), a python-format copy of it, CIFAR-100 records
built here, the embedded sample, the paper's 45k/5k split, and every refusal."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from resnetkit.constants import CIFAR10_MEAN
from resnetkit.data.cifar import load_cifar, load_sample, paper_split
from resnetkit.data.datasets import ImageTensorDataset
from resnetkit.errors import DataError

from conftest import REPO, shared_data

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
RECORD = 3073
SAMPLE = REPO / "src" / "resnetkit" / "data" / "sample"


@pytest.fixture(scope="module")
def cifar_bin() -> Path:
    return shared_data("cifar-10-batches-bin")


@pytest.fixture(scope="module")
def train_set(cifar_bin: Path) -> ImageTensorDataset:
    return load_cifar(cifar_bin, "cifar10", "train")


@pytest.fixture(scope="module")
def test_set(cifar_bin: Path) -> ImageTensorDataset:
    return load_cifar(cifar_bin, "cifar10", "test")


def _records(path: Path) -> np.ndarray:
    return np.frombuffer(path.read_bytes(), dtype=np.uint8).reshape(-1, RECORD)


def test_binary_release_counts_classes_and_channel_means(train_set: ImageTensorDataset, test_set) -> None:
    assert train_set.images.shape == (50_000, 3, 32, 32) and test_set.images.shape == (10_000, 3, 32, 32)
    assert train_set.labels.bincount().tolist() == [5000] * 10
    assert test_set.labels.bincount().tolist() == [1000] * 10
    assert train_set.classes == CLASSES and test_set.classes == CLASSES
    means = (train_set.images.double() / 255).mean(dim=(0, 2, 3))
    torch.testing.assert_close(means, torch.tensor(CIFAR10_MEAN, dtype=torch.float64), atol=1e-4, rtol=0)
    assert train_set.info["format"] == "binary" and train_set.info["split"] == "train"
    assert train_set.info["files"] == [f"data_batch_{i}.bin" for i in range(1, 6)]


def test_records_are_planes_in_row_major_order(cifar_bin: Path, test_set: ImageTensorDataset) -> None:
    first = _records(cifar_bin / "test_batch.bin")[0]
    assert test_set.labels[0] == first[0]
    assert test_set.images[0, 0, 0, 1] == first[1 + 1]  # red plane, row 0, column 1
    assert test_set.images[0, 1, 2, 0] == first[1 + 1024 + 2 * 32]  # green plane, row 2, column 0
    assert test_set.images[0, 2, 31, 31] == first[-1]  # blue plane, last pixel


def test_parent_folder_finds_the_release_folder(cifar_bin: Path, test_set: ImageTensorDataset) -> None:
    from_parent = load_cifar(cifar_bin.parent, "cifar10", "test")
    assert torch.equal(from_parent.images, test_set.images) and torch.equal(from_parent.labels, test_set.labels)


def _write_python_release(cifar_bin: Path, folder: Path) -> None:
    """The official cifar-10-batches-py layout (protocol-2 pickles of bytes-keyed dicts) from the binary files."""
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        records = _records(cifar_bin / f"{name}.bin")
        batch = {
            b"batch_label": name.encode(),
            b"labels": records[:, 0].astype(int).tolist(),
            b"data": np.ascontiguousarray(records[:, 1:]),
            b"filenames": [f"{i}.png".encode() for i in range(len(records))],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": 10000, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def test_python_release_gives_identical_tensors(cifar_bin: Path, train_set, test_set, tmp_path: Path) -> None:
    _write_python_release(cifar_bin, tmp_path / "cifar-10-batches-py")
    for split, want in (("train", train_set), ("test", test_set)):
        got = load_cifar(tmp_path, "cifar10", split)
        assert got.info["format"] == "python"
        assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels)
        assert got.classes == CLASSES


def test_pickle_with_code_payload_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CLASSES]}, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match=r"refusing to load .*test_batch: it pickles \w+\.system") as info:
        load_cifar(tmp_path, "cifar10", "test")
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_cifar100_binary_uses_fine_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    fine = np.array([0, 5, 99, 42, 7], dtype=np.uint8)
    coarse = np.array([3, 19, 0, 11, 2], dtype=np.uint8)
    pixels = rng.integers(0, 256, size=(5, 3072), dtype=np.uint8)
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    (folder / "train.bin").write_bytes(np.column_stack([coarse, fine, pixels]).tobytes())
    names = [f"class_{i}" for i in range(100)]
    (folder / "fine_label_names.txt").write_text("\n".join(names) + "\n")
    (folder / "coarse_label_names.txt").write_text("\n".join(f"super_{i}" for i in range(20)) + "\n")
    data = load_cifar(folder, "cifar100", "train")
    assert data.labels.tolist() == fine.tolist()
    assert torch.equal(data.images, torch.from_numpy(pixels.reshape(5, 3, 32, 32)))
    assert data.classes == names and data.num_classes == 100


def _first_per_class(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    return torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(10)]).sort().values


@pytest.mark.parametrize(("split", "per_class"), [("train", 200), ("test", 50)])
def test_embedded_sample_is_the_first_records_of_each_class(split: str, per_class: int, request) -> None:
    sample = load_sample(split)
    assert len(sample) == 10 * per_class and sample.labels.bincount().tolist() == [per_class] * 10
    assert sample.classes == CLASSES
    full = request.getfixturevalue(f"{split}_set")
    chosen = _first_per_class(full.labels, per_class)
    assert torch.equal(sample.images, full.images[chosen]) and torch.equal(sample.labels, full.labels[chosen])


def test_embedded_sample_is_small_and_documented() -> None:
    files = [p for p in SAMPLE.iterdir() if p.name != "SOURCE.md"]
    assert sum(p.stat().st_size for p in files) < 8 * 1024 * 1024
    source = (SAMPLE / "SOURCE.md").read_text()
    assert "Krizhevsky" in source and "scripts/make_cifar_sample.py" in source
    for path in files:  # SOURCE.md states the sha256 of exactly the files shipped
        listed = re.search(rf"`{re.escape(path.name)}` \| [\d,]+ \| `([0-9a-f]{{64}})`", source)
        assert listed is not None and listed.group(1) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_paper_split_sizes_and_classes(train_set: ImageTensorDataset) -> None:
    fit, val = paper_split(train_set)
    assert (len(fit), len(val)) == (45_000, 5_000)
    assert fit.classes == val.classes == CLASSES
    assert fit.info["paper_split"] == {"seed": 0, "val_size": 5000, "train_size": 45000, "part": "train"}
    assert val.info["paper_split"]["part"] == "val" and val.info["source"] == train_set.info["source"]


def _indexed(n: int) -> ImageTensorDataset:
    """A dataset whose image i stores i in its two pixels, so a split can be traced back to indices."""
    index = torch.arange(n)
    images = torch.stack([index // 256, index % 256], dim=1).to(torch.uint8).view(n, 1, 1, 2)
    return ImageTensorDataset(images, torch.zeros(n, dtype=torch.int64), ["x"])


def _indices(data: ImageTensorDataset) -> list[int]:
    pixels = data.images.view(len(data), 2).long()
    return (pixels[:, 0] * 256 + pixels[:, 1]).tolist()


def test_paper_split_is_disjoint_deterministic_and_seeded() -> None:
    data = _indexed(50_000)
    fit, val = paper_split(data)
    fit_idx, val_idx = _indices(fit), _indices(val)
    assert fit_idx == sorted(fit_idx) and val_idx == sorted(val_idx)  # file order is kept
    assert not set(fit_idx) & set(val_idx) and sorted(fit_idx + val_idx) == list(range(50_000))
    assert _indices(paper_split(data)[1]) == val_idx
    assert _indices(paper_split(data, seed=1)[1]) != val_idx
    with pytest.raises(DataError, match="validation size 50000 must be between 1 and 49999"):
        paper_split(data, val_size=50_000)


def test_missing_folder_and_files_say_how_to_download(cifar_bin: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cifar10 not found: .*nope does not exist; pass --download \(download=True\)"):
        load_cifar(tmp_path / "nope")
    with pytest.raises(DataError, match=r"holds neither train\.bin nor a cifar-100-binary folder; pass --download"):
        load_cifar(tmp_path, "cifar100")
    (tmp_path / "a_file").write_text("x")
    for download in (False, True):  # a download would have nowhere to go: refused before fetching anything
        with pytest.raises(DataError, match=r"^cifar10 not found: .*a_file is not a folder$"):
            load_cifar(tmp_path / "a_file", download=download, base_url="http://127.0.0.1:9/")
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("test_batch.bin", "batches.meta.txt"):
        (partial / name).symlink_to(cifar_bin / name)
    assert len(load_cifar(partial, split="test")) == 10_000
    with pytest.raises(DataError, match=r"files missing in .*partial: data_batch_1\.bin, .*data_batch_5\.bin; pass"):
        load_cifar(partial, split="train")


def test_bad_arguments_and_files_give_one_line_errors(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n")
    (folder / "test_batch.bin").write_bytes(b"\x00" * (RECORD + 5))
    cases = {
        "not a CIFAR binary file: 3078 bytes is not a multiple of 3073": dict(split="test"),
        "unknown dataset 'cifar1000'; choose from cifar10, cifar100": dict(name="cifar1000"),
        "unknown split 'val'; choose from train, test": dict(split="val"),
        "unknown format 'png'; choose from binary, python": dict(fmt="png"),
    }
    for message, kwargs in cases.items():
        with pytest.raises(DataError, match=re.escape(message)) as info:
            load_cifar(folder, **kwargs)
        assert "\n" not in str(info.value)
    (folder / "test_batch.bin").write_bytes(bytes([10]) + b"\x00" * 3072)
    with pytest.raises(DataError, match="labels 10..10 do not fit 10 classes"):
        load_cifar(folder, split="test")
