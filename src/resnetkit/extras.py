"""Optional extras (`resnetkit[deploy]`, `resnetkit[serve]`): a command that needs a module from one says which
extra to install, in one line, instead of failing with an ImportError."""

from __future__ import annotations

import importlib
from types import ModuleType

from resnetkit.errors import ResnetkitError


def require_extra(module: str, extra: str, for_what: str, error: type[ResnetkitError] = ResnetkitError) -> ModuleType:
    """`import module`, or `error` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        install = f"pip install 'resnetkit[{extra}]'"
        raise error(f"{for_what} needs the {extra} extra ({top} is not installed): {install}") from None
