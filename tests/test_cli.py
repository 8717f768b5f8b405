"""The real CLI: output formats, exit codes and one-line errors. In-process (`main([...])` + capsys), but for the
one-line error, which is checked on a separate interpreter's real stderr and exit status."""

from __future__ import annotations

import json
import subprocess

import pytest

from resnetkit.cli.main import main

import procs


@pytest.fixture()
def run_cli(capsys):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return run


def test_models_json(run_cli) -> None:
    proc = run_cli("models", "resnet[25]*", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {"resnet20", "resnet50", "resnet56"}
    assert rows["resnet20"]["params"] == 269_722 and rows["resnet20"]["input_size"] == [3, 32, 32]
    assert rows["resnet50"]["gmacs"] == 4.0892 and rows["resnet50"]["family"] == "imagenet"


def test_models_table_and_markdown(run_cli) -> None:
    proc = run_cli("models", "resnet18")
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[1].split() == ["resnet18", "imagenet", "11.69", "1.814", "224x224"]
    md = run_cli("models", "resnet20", "--markdown").stdout.splitlines()
    assert md[0].startswith("| model |") and md[2] == "| resnet20 | cifar | 0.27 | 0.041 | 32x32 |"


def test_unknown_model_is_a_one_line_error(run_cli) -> None:
    proc = procs.resnetkit("models", "resnet5")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "resnetkit: error: unknown model 'resnet5'; did you mean: " in proc.stderr
    assert "resnet50" in proc.stderr and "resnet56" in proc.stderr
    empty = run_cli("models", "nosuch*")
    assert empty.returncode == 1 and "no model matches 'nosuch*'" in empty.stderr


def test_bad_arguments_exit_non_zero(run_cli) -> None:
    proc = run_cli("models", "--json", "--markdown")
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
    assert run_cli("frobnicate").returncode == 2
