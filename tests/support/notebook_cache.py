"""A pytest plugin: the notebooks nbval executes go into jupyter-book's execution cache.

``python3 tools/dev.py test`` loads it (``-p tests.support.notebook_cache``). When every code cell of a
notebook has passed, the notebook, with the outputs nbval collected, is stored in
``_build/.jupyter_cache`` under the hash jupyter-book gives the notebook's code (jupyter-cache's own
``cache_notebook_bundle``). ``python3 tools/dev.py book`` then finds it there and does not execute it
again. Nothing else changes: a notebook with a failed or skipped cell is not stored, and on a machine
where the tests never ran the cache is empty and the book command executes the chapters itself.
"""
import os
import time
from pathlib import Path

import pytest

# jupyter-book's cache for a build with --path-output at the repository root ($MINICAP_JUPYTER_CACHE in tests).
CACHE = Path(os.environ.get("MINICAP_JUPYTER_CACHE") or Path(__file__).resolve().parents[2] / "_build" / ".jupyter_cache")

_runs = {}  # notebook path -> {"cells": code cells, "passed": set of passed cell numbers, "failed": bool, ...}


def _is_nbval_cell(item):
    return type(item).__name__ == "IPyNbCell" and hasattr(item, "cell_num")


def _notebook_run(item):
    notebook = item.parent
    key = str(notebook.fspath)
    if key not in _runs:
        code_cells = sum(1 for cell in notebook.nb.cells if cell.cell_type == "code")
        _runs[key] = {"notebook": notebook.nb, "cells": code_cells, "passed": set(), "failed": False,
                      "start": time.perf_counter()}
    return _runs[key]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if not _is_nbval_cell(item):
        return
    report = outcome.get_result()
    run = _notebook_run(item)
    if report.when == "call" and report.passed and item.test_outputs is not None:
        item.cell.outputs = list(item.test_outputs)
        item.cell.execution_count = item.cell_num + 1
        run["passed"].add(item.cell_num)
    elif report.failed or report.skipped:
        run["failed"] = True
    if report.when == "teardown" and not run["failed"] and len(run["passed"]) == run["cells"]:
        store(item.parent.fspath, run["notebook"], time.perf_counter() - run["start"])
        run["failed"] = True  # stored once


def store(path, notebook, seconds, cache_path=CACHE):
    """Put an executed ``notebook`` (read from ``path``) into the jupyter-cache at ``cache_path``."""
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cache = get_cache(str(cache_path))
    cache.cache_notebook_bundle(CacheBundleIn(notebook, str(path), data={"execution_seconds": seconds}),
                                check_validity=False, overwrite=True)
