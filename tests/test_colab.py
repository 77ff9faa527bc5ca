"""The Colab badge and setup cell: what the cell would install on a given Python, without Colab."""
import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from minicap import colab

# Independent of Keras's backend (or runs each backend itself): runs once, on the default one.
pytestmark = pytest.mark.single_backend

ROOT = Path(__file__).resolve().parent.parent


def run_setup_cell(monkeypatch, on_colab, version_info=None):
    """Execute SETUP_CELL as a notebook would; return the commands it passed to subprocess.run."""
    commands = []

    def fake_run(command, **kwargs):
        commands.append((list(command), kwargs))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    if on_colab:
        google = types.ModuleType("google")
        google.colab = types.ModuleType("google.colab")
        monkeypatch.setitem(sys.modules, "google", google)
        monkeypatch.setitem(sys.modules, "google.colab", google.colab)
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    if version_info is not None:
        monkeypatch.setattr(sys, "version_info", version_info)
    namespace = {}
    exec(compile(colab.SETUP_CELL, "<setup cell>", "exec"), namespace)
    return commands, namespace


def packages_named(command):
    """The requirement arguments of a pip install command (its options dropped)."""
    install = command.index("install")
    return [part for part in command[install + 1:] if not part.startswith("-")]


@pytest.mark.parametrize("version", [(3, 11), (3, 12), (3, 13)])
def test_setup_cell_on_colab_installs_minicap_and_vit_keras(monkeypatch, version):
    commands, _ = run_setup_cell(monkeypatch, on_colab=True, version_info=version + (0, "final", 0))
    assert len(commands) == 3
    for command, kwargs in commands:
        assert command[:4] == [sys.executable, "-m", "pip", "install"]
        assert kwargs.get("check") is True
        assert "--upgrade" not in command and "-U" not in command
    minicap_install, dependencies, vit_install = (command for command, _ in commands)
    assert "--no-deps" in minicap_install
    assert packages_named(minicap_install) == ["minicap @ git+https://github.com/minicap-book/minicap@main"]
    assert packages_named(dependencies) == ["numpy", "matplotlib", "pillow", "tqdm", "validators"]
    assert "--no-deps" in vit_install
    assert packages_named(vit_install) == ["vit-keras==0.2.0"]
    assert ("--ignore-requires-python" in vit_install) == (version >= (3, 12))
    # TensorFlow and Keras, which Colab has, are neither named nor pulled in as dependencies.
    named = {re.split(r"[<>=@ ]", package)[0].lower() for command, _ in commands for package in packages_named(command)}
    assert named == {"minicap", "numpy", "matplotlib", "pillow", "tqdm", "validators", "vit-keras"}


def test_setup_cell_function_matches_what_the_cell_runs(monkeypatch):
    commands, namespace = run_setup_cell(monkeypatch, on_colab=True, version_info=(3, 12, 1, "final", 0))
    assert [command for command, _ in commands] == namespace["colab_pip_commands"]((3, 12), True)
    assert namespace["colab_pip_commands"]((3, 12), True) != namespace["colab_pip_commands"]((3, 11), True)


@pytest.mark.parametrize("version", [(3, 11), (3, 13)])
def test_setup_cell_installs_nothing_off_colab(monkeypatch, version):
    commands, namespace = run_setup_cell(monkeypatch, on_colab=False, version_info=version + (0, "final", 0))
    assert commands == []
    assert namespace["colab_pip_commands"](version, False) == []


def test_setup_cell_uses_the_standard_library_only():
    imported = re.findall(r"^\s*(?:import|from)\s+([\w.]+(?:\s*,\s*[\w.]+)*)", colab.SETUP_CELL, re.MULTILINE)
    modules = {name.strip().split(".")[0] for group in imported for name in group.split(",")}
    assert modules == {"os", "subprocess", "sys"}
    assert modules <= set(sys.stdlib_module_names)


def test_small_dependencies_are_pyproject_dependencies_but_tensorflow_and_keras():
    tomllib = __import__("conftest").require("tomllib", "tomllib (Python 3.11+) is missing")  # fails under CI
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower() for requirement in project["dependencies"]}
    assert names - {"tensorflow", "keras"} == set(colab.SMALL_DEPENDENCIES)
    vit_extra = project["optional-dependencies"]["vit"]
    assert any(requirement.startswith(colab.VIT_KERAS) for requirement in vit_extra)
    for dependency in colab.VIT_KERAS_DEPENDENCIES:
        assert dependency in vit_extra


def test_config_repository_agrees_with_colab_module():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["repository"]["url"].rstrip("/") == colab.repository_url() == "https://github.com/minicap-book/minicap"
    assert config["repository"]["branch"] == colab.BRANCH


def test_badge_points_at_the_notebook_itself():
    expected = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
                "(https://colab.research.google.com/github/minicap-book/minicap/blob/main/book/01_patches.ipynb)")
    assert colab.badge("01_patches.ipynb") == expected
    assert colab.badge("01_patches") == expected


@pytest.mark.parametrize("name", ["", "book/01_patches.ipynb", "01_patches.md"])
def test_badge_rejects_names_that_are_not_notebooks_in_book(name):
    with pytest.raises(ValueError, match="notebook_name"):
        colab.badge(name)


def notebook_with(title_source, setup_source, outputs=()):
    return {"cells": [{"cell_type": "markdown", "id": "a", "metadata": {}, "source": title_source},
                      {"cell_type": "code", "id": "b", "metadata": {}, "execution_count": 3,
                       "outputs": list(outputs), "source": setup_source}],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def test_sync_notebooks_rewrites_badge_and_setup_cell(tmp_path):
    shutil.copy(ROOT / "book" / "01_patches.ipynb", tmp_path / "01_patches.ipynb")
    stale = notebook_with(["# Chapter 9: Stale\n", "\n",
                           "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
                           "(https://colab.research.google.com/github/someone/else/blob/dev/x.ipynb)\n", "\n", "Text."],
                          ["import os\n", "print('old')"],
                          outputs=[{"output_type": "stream", "name": "stdout", "text": ["old\n"]}])
    (tmp_path / "09_stale.ipynb").write_text(json.dumps(stale))
    (tmp_path / "10_no_badge.ipynb").write_text(json.dumps(notebook_with(["# Chapter 10: New\n", "\n", "Goal."],
                                                                         "pass")))
    colab.sync_notebooks(tmp_path)
    for path in sorted(tmp_path.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        title, setup = "".join(cells[0]["source"]), cells[1]
        badge_lines = [line for line in title.split("\n") if "colab-badge.svg" in line]
        assert badge_lines == [colab.badge(path.name)], path.name
        assert "".join(setup["source"]) == colab.SETUP_CELL.rstrip("\n")
        assert setup["outputs"] == [] and setup["execution_count"] is None
        assert setup["metadata"]["tags"].count("remove-cell") == 1, path.name  # off the rendered page
        assert title.startswith("# Chapter")
    stale_title = "".join(json.loads((tmp_path / "09_stale.ipynb").read_text())["cells"][0]["source"])
    assert stale_title.endswith("\n\nText.") and "someone/else" not in stale_title
    new_title = "".join(json.loads((tmp_path / "10_no_badge.ipynb").read_text())["cells"][0]["source"])
    assert new_title == f"# Chapter 10: New\n\n{colab.badge('10_no_badge.ipynb')}\n\nGoal."
    # Already canonical now: a second pass and a check change nothing.
    assert colab.sync_notebooks(tmp_path) == []
    assert colab.main(["sync", "--check", str(tmp_path)]) == 0


def test_setup_cell_is_left_off_the_rendered_page_and_other_tags_are_kept():
    notebook = notebook_with("# Chapter 1: Patches", "pass")
    notebook["cells"][1]["metadata"] = {"tags": ["hide-output"], "scrolled": True}
    setup = colab.canonical_notebook(notebook, "01_patches.ipynb")["cells"][1]
    assert colab.SETUP_CELL_TAGS == ["remove-cell"]  # jupyter-book's tag: the cell runs, the page omits it
    assert setup["metadata"] == {"tags": ["hide-output", "remove-cell"], "scrolled": True}
    assert colab.canonical_notebook({**notebook, "cells": [notebook["cells"][0], setup]},
                                    "01_patches.ipynb")["cells"][1]["metadata"]["tags"].count("remove-cell") == 1


def test_the_book_notebooks_are_in_sync():
    """Every chapter's badge and setup cell (its tag included) are canonical: run the sync if not."""
    assert colab.sync_notebooks(ROOT / "book", check=True) == []


def test_sync_check_reports_without_writing(tmp_path):
    path = tmp_path / "01_patches.ipynb"
    path.write_text(json.dumps(notebook_with("# Chapter 1: Patches", "print(1)")))
    before = path.read_text()
    assert colab.sync_notebooks(tmp_path, check=True) == [path]
    assert path.read_text() == before
    assert colab.main(["sync", "--check", str(tmp_path)]) == 1


def test_sync_rejects_a_notebook_without_title_and_setup_cells(tmp_path):
    notebook = notebook_with("# Title", "pass")
    notebook["cells"].reverse()
    (tmp_path / "01_bad.ipynb").write_text(json.dumps(notebook))
    with pytest.raises(ValueError, match="01_bad.ipynb.*markdown cell"):
        colab.sync_notebooks(tmp_path)
    with pytest.raises(FileNotFoundError, match="book_dir"):
        colab.sync_notebooks(tmp_path / "missing")
