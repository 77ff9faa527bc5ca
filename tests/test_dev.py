"""The developer tasks (tools/dev.py): the book is built from the files of _toc.yml and their assets only, and the
notebooks the test suite executes reach jupyter-book's cache."""
import json
import os
import re
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from tools import dev
from tests.support import require

# Independent of Keras's backend (or runs each backend itself): runs once, on the default one.
pytestmark = pytest.mark.single_backend

ROOT = Path(__file__).resolve().parent.parent
ASSETS = {"_config.yml", "_toc.yml", "book/references.bib", "book/_ext/minicap_sphinx.py", "book/_ext/static/minicap.css",
          "book/images/architecture.svg"}


def _write(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _copy_book(repo):
    """The book's own files (configuration, documents, assets and the files they include) into ``repo``."""
    documents = dev.toc_documents()
    included = set().union(*(dev.included_files(ROOT, document) for document in documents))
    for relative in ["_config.yml", "_toc.yml", *documents, *sorted(ASSETS - {"_config.yml", "_toc.yml"}),
                     *sorted(included)]:
        _write(repo / relative, (ROOT / relative).read_text())
    return included


def test_the_book_is_staged_from_its_table_of_contents_and_assets_only(tmp_path):
    staged = dev.stage_book(tmp_path / "stage")
    documents = set(dev.toc_documents())
    included = set().union(*(dev.included_files(ROOT, document) for document in documents))
    assert documents <= staged and ASSETS <= staged and included <= staged
    extra = staged - documents - ASSETS - included
    assert not extra, f"the book build would read files outside _toc.yml: {sorted(extra)}"
    on_disk = {p.relative_to(tmp_path / "stage").as_posix() for p in (tmp_path / "stage").rglob("*") if p.is_file()}
    assert on_disk == staged


def test_virtual_environments_and_runs_inside_the_repository_are_never_read(tmp_path):
    """A repository with a venv (under any name), run directories, build output, checkpoints and stray
    notebooks: only the table of contents' documents and the book's assets are staged."""
    repo = tmp_path / "repo"
    included = _copy_book(repo)
    junk = [".venv/lib/python3.11/site-packages/papermill/tests/notebooks/simple_execute.ipynb",
            "myenv/lib/python3.11/site-packages/nbval/tests/test.ipynb", "myenv/pyvenv.cfg",
            "book/runs/quick/history.json", "book/runs/notes.md", "runs/quick/model.keras",
            "_build/html/index.html", "book/.ipynb_checkpoints/01_patches-checkpoint.ipynb",
            "book/draft.ipynb", "book/scratch.md", "notes.md", "book/__pycache__/x.pyc"]
    for relative in junk:
        _write(repo / relative)
    _write(repo / "book/images/figure.png")  # an asset a page may include
    staged = dev.stage_book(tmp_path / "stage", root=repo)
    assert staged == set(dev.toc_documents(repo)) | ASSETS | included | {"book/images/figure.png"}


def test_a_table_of_contents_entry_without_a_file_is_an_error(tmp_path):
    _write(tmp_path / "_toc.yml", "format: jb-book\nroot: book/intro\nchapters:\n  - file: book/missing\n")
    _write(tmp_path / "book/intro.md", "# Intro\n")
    with pytest.raises(SystemExit, match="book/missing"):
        dev.toc_documents(tmp_path)


def _notebook(cells):
    return {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
                       "source": source} for i, source in enumerate(cells)],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


@pytest.mark.slow
def test_notebooks_nbval_executes_go_into_the_jupyter_cache_and_failed_ones_do_not(tmp_path):
    require("nbval", "nbval (the 'test' extra) is not installed")
    jupyter_cache = require("jupyter_cache", "jupyter-cache (installed with the 'book' extra) is not installed")
    import nbformat

    good, bad = tmp_path / "good.ipynb", tmp_path / "bad.ipynb"
    good.write_text(json.dumps(_notebook(["x = 6 * 7", "print(x)"])))
    bad.write_text(json.dumps(_notebook(["print('before')", "raise ValueError('broken')"])))
    cache = tmp_path / "cache"
    env = {**os.environ, "MINICAP_JUPYTER_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", str(good), str(bad), "--nbval-lax", "-p", "tests.support.notebook_cache",
         "-p", "no:cacheprovider", "-q"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert completed.returncode == 1, completed.stdout  # the bad notebook fails
    stored = jupyter_cache.get_cache(str(cache))
    record = stored.match_cache_notebook(nbformat.read(str(good), as_version=4))
    outputs = stored.get_cache_bundle(record.pk).nb.cells[1].outputs
    assert outputs[0]["text"] == "42\n"  # what the cell printed, for the rendered page
    with pytest.raises(KeyError):
        stored.match_cache_notebook(nbformat.read(str(bad), as_version=4))
    changed = _notebook(["x = 6 * 8", "print(x)"])  # new code: the book must execute it again
    with pytest.raises(KeyError):
        stored.match_cache_notebook(nbformat.from_dict(changed))


def test_files_a_chapter_includes_are_staged_with_it(tmp_path):
    repo = tmp_path / "repo"
    _copy_book(repo)
    _write(repo / "minicap/patches.py", "# [start-patches]\nx = 1\n# [end-patches]\n")
    _write(repo / "minicap/other.py")  # not included by any chapter
    notebook = json.loads((repo / "book/01_patches.ipynb").read_text())
    notebook["cells"].append({"cell_type": "markdown", "metadata": {}, "id": "inc",
                              "source": ["```{literalinclude} ../minicap/patches.py\n", ":start-after: [start-patches]\n",
                                         ":end-before: [end-patches]\n", "```\n"]})
    (repo / "book/01_patches.ipynb").write_text(json.dumps(notebook))
    staged = dev.stage_book(tmp_path / "stage", root=repo)
    assert "minicap/patches.py" in staged and "minicap/other.py" not in staged
    notebook["cells"][-1]["source"][0] = "```{literalinclude} ../minicap/missing.py\n"
    (repo / "book/01_patches.ipynb").write_text(json.dumps(notebook))
    with pytest.raises(SystemExit, match="missing.py"):
        dev.stage_book(tmp_path / "stage", root=repo)


def test_setup_installs_once_and_again_when_pyproject_changes(tmp_path, monkeypatch):
    root, python = tmp_path / "repo", tmp_path / "env" / "bin" / "python"
    _write(root / "pyproject.toml", "[project]\nname = 'x'\n")
    _write(python, "")
    commands = []
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    monkeypatch.setattr(dev, "ROOT", root)
    monkeypatch.setattr(dev, "venv_python", lambda: python)
    monkeypatch.setattr(dev, "run", lambda *command, env=None: commands.append(command[1:4]))
    monkeypatch.setattr(dev, "installer", lambda python: ["uv", "pip", "install", "--python", python])
    assert dev.setup() == python
    installed = [("pip", "install", "--python"), ("-m", "ipykernel", "install"), ("-m", "minicap.cli", "kernel")]
    assert commands == installed
    dev.setup()
    assert commands == installed  # nothing changed: nothing installed
    monkeypatch.setenv("KERAS_BACKEND", "jax")  # the GPU kernel names the backend it is registered for
    dev.setup()
    assert commands == installed * 2
    _write(root / "pyproject.toml", "[project]\nname = 'x'\ndependencies = ['numpy']\n")
    dev.setup()
    assert commands == installed * 3
    dev.setup(extras="test")
    assert commands == installed * 4


@pytest.mark.skipif(os.name == "nt", reason="a shell script stands in for the interpreter")
def test_uv_installs_with_pips_local_wheels_indexes_and_constraints_and_pip_does_when_uv_cannot_be_had(tmp_path):
    wheels, constraints = tmp_path / "wheels", tmp_path / "cap.txt"
    wheels.mkdir()
    _write(constraints, "torch<=2.14.1\n")
    python = tmp_path / "env" / "bin" / "python"
    config = (f"global.find-links='{wheels} {tmp_path / 'gone'}'\n:env:.find-links='{wheels}'\n"
              f"global.constraint='{constraints}'\nglobal.extra-index-url='file://{wheels} file://{tmp_path / 'no'}'\n"
              "global.cert='/etc/ssl/certs/ca-certificates.crt'\n")
    # A Python whose pip prints that configuration, and installs uv (an empty script) only when told it can.
    _write(python, f"""#!/bin/sh
if [ "$2 $3" = "pip config" ]; then printf "%s" "{config}"; exit 0; fi
if [ -f {tmp_path / "uv-ok"} ]; then touch {python.parent / "uv"}; exit 0; fi
echo "ERROR: No matching distribution found for uv" >&2; exit 1
""")
    python.chmod(0o755)
    assert dev.installer(python) == [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _write(tmp_path / "uv-ok", "")
    command = dev.installer(python)
    assert command[:6] == [python.parent / "uv", "pip", "install", "-q", "--python", python]
    assert command[6:] == ["--compile-bytecode", "--find-links", str(wheels), "--constraint", str(constraints),
                           "--extra-index-url", f"file://{wheels}", "--index-strategy", "unsafe-best-match"]


def _fake_python(path, version=None):
    """An executable standing in for a Python: prints its version as ``newest_python`` asks, or fails as a pyenv shim
    of an unselected version does."""
    body = f"echo {version[0]} {version[1]}" if version else "echo 'pyenv: python3.13: command not found' >&2; exit 127"
    _write(path, f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.mark.skipif(os.name == "nt", reason="shell scripts stand in for the interpreters")
def test_the_colab_environment_takes_the_newest_python_that_runs(tmp_path):
    shim = _fake_python(tmp_path / "shims" / "python3.13")
    old = _fake_python(tmp_path / "bin" / "python3.11", (3, 11))
    newer = _fake_python(tmp_path / "pyenv" / "3.12.1" / "bin" / "python3", (3, 12))
    ancient = _fake_python(tmp_path / "bin" / "python3.9", (3, 9))
    assert dev.newest_python([shim, old, newer, ancient]) == str(newer)
    assert dev.newest_python([old]) == str(old)
    with pytest.raises(SystemExit, match="no Python 3.10 or newer"):
        dev.newest_python([shim, ancient])


def test_setup_installs_colabs_versions_in_the_colab_environment(tmp_path, monkeypatch):
    """.venv-colab gets the constraints file, and vit-keras as the setup cell installs it; a changed file installs
    again."""
    root, python = tmp_path / "repo", tmp_path / "colab" / "bin" / "python"
    _write(root / "pyproject.toml", "[project]\nname = 'x'\n")
    constraints = _write(root / "tools" / "colab-versions.txt", "keras==3.13.2\n") or root / "tools" / "colab-versions.txt"
    _write(python, "")
    commands = []
    monkeypatch.setattr(dev, "ROOT", root)
    monkeypatch.setattr(dev, "COLAB_VENV", python.parent.parent)
    monkeypatch.setattr(dev, "COLAB_VERSIONS", constraints)
    monkeypatch.setattr(dev, "run", lambda *command, env=None: commands.append([str(part) for part in command[1:]]))
    monkeypatch.setattr(dev, "installer", lambda python: ["uv", "pip", "install", "--python", python])
    assert dev.setup_colab() == python
    assert commands[0][:4] == ["pip", "install", "--python", str(python)]
    assert ["-c", str(constraints)] == commands[0][4:6]
    assert commands[0][-1] == ".[book,test,vit]"
    assert commands[1][-3:] == ["--no-deps", "--ignore-requires-python", "vit-keras==0.2.0"]
    assert len(commands) == 4  # then the two kernels
    dev.setup_colab()
    assert len(commands) == 4  # nothing changed
    constraints.write_text("keras==3.13.3\n")
    dev.setup_colab()
    assert len(commands) == 8


def test_the_test_command_passes_pytest_options_on(monkeypatch):
    calls = []
    monkeypatch.setattr(dev, "test", calls.append)
    dev.main(["test", "--durations=50", "-x"])
    dev.main(["test", "tests/test_dev.py", "-k", "staged"])
    dev.main(["test", "-p", "plugin", "-k", "staged"])  # options with values stay in their order
    dev.main(["test", "--", "-p", "plugin"])
    assert calls == [["--durations=50", "-x"], ["tests/test_dev.py", "-k", "staged"],
                     ["-p", "plugin", "-k", "staged"], ["-p", "plugin"]]
    with pytest.raises(SystemExit):
        dev.main(["book", "--durations=50"])  # only the test command takes pytest's options


def test_a_lane_reports_each_part_s_time_exit_status_and_cpu_seconds(tmp_path, monkeypatch):
    monkeypatch.setattr(dev, "ROOT", tmp_path)
    busy = "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nsys.exit(3)"
    environment = "import os; print('environment', os.environ['KERAS_BACKEND'], os.environ.get('OMP_NUM_THREADS'))"
    results, spans, origin = {}, {}, time.perf_counter()
    dev._run_lane("check", [("busy", [sys.executable, "-c", busy], "tensorflow"),
                            ("fine", [sys.executable, "-c", environment], "torch")], tmp_path / "lane.log", results,
                  spans=spans, origin=origin)
    (busy_seconds, busy_status, busy_cpu), (fine_seconds, fine_status, _) = results["busy"], results["fine"]
    assert busy_status == 3 and fine_status == 0
    assert busy_cpu >= 0.3 and busy_seconds >= 0.3
    # When each part ran, from the lane's start: one after the other, each as long as it took.
    (busy_start, busy_end), (fine_start, fine_end) = spans["busy"], spans["fine"]
    assert 0 <= busy_start <= busy_end <= fine_start <= fine_end <= time.perf_counter() - origin
    assert busy_end - busy_start == pytest.approx(busy_seconds)
    assert fine_end - fine_start == pytest.approx(fine_seconds)
    assert "environment torch 1" in (tmp_path / "lane.log").read_text()  # its backend, one OpenMP thread


def test_jax_parts_compile_unoptimised_and_keep_the_flags_xla_has(tmp_path, monkeypatch):
    monkeypatch.setattr(dev, "COMPILE_CACHE", tmp_path / "cache")
    mine = {"PATH": "/bin", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    jax = dev.part_environment("jax", environ=mine)
    assert jax["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2",
                                        "--xla_backend_optimization_level=0"]
    assert jax["KERAS_BACKEND"] == "jax" and jax["PATH"] == "/bin" and "JAX_COMPILATION_CACHE_DIR" in jax
    assert dev.part_environment("jax", environ={})["XLA_FLAGS"] == "--xla_backend_optimization_level=0"
    # TensorFlow's XLA compiles the book's training steps: optimised, as a reader's are.
    tensorflow = dev.part_environment("tensorflow", environ=mine)
    assert tensorflow["XLA_FLAGS"] == mine["XLA_FLAGS"] and tensorflow["KERAS_BACKEND"] == "tensorflow"
    assert "--tf_xla_persistent_cache_directory" in tensorflow["TF_XLA_FLAGS"]
    assert dev.part_environment("torch", environ=mine)["OMP_NUM_THREADS"] == "1"
    assert mine == {"PATH": "/bin", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}  # left as it was


def _lanes_as_run(monkeypatch, tmp_path, nbval_status, pytest_args=(), newest_fails=False):
    """Run ``dev.test`` with nothing installed: its lanes, gates and spare parts as they run, each part's process
    only recorded as (lane, name, command), in the order they start; nbval ends with ``nbval_status``, a little
    later than the other parts (the book lane must wait for it); ``newest_fails``: .venv's setup fails. Return the
    records, a function that reads a lane's log, and test's exit status."""
    monkeypatch.setattr(dev, "ROOT", tmp_path)
    monkeypatch.setattr(dev, "BUILD", tmp_path / "_build")
    monkeypatch.setattr(dev, "setup", (lambda: sys.exit("pip failed")) if newest_fails else (lambda: None))
    monkeypatch.setattr(dev, "setup_colab", lambda: None)
    monkeypatch.setattr(dev, "check_free_space", lambda: None)  # (its own test below)
    monkeypatch.setattr(dev, "browser_dependencies", lambda log_path: sys.exit("missing chromium"))
    monkeypatch.setattr(dev, "stage_book", lambda stage: None)
    monkeypatch.setattr(dev, "executed_notebooks", lambda root: ["book/01_patches.ipynb"])
    records, lock = [], threading.Lock()

    def part_recorded(lane, name, command, backend, log):
        if name.startswith("nbval"):
            time.sleep(0.3)
        with lock:
            records.append((lane, name, " ".join(map(str, command))))
        return (nbval_status if name.startswith("nbval") else 0), 0.0

    monkeypatch.setattr(dev, "_run_part", part_recorded)

    def log(lane):
        return (tmp_path / "_build" / "test-logs" / f"{lane}.log").read_text(encoding="utf-8")

    try:
        dev.test(pytest_args)
    except SystemExit as error:
        return records, log, error.code
    return records, log, 0


# The test files that run in spare parts of their own, on each backend they run on.
APART = dev.PHOTOS_TESTS + dev.TRAINING_TESTS + dev.DEVICE_TESTS + dev.BENCH_TESTS


def test_the_book_is_built_from_nbvals_notebooks_and_checked_in_chromium_while_the_tests_go_on(tmp_path, monkeypatch):
    records, _, status = _lanes_as_run(monkeypatch, tmp_path, nbval_status=0)
    assert status == 0
    names = [name for _, name, _ in records]
    book = [(name, command) for lane, name, command in records if name.startswith(("book", "browser"))]
    assert len(book) == 2 and names.index(book[0][0]) > names.index(next(n for n in names if n.startswith("nbval")))
    assert {lane for lane, name, _ in records if name.startswith(("book", "browser"))} == {"book"}
    assert book[0][1].endswith("tools/dev.py book")  # the book command itself, which reuses nbval's notebooks
    assert "tests/browser -m browser" in book[1][1]  # chromium missing: the checks run and say so (skip or fail)
    # Every part ran once: the lanes' own, and each spare part in one of the lanes, whichever was free.
    assert len(names) == len(set(names)) == 4 + len(book) + 6
    assert {lane for lane, _, _ in records} == {"notebooks", "tensorflow", "backends", "book"}
    # Each test file kept apart runs once on TensorFlow (Colab's versions) and, the training tests, once on JAX (the
    # newest releases): the package parts of both leave it out.
    (tensorflow,) = [command for _, name, command in records if name == "package on TensorFlow (Colab's versions)"]
    (jax,) = [command for _, name, command in records if name == "package on JAX (newest)"]
    for path in APART:
        assert f"--ignore={path}" in tensorflow and f"--ignore={path}" in jax
        environments = sorted(Path(command.split()[0]).parent.parent.name for _, _, command in records
                              if path in command and "--ignore" not in command)
        assert environments == ([".venv", ".venv-colab"] if path in dev.TRAINING_TESTS else [".venv-colab"])
    (training_on_jax,) = [command for _, name, command in records if name == "training on JAX (newest)"]
    assert "not single_backend" in training_on_jax


def test_spare_parts_go_to_the_lanes_that_are_free_first_and_each_runs_once(tmp_path, monkeypatch):
    monkeypatch.setattr(dev, "ROOT", tmp_path)
    taken, last_taken = [], threading.Event()

    def part(lane, name, command, backend, log):
        taken.append((lane, name))
        if name == "own":  # the long lane's own part lasts until the other lane has taken the last spare part
            assert last_taken.wait(timeout=60)
        if name == "spare 3":
            last_taken.set()
        return 0, 0.0

    monkeypatch.setattr(dev, "_run_part", part)
    spare = dev.SpareParts([(f"spare {i}", ["pytest"], "tensorflow") for i in range(4)])
    results, ran_in = {}, {}
    long_lane = threading.Thread(target=dev._run_lane, args=("long", [("own", ["pytest"], "tensorflow")],
                                                             tmp_path / "long.log", results),
                                 kwargs={"spare": spare, "lanes": ran_in})
    long_lane.start()
    dev._run_lane("short", [("short's own", ["pytest"], "tensorflow")], tmp_path / "short.log", results,
                  spare=spare, lanes=ran_in)
    long_lane.join()
    # The short lane took every spare part, in their order, while the long one ran its own; each ran once.
    assert [entry for entry in taken if entry[0] == "short"] == [
        ("short", "short's own"), *[("short", f"spare {i}") for i in range(4)]]
    assert [entry for entry in taken if entry[0] == "long"] == [("long", "own")]
    assert ran_in == {"own": "long", "short's own": "short", **{f"spare {i}": "short" for i in range(4)}}
    assert all(status == 0 for _, status, _ in results.values()) and spare.take() is None
    assert "=== spare 3: pytest" in (tmp_path / "short.log").read_text()
    # A lane whose environment failed takes none: they are left for the others (or fail the run).
    spare = dev.SpareParts([("left", ["0"], "tensorflow")])
    dev._run_lane("broken", [], tmp_path / "broken.log", results, environment=dev.Background(lambda: sys.exit("no")),
                  spare=spare)
    assert [name for name, *_ in spare.left()] == ["left"] and spare.take() is None


def test_a_failed_nbval_run_fails_the_book_lane_without_building_anything(tmp_path, monkeypatch):
    records, log, status = _lanes_as_run(monkeypatch, tmp_path, nbval_status=1)
    assert status == 1
    assert not any(name.startswith(("book", "browser")) for _, name, _ in records)
    assert ("=== book (nbval's notebooks; newest): not run: nbval (TensorFlow; Colab's versions) failed\n"
            "=== browser checks (Chromium): not run: nbval (TensorFlow; Colab's versions) failed") in log("book")
    assert len(records) == 4 + 6  # the other lanes' parts and every spare part run all the same


def test_a_failed_environment_fails_the_parts_that_need_it_and_the_others_run(tmp_path, monkeypatch, capsys):
    records, log, status = _lanes_as_run(monkeypatch, tmp_path, nbval_status=0, newest_fails=True)
    assert status == 1
    assert {lane for lane, _, _ in records} == {"notebooks", "tensorflow"}  # the lanes on Colab's versions
    ran = {name for _, name, _ in records}
    assert not any("newest" in name for name in ran) and len(ran) == 3 + 4  # all that needs .venv-colab only
    assert "lane backends did not start: pip failed" in log("backends")
    table = capsys.readouterr().out.split("test parts (")[1]
    for name in ("package on JAX (newest)", "training on JAX (newest)", "package on PyTorch (newest)"):
        assert re.search(rf"{re.escape(name)} +0 s +FAILED \(1\)", table)


def test_a_selection_of_tests_leaves_the_book_out_rather_than_execute_the_chapters_nbval_left_out(tmp_path,
                                                                                                 monkeypatch):
    records, _, status = _lanes_as_run(monkeypatch, tmp_path, nbval_status=0, pytest_args=["-k", "attention"])
    assert status == 0
    assert not any(name.startswith(("book", "browser")) for _, name, _ in records)
    assert len(records) == 4 + 6 and all("-k attention" in command for _, _, command in records)


def test_a_gate_opens_for_the_lane_that_waits_even_when_its_part_never_ran(tmp_path, monkeypatch):
    monkeypatch.setattr(dev, "ROOT", tmp_path)
    gate, results = dev.Gate(), {}
    failing = dev.Background(lambda: sys.exit("no environment"))
    dev._run_lane("first", [("part", [sys.executable, "-c", "pass"], "tensorflow")], tmp_path / "first.log", results,
                  environment=failing, gates={"part": gate})
    with pytest.raises(SystemExit, match="part did not run"):
        gate.result()
    assert results["part"][1] == 1 and "no environment" in (tmp_path / "first.log").read_text()
    passed = dev.Gate()
    dev._run_lane("second", [("part", [sys.executable, "-c", "pass"], "tensorflow")], tmp_path / "second.log",
                  results, gates={"part": passed})
    assert passed.result() is None and results["part"][1] == 0
    # A part that waits for a failed one does not run; the lane's next part does.
    dev._run_lane("third", [("waits", [sys.executable, "-c", "pass"], "tensorflow", gate),
                            ("next", [sys.executable, "-c", "pass"], "tensorflow")], tmp_path / "third.log", results)
    assert results["waits"] == (0.0, 1, None) and results["next"][1] == 0
    assert "waits: not run: part did not run" in (tmp_path / "third.log").read_text()


# A program each backend compiles with XLA, then reports whether it compiled (a cache miss) or loaded it.
COMPILE_ONCE = """
import sys
import threading
backend = sys.argv[1]
if backend == "jax":
    import jax, jax.numpy as jnp
    from jax._src import monitoring
    hits = []
    monitoring.register_event_listener(lambda event, **kw: hits.append(event) if "cache_hits" in event else None)
    print(float(jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((8, 8))).sum()), "loaded" if hits else "compiled")
else:
    import tensorflow as tf
    print(float(tf.function(lambda x: tf.reduce_sum(tf.tanh(x) @ tf.transpose(x)), jit_compile=True)(
        tf.ones((8, 8)))))
"""


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_test_processes_share_a_compile_cache(tmp_path, backend):
    require(backend)
    cache = tmp_path / "compile-cache"
    environment = {**os.environ, **dev.compile_cache_environment(cache, environ={}), "TF_CPP_MIN_LOG_LEVEL": "3"}

    def run():
        done = subprocess.run([sys.executable, "-c", COMPILE_ONCE, backend], env=environment, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.split()

    first = run()
    entries = sorted(p.name for p in (cache / backend).rglob("*") if p.is_file())
    assert entries, f"nothing written to {cache / backend}"
    second = run()
    assert sorted(p.name for p in (cache / backend).rglob("*") if p.is_file()) == entries  # loaded, not added
    assert float(first[0]) == float(second[0]) == pytest.approx(8 * 8 * 8 * np.tanh(1.0))
    if backend == "jax":
        assert (first[1], second[1]) == ("compiled", "loaded")


def test_the_tasks_run_by_path_with_the_standard_library_only(tmp_path):
    """``python3 tools/dev.py`` as the README runs it, with no site-packages at all (``-S``), from the repository
    root and from elsewhere: the commands are the same, and they work on the repository."""
    assert dev.ROOT == ROOT
    for folder in (ROOT, tmp_path):
        done = subprocess.run([sys.executable, "-S", str(ROOT / "tools" / "dev.py"), "--help"], cwd=folder,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("usage: python3 tools/dev.py [-h] {setup,book,test,browser,browser-deps}")


def test_the_table_of_contents_is_read_without_yaml_in_the_running_python():
    """The book command stages the book before it has anything but the standard library: a Python without
    PyYAML (``-S``: no site-packages) reads ``_toc.yml`` through the environment's interpreter, the same."""
    read = f"import sys; sys.path.insert(0, {str(ROOT / 'tools')!r}); import dev; print(dev.toc_documents())"
    done = subprocess.run([sys.executable, "-S", "-c", read], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(dev.toc_documents())


def test_the_test_command_stops_at_once_when_a_disk_it_writes_to_is_too_full(tmp_path, monkeypatch):
    """Before anything is installed: the environments count only while one is missing, the test files on the disk of
    the temporary folder; the message names the free space, the need and what to do."""
    free = {"bytes": 9e9}
    monkeypatch.setattr(dev.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=free["bytes"]))
    needed = {"environments": 7.0, "test files": 2.5, "build": 0.5}
    monkeypatch.setattr(dev, "ROOT", tmp_path)  # the repository and the temporary folder on one disk
    present, missing = tmp_path / "venv", tmp_path / "venv-colab"
    present.mkdir()
    with pytest.raises(SystemExit) as stopped:
        dev.check_free_space(environments=(present, missing), temporary=tmp_path, needed=needed)
    message = str(stopped.value)
    assert "9.0 GB free" in message and "needs about 10.0 GB" in message and str(tmp_path) in message
    assert "TMPDIR" in message
    missing.mkdir()  # both environments there: the test files and the build only
    dev.check_free_space(environments=(present, missing), temporary=tmp_path, needed=needed)
    free["bytes"] = 2.9e9
    with pytest.raises(SystemExit, match="2.9 GB free .* needs about 3.0 GB") as stopped:
        dev.check_free_space(environments=(present, missing), temporary=tmp_path, needed=needed)
    assert "the two environments" in message and "the two environments" not in str(stopped.value)
