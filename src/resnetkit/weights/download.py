"""Fetch weights over HTTP(S) into a local cache, verified by sha256 before anything reads them."""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from pathlib import Path

from resnetkit.errors import WeightsError
from resnetkit.fetch import FetchError, fetch_url, file_digest
from resnetkit.files import cache_dir

log = logging.getLogger(__name__)

# torch.hub's convention: "resnet50-0676ba61.pth" carries the first hex digits of the file's sha256.
_HUB_HASH = re.compile(r"-([a-f0-9]{8,64})\.")


def hub_hash_prefix(url: str) -> str | None:
    """The sha256 prefix that torch.hub's naming puts in a file name ("resnet50-0676ba61.pth" -> "0676ba61"), or
    None when the name carries none. Takes a URL, a path or a bare file name."""
    match = _HUB_HASH.search(os.path.basename(urllib.parse.urlparse(url).path))
    return match.group(1) if match else None


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a file (what `download_url` checks against)."""
    return file_digest(path, "sha256")


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
    prefix = hub_hash_prefix(_file_name(url))
    if prefix is None:
        raise WeightsError(f"no sha256 given for {url}: pass weights_sha256=... or append #sha256=<64 hex digits>")
    return prefix


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
    # Downloaded under another name and renamed only once verified: a bad file never sits at `target`.
    unverified = target.with_name(target.name + ".unverified")
    try:
        fetch_url(url.split("#", 1)[0], unverified, progress=progress)
    except FetchError as e:
        raise WeightsError(f"cannot download {url} ({e.reason}); offline, put the file at {target}") from None
    got = sha256_file(unverified)
    if not got.startswith(want):
        unverified.unlink(missing_ok=True)
        raise WeightsError(f"sha256 mismatch for {url}: expected {want}, got {got}; the file was discarded")
    os.replace(unverified, target)
    return target
