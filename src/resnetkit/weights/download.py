"""Fetch weights over HTTP(S) into a local cache, verified by sha256 before anything reads them."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from resnetkit.constants import DEFAULT_HOME, ENV_HOME
from resnetkit.errors import WeightsError

log = logging.getLogger(__name__)

# torch.hub's convention: "resnet50-0676ba61.pth" carries the first hex digits of the file's sha256.
_HUB_HASH = re.compile(r"-([a-f0-9]{8,64})\.")


def cache_dir() -> Path:
    """$RESNETKIT_HOME, else ~/.cache/resnetkit."""
    return Path(os.environ.get(ENV_HOME) or os.path.expanduser(DEFAULT_HOME))


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def expected_hash(url: str, sha256: str | None) -> str:
    """The full sha256 given by the caller or a `#sha256=` URL fragment, else torch.hub's file-name prefix."""
    fragment = urllib.parse.urlparse(url).fragment
    if sha256 is None and fragment.startswith("sha256="):
        sha256 = fragment[len("sha256=") :]
    if sha256 is not None:
        sha256 = sha256.lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise WeightsError(f"expected sha256 for {url} is not 64 hex digits: {sha256!r}")
        return sha256
    match = _HUB_HASH.search(_file_name(url))
    if match is None:
        raise WeightsError(f"no sha256 given for {url}: pass weights_sha256=... or append #sha256=<64 hex digits>")
    return match.group(1)


def _file_name(url: str) -> str:
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise WeightsError(f"URL has no file name: {url}")
    return name


def download_url(url: str, sha256: str | None = None, *, progress: bool = True, directory: Path | None = None) -> Path:
    """The verified local copy of `url`: reused from the cache when its hash matches, else downloaded anew."""
    want = expected_hash(url, sha256)
    target = (directory or cache_dir() / "weights") / _file_name(url)
    if target.is_file():
        if sha256_file(target).startswith(want):
            return target
        log.warning("cached %s does not match its sha256; downloading it again", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    _fetch(url.split("#", 1)[0], partial, progress)
    got = sha256_file(partial)
    if not got.startswith(want):
        partial.unlink(missing_ok=True)
        raise WeightsError(f"sha256 mismatch for {url}: expected {want}, got {got}; the file was discarded")
    os.replace(partial, target)
    return target


def _fetch(url: str, dest: Path, progress: bool) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, dest.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            _copy_with_progress(response, out, total, progress, dest.name.removesuffix(".partial"))
    except (urllib.error.URLError, OSError) as e:
        dest.unlink(missing_ok=True)
        final = dest.with_name(dest.name.removesuffix(".partial"))
        reason = getattr(e, "reason", e)
        raise WeightsError(f"cannot download {url} ({reason}); offline, put the file at {final}") from None


def _copy_with_progress(src, out, total: int | None, progress: bool, name: str) -> None:  # type: ignore[no-untyped-def]
    if not progress:
        shutil.copyfileobj(src, out, 1 << 20)
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False) as bar:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            out.write(chunk)
            bar.update(len(chunk))
