"""ruff (lint and format, line length 120) runs as part of the suite, so CI enforces it."""

from __future__ import annotations

import shutil
import sys

import pytest

import procs
from conftest import REPO


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff(command: list[str]) -> None:
    if shutil.which("ruff") is None and procs.run([sys.executable, "-m", "ruff", "--version"]).returncode:
        pytest.fail("ruff is not installed: install the test extra (pip install -e '.[test]')")
    proc = procs.run([sys.executable, "-m", "ruff", *command, "src", "tests"], cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
