"""The book's notebooks: their structure, and their execution with papermill (nbval runs them too).

The papermill run injects the quick profile's parameters and writes the executed notebooks to
``_build/executed``, from which ``python -m minicap.dev book --executed _build/executed`` builds the
rendered book without running them a third time.
"""
import ast
import json
import os
from pathlib import Path

import pytest

from conftest import require

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
EXECUTED = ROOT / "_build" / "executed"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
QUICK_PROFILE = {"PROFILE": "quick"}
GPU_KERNEL_NOTEBOOKS = {"05_training.ipynb"}
REPOSITORY = "github/minicap-book/minicap/blob/main"


def load(path):
    return json.loads(path.read_text())


def parameters_cell(notebook):
    cells = [c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    return cells[0] if cells else None


def source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_every_chapter_is_in_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text()
    for path in NOTEBOOKS:
        assert f"book/{path.stem}" in toc, f"{path.name} is not in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_structure(path):
    notebook = load(path)
    first = source(notebook["cells"][0])
    assert first.startswith(("# Chapter", "# Appendix")), "the first cell is the chapter's title"
    assert f"colab.research.google.com/{REPOSITORY}/book/{path.name}" in first, "Colab badge points at the notebook"
    assert "google.colab" in source(notebook["cells"][1]), "the second cell is the Colab setup cell"
    cell = parameters_cell(notebook)
    assert cell is not None, "a cell tagged 'parameters' holds the notebook's parameters"
    for statement in ast.parse(source(cell)).body:  # literals only, so papermill can override them
        assert isinstance(statement, ast.Assign), ast.dump(statement)
        ast.literal_eval(statement.value)  # a number, string, bool, None, or a dict/list of them
    expected_kernel = "minicap-gpu" if path.name in GPU_KERNEL_NOTEBOOKS else "python3"
    assert notebook["metadata"]["kernelspec"]["name"] == expected_kernel
    assert all(not c.get("outputs") for c in notebook["cells"] if c["cell_type"] == "code"), "commit notebooks without outputs"


MAX_CODE_LINE = 88  # characters; a longer code line runs past the right edge of the rendered page
BEING_REWRITTEN = {"05_training.ipynb"}


@pytest.mark.parametrize("path", [
    pytest.param(path, marks=pytest.mark.xfail(strict=False, reason="being rewritten"))
    if path.name in BEING_REWRITTEN else path for path in NOTEBOOKS], ids=lambda p: p.stem)
def test_code_lines_fit_the_page(path):
    too_long = [(index, len(line)) for index, cell in enumerate(load(path)["cells"]) if cell["cell_type"] == "code"
                for line in source(cell).splitlines() if len(line) > MAX_CODE_LINE]
    assert not too_long, f"code lines over {MAX_CODE_LINE} characters, as (cell index, length): {too_long}"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_with_papermill(path):
    papermill = require("papermill", "papermill (the 'test' extra) is not installed")
    declared = papermill.inspect_notebook(str(path))
    parameters = {k: v for k, v in QUICK_PROFILE.items() if k in declared}
    EXECUTED.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(path), str(EXECUTED / path.name), parameters=parameters, cwd=str(BOOK),
        progress_bar=False, log_output=False, request_save_on_cell_execute=False,
    )
