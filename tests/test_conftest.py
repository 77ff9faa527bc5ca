"""The suite's own helper for optional dependencies: skip locally, fail under CI."""
import json

import pytest

from tests.support import require, unavailable

# Independent of Keras's backend (or runs each backend itself): runs once, on the default one.
pytestmark = pytest.mark.single_backend

MISSING = "minicap_no_such_module"


def outcome(function, *args):
    """``(skipped or failed, message)`` of calling ``function``: caught here, so that a skip where a
    failure is expected cannot skip this test instead of failing it."""
    try:
        function(*args)
    except pytest.skip.Exception as error:
        return "skipped", str(error)
    except pytest.fail.Exception as error:
        return "failed", str(error)
    return "returned", None


def test_require_returns_an_installed_module():
    assert require("json") is json


def test_a_missing_module_skips_locally(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    kind, message = outcome(require, MISSING)
    assert kind == "skipped" and f"{MISSING} is not installed" in message
    kind, message = outcome(require, MISSING, "the 'extra' extra is missing")
    assert kind == "skipped" and message.startswith("the 'extra' extra is missing")


def test_a_missing_module_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    kind, message = outcome(require, MISSING)
    assert kind == "failed" and f"{MISSING} is not installed" in message and "CI is set, so this fails" in message
    assert outcome(unavailable, "no browser") == ("failed", "no browser (CI is set, so this fails instead of skipping)")
