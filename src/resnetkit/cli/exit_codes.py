"""The command line's exit codes, and the warning lines of commands that go on past unreadable files."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

EXIT_USER_ERROR = 2
# predict / explain / detect: every readable file was processed, but at least one file could not be read (or was
# refused); each is a `resnetkit: warning:` line on stderr and an {"path", "error"} record. --strict makes it
# EXIT_USER_ERROR.
EXIT_SOME_FILES_FAILED = 3


def warn_file_errors(records: Sequence[dict[str, Any]]) -> int:
    """One `resnetkit: warning:` line on stderr per record with an "error" (predict, explain); the exit code."""
    failed = [r for r in records if "error" in r]
    for r in failed:
        print(f"resnetkit: warning: {r['error']}", file=sys.stderr)
    return EXIT_SOME_FILES_FAILED if failed else 0
