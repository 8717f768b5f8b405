"""The README stays true: two Quickstart commands, the second is CI's, and the model table is the CLI's."""

from __future__ import annotations

import re

import pytest

from resnetkit.cli.models_cmd import markdown_table
from resnetkit.models.summary import summarize_models

from conftest import REPO

README = (REPO / "README.md").read_text()


def _quickstart() -> list[str]:
    section = README.split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the Quickstart has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quickstart_has_two_commands_and_ci_runs_the_second() -> None:
    commands = _quickstart()
    assert len(commands) == 2
    assert commands[1] in (REPO / ".ci" / "run").read_text()


@pytest.mark.slow
def test_model_table_is_generated_by_the_cli() -> None:
    table = README.split("<!-- models-table:start -->\n", 1)[1].split("\n<!-- models-table:end -->", 1)[0]
    assert table == markdown_table(list(summarize_models()))
