"""Download a URL to a file and hash files: the plumbing under verified weights and dataset downloads.

Failures raise `FetchError` (an `OSError`) rather than a `ResnetkitError`: the caller knows what was being
fetched and turns it into its own one-line message (a weights error, a data error).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 20
PARTIAL_SUFFIX = ".partial"


class FetchError(OSError):
    """A download that failed (unreachable host, HTTP error, timeout, disk full); `reason` says why."""

    def __init__(self, url: str, reason: object) -> None:
        super().__init__(f"cannot download {url} ({reason})")
        self.url = url
        self.reason = reason


def fetch_url(url: str, dest: Path, *, progress: bool = True, timeout: float = 60) -> None:
    """Download `url` to `dest`, via `dest.partial` so that an interrupted download never looks complete.

    An interrupted download keeps its partial file, and the next call resumes it with an HTTP Range request
    (a server that ignores Range sends the whole file again, which replaces it). Shows a tqdm bar (size, rate,
    ETA) when `progress`. Failures raise `FetchError`.
    """
    dest = Path(dest)
    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = have > 0 and response.status == 206
            length = int(response.headers.get("Content-Length") or 0)
            total = (have if resumed else 0) + length or None
            with partial.open("ab" if resumed else "wb") as out:
                copy_with_progress(
                    response, out, total, progress=progress, name=dest.name, initial=have if resumed else 0
                )
        got = partial.stat().st_size
        if total is not None and got != total:  # the connection closed early: keep the part for a resume
            raise FetchError(url, f"connection closed after {got} of {total} bytes; run again to resume")
        os.replace(partial, dest)
    except FetchError:
        raise
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the partial file does not fit the server's file: start over
            partial.unlink(missing_ok=True)
            return fetch_url(url, dest, progress=progress, timeout=timeout)
        raise FetchError(url, _reason(e)) from e
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:  # ValueError: bad URL
        raise FetchError(url, _reason(e)) from e


def _reason(error: Exception) -> object:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    return getattr(error, "reason", error)


def copy_with_progress(
    src: BinaryIO, out: BinaryIO, total: int | None, *, progress: bool, name: str, initial: int = 0
) -> None:
    """Copy `src` to `out` in 1 MiB chunks, with a byte-counting tqdm bar named `name` when `progress`."""
    if not progress:
        shutil.copyfileobj(src, out, _CHUNK)
        return
    from tqdm import tqdm

    with tqdm(
        total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False
    ) as bar:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            out.write(chunk)
            bar.update(len(chunk))


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read in chunks (`algorithm` is any `hashlib` name, e.g. "md5")."""
    # md5 only checks published archive sums here, never secrets; saying so keeps FIPS-mode Pythons working.
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
