"""conftest's CI rule: any truthy CI turns a missing test dependency or data set into a failure, not a skip."""

from __future__ import annotations

import os

import pytest
import torch

import conftest
import procs
from conftest import in_ci, require_module, shared_data

MISSING_MODULE = "resnetkit_no_such_module_for_tests"


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1", "yes", "YES", "on", "On", " true "])
def test_truthy_ci_values(monkeypatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci()


@pytest.mark.parametrize("value", ["", "0", "false", "FALSE", "no", "off", "Off", "2", "maybe"])
def test_falsy_ci_values(monkeypatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert not in_ci()


def test_unset_ci_is_not_ci(monkeypatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert not in_ci()


@pytest.mark.parametrize("value", ["1", "yes", "on", "True"])
def test_missing_module_fails_under_ci(monkeypatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match=MISSING_MODULE):
        require_module(MISSING_MODULE)


@pytest.mark.parametrize("value", [None, "", "0", "false", "off"])
def test_missing_module_skips_outside_ci(monkeypatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match=MISSING_MODULE):
        require_module(MISSING_MODULE)


def test_present_module_is_returned(monkeypatch) -> None:
    monkeypatch.setenv("CI", "1")
    import json

    assert require_module("json") is json


@pytest.mark.parametrize("value", ["1", "yes", "on", "TRUE"])
def test_missing_shared_data_fails_under_ci(monkeypatch, tmp_path, value: str) -> None:
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="no_such_set"):
        shared_data("no_such_set")


@pytest.mark.parametrize("value", [None, "", "0", "no"])
def test_missing_shared_data_skips_outside_ci(monkeypatch, tmp_path, value: str | None) -> None:
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="no_such_set"):
        shared_data("no_such_set")


def test_present_shared_data_is_returned(monkeypatch, tmp_path) -> None:
    (tmp_path / "here").mkdir()
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)
    monkeypatch.setenv("CI", "1")
    assert shared_data("here") == tmp_path / "here"


# --- nothing skips under CI but for want of CUDA (conftest.pytest_runtest_makereport) ---------------------------
class _Item:
    def __init__(self, *markers: str) -> None:
        self.markers = markers

    def get_closest_marker(self, name: str) -> object | None:
        return name if name in self.markers else None


def _reported(item: _Item, outcome: str) -> pytest.TestReport:
    """What conftest's report hook makes of a test report with `outcome`."""
    report = pytest.TestReport("t.py::t", ("t.py", 0, "t"), {}, outcome, None, "call")
    if outcome == "skipped":
        report.longrepr = ("t.py", 1, "Skipped: the test dependency 'x' cannot be imported")
    hook = conftest.pytest_runtest_makereport(item, None)
    next(hook)
    with pytest.raises(StopIteration) as done:
        hook.send(report)
    return done.value.value


def test_a_skip_fails_under_ci_unless_the_test_needs_cuda(monkeypatch) -> None:
    monkeypatch.setenv("CI", "true")
    failed = _reported(_Item(), "skipped")
    assert failed.outcome == "failed" and "may skip only for want of CUDA" in str(failed.longrepr)
    assert "the test dependency 'x' cannot be imported" in str(failed.longrepr)
    assert _reported(_Item("cuda"), "skipped").outcome == "skipped"
    assert _reported(_Item(), "passed").outcome == "passed"
    monkeypatch.setenv("CI", "false")
    assert _reported(_Item(), "skipped").outcome == "skipped"


def test_a_missing_module_at_a_modules_top_skips_the_module_outside_ci(monkeypatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_module(MISSING_MODULE)
    assert skipped.value.allow_module_level  # a skipped module, not a collection error


# --- the session's own RESNETKIT_HOME and its pinned precision ---------------------------------------------------
def test_the_session_has_its_own_home_with_the_pinned_precision(monkeypatch) -> None:
    from pathlib import Path

    from resnetkit.engine import device
    from resnetkit.files import cache_dir

    home = cache_dir()
    assert home == Path(os.environ["RESNETKIT_HOME"]) and home != Path.home() / ".cache" / "resnetkit"
    assert home.name.startswith("resnetkit-home-")

    def no_measuring(*_args) -> float:
        raise AssertionError("a test's precision must not depend on timing this CPU")

    monkeypatch.setattr(device, "measure_bf16_speedup", no_measuring)
    assert device.bf16_speedup() == conftest.PINNED_BF16_SPEEDUP
    assert device.default_amp(torch.device("cpu")) == (
        True,
        "bf16 autocast: a bf16 training step measured 2.00x the fp32 one on this CPU",
    )


# --- procs: every process a test starts is reaped, with the processes it started ---------------------------------
# a process that starts a child in a session of its own (as torchrun does its workers) and writes both pids
SPAWNS_A_GRANDCHILD = (
    "import os, pathlib, subprocess, sys, time; "
    "kid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True); "
    "pathlib.Path(sys.argv[1]).write_text(f'{os.getpid()} {kid.pid}'); "
    "time.sleep(120)"
)


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _all_gone(pids: list[int]) -> bool:
    """Whether every one of `pids` has ended (a SIGKILLed process takes a moment to die; 10 s is a hang)."""
    import time

    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _pids(path) -> list[int]:
    import time

    deadline = time.monotonic() + 60
    while not path.exists() or len(path.read_text().split()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return [int(pid) for pid in path.read_text().split()]


def test_a_failing_block_reaps_its_process_and_the_ones_it_started_in_their_own_sessions(tmp_path) -> None:
    import sys

    cmd = [sys.executable, "-c", SPAWNS_A_GRANDCHILD, str(tmp_path / "pids")]
    with pytest.raises(RuntimeError, match="the test failed"), procs.spawned(cmd) as p:
        family = _pids(tmp_path / "pids")
        assert all(_alive(pid) for pid in family)
        raise RuntimeError("the test failed")
    assert p.returncode is not None and _all_gone(family)


def test_a_run_past_its_timeout_is_reaped(tmp_path) -> None:
    import subprocess
    import sys

    with pytest.raises(subprocess.TimeoutExpired):
        procs.run([sys.executable, "-c", SPAWNS_A_GRANDCHILD, str(tmp_path / "pids")], timeout=5)
    assert _all_gone(_pids(tmp_path / "pids"))
