"""The suite's own helper for optional dependencies: skip locally, fail under CI."""
import json

import pytest

from conftest import require, unavailable

MISSING = "minicap_no_such_module"


def test_require_returns_an_installed_module():
    assert require("json") is json


def test_a_missing_module_skips_locally(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"{MISSING} is not installed"):
        require(MISSING)
    with pytest.raises(pytest.skip.Exception, match="the 'extra' extra is missing"):
        require(MISSING, "the 'extra' extra is missing")


def test_a_missing_module_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"{MISSING} is not installed.*CI is set, so this fails"):
        require(MISSING)
    with pytest.raises(pytest.fail.Exception, match="no browser .CI is set"):
        unavailable("no browser")
