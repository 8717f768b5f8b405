"""Where resnetkit keeps its files and how it writes them: the cache folder and atomic writes (weights, data,
checkpoints all use these)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from resnetkit.constants import DEFAULT_HOME, ENV_HOME


def cache_dir() -> Path:
    """$RESNETKIT_HOME, else ~/.cache/resnetkit."""
    return Path(os.environ.get(ENV_HOME) or os.path.expanduser(DEFAULT_HOME))


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`: readers never see a
    half-written file, and an interrupted write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the suffix stays last: some writers check it (torch.export.save wants .pt2)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make the file private, unlike a plain open()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
