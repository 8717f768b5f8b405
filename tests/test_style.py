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


MAX_FMT_SKIPS = 20  # `# fmt: skip` is for aligned data tables only, never to pack code under the function-length rule


def _fmt_skips(text: str) -> int:
    return sum(line.rstrip().endswith("# fmt: skip") for line in text.splitlines())


def test_formatting_is_not_switched_off() -> None:
    files = [*(REPO / "src").rglob("*.py"), *(REPO / "tests").rglob("*.py")]
    counts = {str(f.relative_to(REPO)): n for f in files if (n := _fmt_skips(f.read_text()))}
    assert sum(counts.values()) <= MAX_FMT_SKIPS, f"# fmt: skip markers: {counts}"


def test_the_fmt_skip_counter_counts_markers() -> None:
    marker = "# fmt" + ": skip"  # split so this file itself carries no marker
    assert _fmt_skips(f"x = 1  {marker}\ny = 2\nz = [  {marker}  \n") == 2
