"""ruff (lint and format, line length 120) runs as part of the suite, so CI enforces it."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff(command: list[str]) -> None:
    if shutil.which("ruff") is None and subprocess.run([sys.executable, "-m", "ruff", "--version"]).returncode:
        pytest.fail("ruff is not installed: install the test extra (pip install -e '.[test]')")
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "src", "tests"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
