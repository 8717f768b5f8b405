"""conftest's CI rule: any truthy CI turns a missing test dependency or data set into a failure, not a skip."""

from __future__ import annotations

import pytest

import conftest
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
