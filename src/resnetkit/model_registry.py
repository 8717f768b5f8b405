"""Name -> model builder table. Stdlib only: families register themselves on import (torchvision style).

It sits below every layer so that `models/` registers into it; everything above `models/` reaches it through the
`resnetkit.models` API (`get_model_entry`, `list_models`)."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resnetkit.errors import UnknownModelError


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture: how to build it and how to describe it."""

    name: str
    builder: Callable[..., Any]
    family: str
    description: str


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, builder: Callable[..., Any], *, family: str, description: str) -> None:
    """Add a builder under `name`; a second registration of the same name is a programming error."""
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = ModelEntry(name=name, builder=builder, family=family, description=description)


def list_model_names(pattern: str | None = None) -> list[str]:
    """Registered names in sorted order, optionally filtered by a shell-style wildcard pattern."""
    names = sorted(_MODELS, key=_natural_key)
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def get_model_entry(name: str) -> ModelEntry:
    """The entry for `name`, or an error that lists close matches."""
    try:
        return _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.5)
        hint = f"; did you mean: {', '.join(close)}" if close else "; run `resnetkit models` for the list"
        raise UnknownModelError(f"unknown model {name!r}{hint}") from None


def _natural_key(name: str) -> tuple[Any, ...]:
    """Sort resnet20 before resnet110 (numbers compared as numbers)."""
    import re

    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))
