"""The Colab badge and setup cell: what the cell would install on a given Python, without Colab."""
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from tests.support import require, unavailable
import minicap
from minicap import colab

# Independent of Keras's backend (or runs each backend itself): runs once, on the default one.
pytestmark = pytest.mark.single_backend

ROOT = Path(__file__).resolve().parent.parent


def run_setup_cell(monkeypatch, on_colab, version_info=None, on_kaggle=False, with_vit_keras=False):
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
    if on_kaggle:
        monkeypatch.setenv(colab.KAGGLE_VARIABLE, "Interactive")
    else:
        monkeypatch.delenv(colab.KAGGLE_VARIABLE, raising=False)
    if version_info is not None:
        monkeypatch.setattr(sys, "version_info", version_info)
    source = colab.SETUP_CELL
    if with_vit_keras:  # what a reader does in the cell to get vit-keras too
        assert source.count("WITH_VIT_KERAS = False\n") == 1
        source = source.replace("WITH_VIT_KERAS = False\n", "WITH_VIT_KERAS = True\n")
    namespace = {}
    exec(compile(source, "<setup cell>", "exec"), namespace)
    return commands, namespace


def packages_named(command):
    """The requirement arguments of a pip install command (its options dropped)."""
    install = command.index("install")
    return [part for part in command[install + 1:] if not part.startswith("-")]


def package_names(commands):
    return {re.split(r"[<>=@ ]", package)[0].lower() for command in commands for package in packages_named(command)}


@pytest.mark.parametrize("host", ["colab", "kaggle"])
@pytest.mark.parametrize("version", [(3, 11), (3, 12), (3, 13)])
def test_setup_cell_on_colab_and_kaggle_installs_minicap_only(monkeypatch, version, host):
    commands, _ = run_setup_cell(monkeypatch, on_colab=host == "colab", on_kaggle=host == "kaggle",
                                 version_info=version + (0, "final", 0))
    assert len(commands) == 2
    for command, kwargs in commands:
        assert command[:4] == [sys.executable, "-m", "pip", "install"]
        assert kwargs.get("check") is True
        assert not {"--upgrade", "-U", "--force-reinstall", "--ignore-installed", "-I"} & set(command)
        assert "--ignore-requires-python" not in command  # nothing that declares it does not fit this Python
    minicap_install, dependencies = (command for command, _ in commands)
    assert "--no-deps" in minicap_install
    assert packages_named(minicap_install) == ["minicap @ git+https://github.com/minicap-book/minicap@main"]
    assert packages_named(dependencies) == ["numpy", "matplotlib", "pillow", "tqdm"]
    # TensorFlow, Keras and JAX, which Colab and Kaggle have, are neither named nor pulled in as dependencies.
    assert package_names(command for command, _ in commands) == {"minicap", "numpy", "matplotlib", "pillow", "tqdm"}


@pytest.mark.parametrize("version", [(3, 11), (3, 12), (3, 13)])
def test_setup_cell_installs_vit_keras_when_asked(monkeypatch, version):
    commands, _ = run_setup_cell(monkeypatch, on_colab=True, version_info=version + (0, "final", 0),
                                 with_vit_keras=True)
    assert len(commands) == 3
    vit_install = commands[2][0]
    assert "--no-deps" in vit_install and not {"--upgrade", "-U"} & set(vit_install)
    assert packages_named(vit_install) == ["vit-keras==0.2.0", "validators"]
    assert ("--ignore-requires-python" in vit_install) == (version >= (3, 12))
    assert package_names(command for command, _ in commands) == {"minicap", "numpy", "matplotlib", "pillow", "tqdm",
                                                                 "vit-keras", "validators"}


def test_setup_cell_function_matches_what_the_cell_runs(monkeypatch):
    commands, namespace = run_setup_cell(monkeypatch, on_colab=True, version_info=(3, 12, 1, "final", 0),
                                         with_vit_keras=True)
    assert [command for command, _ in commands] == namespace["pip_commands"]((3, 12), True, True)
    assert namespace["pip_commands"]((3, 12), True, True) != namespace["pip_commands"]((3, 11), True, True)
    assert namespace["pip_commands"]((3, 13), True) == namespace["pip_commands"]((3, 13), True, True)[:2]


@pytest.mark.parametrize("version", [(3, 11), (3, 13)])
def test_setup_cell_installs_nothing_off_colab_and_kaggle(monkeypatch, version):
    commands, namespace = run_setup_cell(monkeypatch, on_colab=False, version_info=version + (0, "final", 0),
                                         with_vit_keras=True)
    assert commands == []
    assert namespace["pip_commands"](version, False, True) == []


def test_setup_cell_uses_the_standard_library_only():
    imported = re.findall(r"^\s*(?:import|from)\s+([\w.]+(?:\s*,\s*[\w.]+)*)", colab.SETUP_CELL, re.MULTILINE)
    modules = {name.strip().split(".")[0] for group in imported for name in group.split(",")}
    assert modules == {"os", "subprocess", "sys"}
    assert modules <= set(sys.stdlib_module_names)


def test_small_dependencies_are_pyproject_dependencies_but_tensorflow_and_keras():
    tomllib = require("tomllib", "tomllib (Python 3.11+) is missing")  # fails under CI
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


def _fake_drive(tmp_path):
    """A mount function that does what Colab's does: the reader's Drive appears under the mount point."""
    mounted = []

    def mount(mount_point):
        mounted.append(mount_point)
        (Path(mount_point) / "MyDrive").mkdir(parents=True, exist_ok=True)

    return mount, mounted


def test_on_colab_drive_keeps_the_run_archives_and_features_and_the_photos_go_to_the_runtime(tmp_path):
    mount, mounted = _fake_drive(tmp_path)
    storage = colab.notebook_storage("photos", use_drive=True, colab=True, mount=mount,
                                     mount_point=tmp_path / "drive", runtime_data_dir=tmp_path / "runtime")
    assert mounted == [str(tmp_path / "drive")]
    drive = tmp_path / "drive" / "MyDrive" / "minicap"
    assert storage.on_drive and Path(storage.run_dir) == drive / "runs" / "photos"
    assert storage.settings == {"data_dir": str(drive / "data"), "extract_dir": str(tmp_path / "runtime")}
    # The settings are TrainConfig's: the three notebooks build their config with them.
    from minicap.config import profile

    config = profile("photos", **storage.settings)
    assert (config.data_dir, config.extract_dir) == (str(drive / "data"), str(tmp_path / "runtime"))
    assert "Google Drive" in storage.describe() and "runtime" in storage.describe()
    # Mounted once per runtime: a second notebook (or a rerun) finds Drive there.
    again = colab.notebook_storage("photos", use_drive=True, colab=True, mount=mount, mount_point=tmp_path / "drive",
                                   runtime_data_dir=tmp_path / "runtime")
    assert again == storage and len(mounted) == 1
    # A run folder of the reader's own is kept inside minicap's Drive folder; an absolute one where it says.
    named = colab.notebook_storage("photos", True, "my-run", colab=True, mount=mount, mount_point=tmp_path / "drive")
    assert Path(named.run_dir) == drive / "my-run"
    absolute = colab.notebook_storage("photos", True, str(tmp_path / "elsewhere"), colab=True, mount=mount,
                                      mount_point=tmp_path / "drive")
    assert Path(absolute.run_dir) == tmp_path / "elsewhere"


def test_drive_is_never_used_off_colab_nor_unless_asked(tmp_path, capsys):
    def mount(mount_point):
        raise AssertionError("Drive must not be mounted")

    for use_drive, on_colab in ((False, True), (False, False), (True, False)):
        storage = colab.notebook_storage("quick", use_drive, colab=on_colab, mount=mount,
                                         mount_point=tmp_path / "drive")
        assert storage == colab.Storage("runs/quick", {}, False)
    assert "USE_DRIVE applies on Colab only" in capsys.readouterr().out
    assert colab.notebook_storage("quick", False, "elsewhere").run_dir == "elsewhere"
    assert not (tmp_path / "drive").exists()


# What the setup cell resolves to on Colab's runtimes, against PyPI (network: the registry only). Colab's versions
# come from tools/colab-versions.txt (its header names the source and the date): the default runtime (Python 3.13)
# and the previous one (Python 3.12, which Kaggle's image is built on). The versions are those of the packages the
# cell's commands name, of their dependencies, and of the frameworks they must leave alone.
def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


COLAB_VERSIONS_FILE = ROOT / "tools" / "colab-versions.txt"
COLAB_PYTHONS = [(3, 13), (3, 12)]


def colab_versions(version, path=COLAB_VERSIONS_FILE):
    """``{name: version}`` that the constraints file pins for Colab's runtime of Python ``version`` (its lines'
    markers evaluated as pip evaluates them)."""
    from packaging.markers import Marker

    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        requirement, _, marker = line.split("#")[0].partition(";")
        if not requirement.strip():
            continue
        if marker.strip() and not Marker(marker).evaluate({"python_version": "%d.%d" % version}):
            continue
        name, number = requirement.strip().split("==")
        assert canonical(name) not in pins, f"{path.name} pins {name} twice for Python {version}"
        pins[canonical(name)] = number
    return pins


COLAB_RUNTIMES = {version: colab_versions(version) for version in COLAB_PYTHONS}


def test_the_colab_versions_file_pins_the_frameworks_of_both_runtimes():
    for version, pins in COLAB_RUNTIMES.items():
        assert {"tensorflow", "keras", "jax", "jaxlib", "numpy", "ml-dtypes"} <= set(pins), (version, pins)
        assert pins["tensorflow"] == "2.20.0" and pins["keras"] == "3.13.2" and pins["jax"] == "0.7.2"
    assert COLAB_RUNTIMES[(3, 13)]["numpy"] == "2.1.3" and COLAB_RUNTIMES[(3, 12)]["numpy"] == "2.0.2"
    header = COLAB_VERSIONS_FILE.read_text(encoding="utf-8")
    assert "googlecolab/backend-info" in header and re.search(r"read on \d{4}-\d\d-\d\d", header)


# What the cell must never install, upgrade or replace.
FRAMEWORKS = {"tensorflow", "keras", "jax", "jaxlib", "tf-keras", "ml-dtypes", "torch"}
# Colab's machines run Ubuntu 22.04 (glibc 2.35): wheels for manylinux 2.35 and older, or pure Python ones.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def dry_run(arguments, version, folder, constraints=None):
    """``pip install --dry-run`` of ``arguments`` for CPython ``version`` on Colab's platform, wheels only;
    return ``(completed process, {canonical name: version})`` of what pip would install."""
    report = folder / "report.json"
    report.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--disable-pip-version-check",
               "--report", str(report), "--python-version", ".".join(map(str, version)),
               "--only-binary=:all:", "--target", str(folder / "target")]
    command += [option for platform in PLATFORMS for option in ("--platform", platform)]
    command += ["--constraint", str(constraints)] if constraints else []
    completed = subprocess.run(command + list(arguments), capture_output=True, text=True, timeout=600)
    installed = {}
    if completed.returncode == 0:
        installed = {canonical(item["metadata"]["name"]): item["metadata"]["version"]
                     for item in json.loads(report.read_text())["install"]}
    return completed, installed


@pytest.fixture(scope="module")
def minicap_wheel(tmp_path_factory):
    """A wheel of this checkout, as pip builds one on Colab from the repository (the cell's first line), for
    the resolution to install in place of the GitHub address; skipped (failed under CI) without the registry."""
    folder = tmp_path_factory.mktemp("resolve")
    probe, _ = dry_run(["--no-deps", "keras==3.13.2"], (3, 13), folder)
    if probe.returncode != 0:
        unavailable(f"the package registry is not reachable: {probe.stderr.strip().splitlines()[-1:]}")
    source = folder / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "minicap", source / "minicap", ignore=shutil.ignore_patterns("__pycache__"))
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(folder / "wheel"),
                            str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    wheels = list((folder / "wheel").glob("minicap-*.whl"))
    assert len(wheels) == 1 and wheels[0].name.endswith("-py3-none-any.whl"), wheels  # pure Python: any CPython
    return wheels[0]


@pytest.mark.slow
@pytest.mark.parametrize("version", sorted(COLAB_RUNTIMES), ids=lambda v: "python%d.%d" % v)
def test_setup_cell_resolves_on_colabs_pythons_with_wheels_only(monkeypatch, tmp_path, minicap_wheel, version):
    """Each pip command of the cell (vit-keras's too) resolves for Colab's Python with binary wheels only, and
    against Colab's installed versions: pip finds them all satisfied, so it installs nothing of the
    dependencies and never touches TensorFlow, Keras or JAX."""
    commands, _ = run_setup_cell(monkeypatch, on_colab=True, version_info=version + (0, "final", 0),
                                 with_vit_keras=True)
    monkeypatch.undo()  # the real subprocess.run again
    colab_versions = COLAB_RUNTIMES[version]
    # The file's markers resolved for this runtime: pip evaluates markers for the Python it runs on, not for the
    # --python-version it resolves for.
    constraints = tmp_path / "colab.txt"
    constraints.write_text("\n".join(f"{name}=={number}" for name, number in colab_versions.items()) + "\n")
    resolved = []
    for command, _ in commands:
        arguments = [str(minicap_wheel) if argument.startswith("minicap @ git+") else argument
                     for argument in command[4:] if argument != "-q"]
        completed, installed = dry_run(arguments, version, tmp_path, constraints)
        assert completed.returncode == 0, f"{arguments} on Python {version}:\n{completed.stderr[-3000:]}"
        assert not set(installed) & FRAMEWORKS, installed
        named = {canonical(re.split(r"[<>=@ ]", package)[0]) for package in packages_named(command)}
        if "--no-deps" in arguments:
            assert set(installed) == named, installed  # exactly what it names, nothing else
        else:  # the dependencies: all on Colab already, at the versions Colab has
            assert named <= set(installed)
            assert set(installed) <= set(colab_versions), f"not on Colab: {set(installed) - set(colab_versions)}"
            assert installed == {name: colab_versions[name] for name in installed}, installed
        resolved.append(installed)
    assert resolved[0] == {"minicap": minicap.__version__} and resolved[2]["vit-keras"] == "0.2.0"


def test_pyproject_lower_bounds_are_the_versions_the_colab_lanes_test():
    """Each dependency's lower bound is Colab's version (the older one where the two runtimes differ): the oldest
    that a lane of the suite runs (tools/dev.py installs tools/colab-versions.txt in .venv-colab)."""
    tomllib = require("tomllib", "tomllib (Python 3.11+) is missing")  # fails under CI
    from packaging.requirements import Requirement
    from packaging.version import Version

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dependency in map(Requirement, dependencies):
        lower = [spec.version for spec in dependency.specifier if spec.operator == ">="]
        pinned = [pins[canonical(dependency.name)] for pins in COLAB_RUNTIMES.values()]
        assert lower == [min(pinned, key=Version)], (dependency, pinned)
