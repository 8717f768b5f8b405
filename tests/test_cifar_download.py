"""CIFAR downloads from a server on 127.0.0.1 started by the test (never the internet): verified by md5,
extracted safely, then read; a wrong checksum, an unsafe archive member or a missing file is refused."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from resnetkit.data import cifar
from resnetkit.data.cifar import load_cifar
from resnetkit.errors import DataError
from resnetkit.fetch import FetchError, fetch_url, file_digest

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ARCHIVE = "cifar-10-binary.tar.gz"
OFFICIAL_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"


def _records(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.uint8) % 10
    return np.column_stack([labels, rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)]).tobytes()


def _release_files() -> dict[str, bytes]:
    """A miniature cifar-10-batches-bin: 20 records per batch file instead of 10,000."""
    files = {f"data_batch_{i}.bin": _records(20, seed=i) for i in range(1, 6)}
    return {**files, "test_batch.bin": _records(20, seed=0), "batches.meta.txt": ("\n".join(CLASSES) + "\n").encode()}


def _write_archive(path: Path, extra: tarfile.TarInfo | None = None) -> str:
    """A tar.gz in the official layout (plus `extra`, if given); its md5."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in _release_files().items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size) if extra.isfile() else None)
    return hashlib.md5(path.read_bytes()).hexdigest()


def _expect_md5(monkeypatch: pytest.MonkeyPatch, md5: str) -> None:
    key = ("cifar10", "binary")
    monkeypatch.setitem(cifar.RELEASES, key, dataclasses.replace(cifar.RELEASES[key], md5=md5))


def test_download_verifies_extracts_and_reads(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, served = server
    _expect_md5(monkeypatch, _write_archive(served / ARCHIVE))
    root = tmp_path / "data"
    train = load_cifar(root, "cifar10", "train", download=True, progress=True, base_url=base)
    assert len(train) == 100 and train.classes == CLASSES
    files = _release_files()
    want = np.frombuffer(b"".join(files[f"data_batch_{i}.bin"] for i in range(1, 6)), np.uint8).reshape(-1, 3073)
    assert np.array_equal(train.images.numpy().reshape(100, -1), want[:, 1:])
    assert np.array_equal(train.labels.numpy(), want[:, 0])
    folder = root / "cifar-10-batches-bin"
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    assert not (root / ARCHIVE).exists()  # the downloaded archive is removed once extracted
    (served / ARCHIVE).unlink()  # from now on only the extracted files can answer
    assert len(load_cifar(root, "cifar10", "test")) == 20
    assert train.info["source"] == str(folder.resolve())


def test_env_var_url_and_a_root_named_after_the_release(server, tmp_path, monkeypatch) -> None:
    base, served = server
    _expect_md5(monkeypatch, _write_archive(served / ARCHIVE))
    monkeypatch.setenv(cifar.ENV_CIFAR_URL, base + "/")
    root = tmp_path / "data" / "cifar-10-batches-bin"  # the archive's own folder: extracted beside, not inside
    data = load_cifar(root, split="test", download=True, progress=False)
    assert len(data) == 20 and (root / "test_batch.bin").is_file()


def test_wrong_md5_is_refused_and_the_archive_deleted(server, tmp_path: Path) -> None:
    base, served = server
    _write_archive(served / ARCHIVE)  # not the official archive, so the official md5 cannot match
    root = tmp_path / "data"
    pattern = rf"md5 mismatch for .*{ARCHIVE}: expected {OFFICIAL_MD5}, got [0-9a-f]{{32}}; the file was deleted"
    with pytest.raises(DataError, match=pattern) as info:
        load_cifar(root, download=True, progress=False, base_url=base)
    assert "\n" not in str(info.value)
    assert list(root.iterdir()) == []  # no archive, no partial file, nothing extracted


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 4) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size if kind == tarfile.REGTYPE else 0
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "/etc/passwd"
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (_member("../evil.txt"), "would land outside the folder"),
        (_member("cifar-10-batches-bin/../../evil.txt"), "would land outside the folder"),
        (_member("/tmp/evil.txt"), "would land outside the folder"),
        (_member("cifar-10-batches-bin/link", tarfile.SYMTYPE), "is a link or special file"),
        (_member("cifar-10-batches-bin/hard", tarfile.LNKTYPE), "is a link or special file"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink"],
)
def test_unsafe_archive_member_is_refused_before_extracting(server, tmp_path, monkeypatch, member, why) -> None:
    base, served = server
    _expect_md5(monkeypatch, _write_archive(served / ARCHIVE, extra=member))
    root = tmp_path / "data" / "inner"
    with pytest.raises(DataError, match=rf"refusing to extract .*{ARCHIVE}: member '{member.name}' {why}"):
        load_cifar(root, download=True, progress=False, base_url=base)
    assert list(root.iterdir()) == []  # refused whole (not even the safe members), the download removed
    assert not list(tmp_path.rglob("evil.txt"))


def test_unreachable_file_says_where_to_put_it(server, tmp_path: Path) -> None:
    base, _ = server
    root = tmp_path / "data"
    with pytest.raises(DataError, match=rf"cannot download {base}/{ARCHIVE} \(.*\); offline, put {ARCHIVE} in "):
        load_cifar(root, download=True, progress=False, base_url=base)
    assert list(root.iterdir()) == []


def test_archive_placed_by_hand_is_used_offline_and_kept(server, tmp_path, monkeypatch) -> None:
    base, _ = server  # serves nothing: a download attempt would fail
    root = tmp_path / "data"
    root.mkdir()
    _expect_md5(monkeypatch, _write_archive(root / ARCHIVE))
    assert len(load_cifar(root, split="test", download=True, progress=False, base_url=base)) == 20
    assert (root / ARCHIVE).is_file()  # the user's copy is not deleted


def test_fetch_url_and_file_digest(server, tmp_path: Path) -> None:
    base, served = server
    (served / "blob").write_bytes(b"resnet" * 1000)
    dest = tmp_path / "blob"
    fetch_url(f"{base}/blob", dest, progress=True)
    assert dest.read_bytes() == b"resnet" * 1000
    assert file_digest(dest) == hashlib.sha256(b"resnet" * 1000).hexdigest()
    assert file_digest(dest, "md5") == hashlib.md5(b"resnet" * 1000).hexdigest()
    with pytest.raises(FetchError, match=rf"cannot download {base}/missing \(HTTP 404 .*\)$") as info:
        fetch_url(f"{base}/missing", tmp_path / "missing", progress=False)
    assert isinstance(info.value, OSError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob", "served"]  # no .partial left behind
