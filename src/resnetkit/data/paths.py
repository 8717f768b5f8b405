"""The one check that a data folder given by the user is there, shared by the image-folder and CIFAR readers."""

from __future__ import annotations

import os
from pathlib import Path

from resnetkit.errors import DataError


def require_folder(path: str | os.PathLike[str], what: str, *, missing_ok: bool = False, hint: str = "") -> Path:
    """`path` as a Path once it is a folder (or, with `missing_ok`, nothing yet: a download will create it).

    Otherwise DataError "<what> <path> does not exist<hint>" or "<what> <path> is not a folder"."""
    path = Path(path)
    if path.is_dir() or (missing_ok and not path.exists()):
        return path
    problem = "is not a folder" if path.exists() else f"does not exist{hint}"
    raise DataError(f"{what} {path} {problem}")
