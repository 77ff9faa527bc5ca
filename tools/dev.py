"""Developer tasks: set up an environment, build the book, run the tests (standard library only).

Run with any Python >= 3.10, from the repository root or any other folder (every command runs in the
repository root); it creates ``.venv`` on first use::

    python3 tools/dev.py book     # set up, then build the rendered book into _build/html
    python3 tools/dev.py test     # set up, then run the whole test suite (TensorFlow, JAX, PyTorch)

The book command executes each notebook through jupyter-book's cache, which the test command's
nbval run fills: after the tests, the book reuses the notebooks they executed; on a fresh machine it
executes them itself. Other commands: ``setup`` (only the environment), ``browser`` (open every
built page in headless Chromium and check it), ``browser-deps`` (install what ``browser`` needs).
"""
import argparse
import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: this file is tools/dev.py
VENV = ROOT / ".venv"  # the newest releases: the JAX and PyTorch lanes, the book, the browser checks
COLAB_VENV = ROOT / ".venv-colab"  # Colab's versions: the notebooks and the TensorFlow lanes
COLAB_VERSIONS = ROOT / "tools" / "colab-versions.txt"  # Colab's library versions, as pip constraints
BUILD = ROOT / "_build"
JUPYTER_CACHE = BUILD / ".jupyter_cache"  # jupyter-book's execution cache (see book())
COMPILE_CACHE = BUILD / "compile-cache"  # the test processes' shared XLA executables (see compile_cache_environment())


def venv_python():
    """The environment's interpreter: the active one if it is a virtual environment, else .venv's."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.executable)
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(*command, env=None, log=None):
    """Run ``command`` in the repository root; exit with its status if it fails. ``log``: an open file that
    takes the command line and its output (by default, this process's output)."""
    print("+", " ".join(str(part) for part in command), file=log or sys.stdout, flush=True)
    merged = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    completed = subprocess.run([str(part) for part in command], cwd=ROOT, env=merged, stdout=log,
                               stderr=subprocess.STDOUT if log else None)
    if completed.returncode:
        sys.exit(completed.returncode)


def setup(extras="book,test,torch,browser,vit"):
    """Create .venv (unless one is active), install minicap with its extras (the newest releases of everything),
    register the kernels. The JAX and PyTorch lanes of the tests, the book and the browser checks run here.

    Done once per environment and pyproject.toml: a stamp in the environment records what was installed, so
    the next command (e.g. the book after the tests) skips pip while nothing changed.
    """
    python = venv_python()
    if not python.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    return _install(python, extras)


def setup_colab(extras="book,test,vit"):
    """Create .venv-colab with the newest Python this machine has and install minicap there with Colab's library
    versions (``tools/colab-versions.txt``, a pip constraints file), vit-keras as the notebooks' setup cell installs
    it on Colab; register the kernels. The notebooks and the TensorFlow package tests run here: what a learner
    runs on Colab."""
    python = COLAB_VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.exists():
        interpreter = newest_python()
        print(f"creating {COLAB_VENV} with {interpreter}", flush=True)
        run(interpreter, "-m", "venv", COLAB_VENV)
    return _install(python, extras, COLAB_VERSIONS)


def _install(python, extras, constraints=None):
    stamp = python.parent.parent / "minicap-setup.json"
    wanted = {"extras": extras, "pyproject": hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest(),
              "root": str(ROOT), "kernel_backend": os.environ.get("KERAS_BACKEND", "tensorflow")}
    if constraints is not None:
        wanted["constraints"] = hashlib.sha256(Path(constraints).read_bytes()).hexdigest()
    try:
        if json.loads(stamp.read_text()) == wanted:
            return python
    except (OSError, ValueError):
        pass
    pin = ["-c", constraints] if constraints is not None else []
    # Every module is compiled to bytecode as it is installed: where PYTHONDONTWRITEBYTECODE is set (CI's machine)
    # Python never keeps what it compiles, and every test process would compile TensorFlow's modules again (the
    # lanes took ~200 CPU s more).
    run(*installer(python), *pin, "-e", f".[{extras}]")
    pip = [*pip_install(python), *pin]
    if constraints is not None and "vit" in extras.split(","):
        # vit-keras 0.2.0 declares Python < 3.12 (the vit extra skips it there); its code runs on newer ones, and
        # Colab's setup cell installs it so (minicap/colab.py).
        run(*pip, "--no-deps", "--ignore-requires-python", "vit-keras==0.2.0")
    run(python, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3",
        "--display-name", "Python 3")
    run(python, "-m", "minicap.cli", "kernel", "install", "--sys-prefix")
    stamp.write_text(json.dumps(wanted))
    return python


def pip_install(python):
    """pip's install command in ``python``'s environment, quiet."""
    return [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]


def installer(python):
    """The command that installs packages into ``python``'s environment: uv's ``uv pip install``, which pip installs
    there first (uv resolves, downloads, unpacks and compiles in parallel: on the 2-core machine, alone, the Colab
    environment took 17 s and 29 CPU s against pip's 46 s and 45, the newest one with PyTorch 25 s and 43 against
    70 s and 68, the same versions of every package), with the local wheels, indexes and constraints pip is
    configured with on this machine (``pip config``: uv reads no pip configuration), so that it installs what pip
    would (a local CPU build of PyTorch, not PyPI's CUDA build); pip itself where uv cannot be installed."""
    python = Path(python)
    uv = python.parent / ("uv.exe" if os.name == "nt" else "uv")
    pip = pip_install(python)
    if not uv.exists():
        done = subprocess.run([*map(str, pip), "uv"], cwd=ROOT, capture_output=True, text=True)
        if done.returncode or not uv.exists():
            print(f"uv could not be installed ({(done.stderr.strip().splitlines() or ['no uv'])[-1]}): pip installs "
                  f"instead", flush=True)
            return pip
    return [uv, "pip", "install", "-q", "--python", python, "--compile-bytecode", *pip_configuration(python)]


def pip_configuration(python):
    """pip's settings on this machine (its configuration files and ``PIP_*`` variables, as ``pip config list``
    shows them) that change what is installed, as ``uv pip install`` options: local wheel folders (``find-links``),
    indexes and constraint files; those naming a folder or file that is not there are left out (pip only warns
    about them)."""
    done = subprocess.run([str(python), "-m", "pip", "config", "list"], capture_output=True, text=True)
    options = {"find-links": "--find-links", "index-url": "--index-url", "extra-index-url": "--extra-index-url",
               "constraint": "--constraint"}
    found = []
    for line in done.stdout.splitlines():
        match = re.fullmatch(r"[^.]*\.([a-z-]+)='(.*)'", line.strip())
        if not match or match.group(1) not in options:
            continue
        for value in match.group(2).split():
            local = value[len("file://"):] if value.startswith("file://") else value
            if "://" in local or Path(local).exists():
                argument = [options[match.group(1)], value]
                if argument not in found:
                    found.append(argument)
    if any(option.endswith("index-url") for option, _ in found):  # pip takes the best match of all its indexes
        found.append(["--index-strategy", "unsafe-best-match"])
    return [part for argument in found for part in argument]


def newest_python(candidates=None):
    """The newest CPython 3.10+ that runs here: ``python3.N`` on PATH (N from 20 down), then pyenv's versions
    (``$PYENV_ROOT/versions``), then this interpreter. Colab runs the newest Python (3.13 today)."""
    if candidates is None:
        pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
        candidates = [shutil.which(f"python3.{minor}") for minor in range(20, 9, -1)]
        candidates += sorted(pyenv.glob("3.*/bin/python3"), reverse=True) if pyenv.is_dir() else []
        candidates.append(sys.executable)
    found = []
    for candidate in filter(None, candidates):
        try:  # a pyenv shim of a version that is not selected exits with an error
            done = subprocess.run([str(candidate), "-c", "import sys, venv, ensurepip; print(*sys.version_info[:2])"],
                                  capture_output=True, text=True, timeout=60)
        except OSError:
            continue
        if done.returncode == 0:
            version = tuple(int(part) for part in done.stdout.split())
            if version >= (3, 10):
                found.append((version, str(candidate)))
    if not found:
        sys.exit("no Python 3.10 or newer with venv found for the Colab environment")
    return max(found, key=lambda item: item[0])[1]


class Background:
    """``function()`` run in a thread from now on; ``result()`` waits for it and returns its value, or raises the
    SystemExit it raised (a failed pip install)."""

    def __init__(self, function):
        self._value = None
        self._thread = threading.Thread(target=self._run, args=(function,))
        self._thread.start()

    def _run(self, function):
        try:
            self._value = function()
        except SystemExit as error:
            self._value = error

    def result(self):
        self._thread.join()
        if isinstance(self._value, SystemExit):
            raise self._value
        return self._value


class Gate:
    """A start condition that another thread opens: ``result()`` waits until ``open()``, then returns, or raises
    ``SystemExit(reason)`` when it was opened with a reason not to go on (the part it waited for failed)."""

    def __init__(self):
        self._opened, self._reason = threading.Event(), None

    def open(self, reason=None):
        if not self._opened.is_set():
            self._reason = reason
            self._opened.set()

    def result(self):
        self._opened.wait()
        if self._reason:
            raise SystemExit(self._reason)


class SpareParts:
    """Test parts that no lane owns: a lane that has run its own parts takes the next one (``take()``, first come,
    first served) until none is left, so that the lanes end close together however long each one's own parts took
    in this run. ``left()`` returns, and removes, those no lane took (every lane stopped early)."""

    def __init__(self, parts):
        self._parts, self._lock = list(parts), threading.Lock()

    def take(self):
        with self._lock:
            return self._parts.pop(0) if self._parts else None

    def left(self):
        with self._lock:
            left, self._parts = self._parts, []
        return left


# Disk space the test command takes at most, in GB, measured on the 2-core machine (.ci/run on a fresh clone, du
# every 30 s): the two environments, 7.8 (uv's cache, on the same disk, shares their files through hard links), the
# test files at their largest, 1.36, here 1.5 (pytest's temporary folders: the photos tests' stand-ins; 4.8 before
# passing tests' folders were deleted as they end, pyproject.toml), and the build, 0.25, here 0.3 (notebooks,
# compile cache, pages).
SPACE_NEEDED = {"environments": 7.8, "test files": 1.5, "build": 0.3}


def check_free_space(environments=(VENV, COLAB_VENV), temporary=None, needed=SPACE_NEEDED):
    """Exit with a clear message, before anything is installed or run, when a disk the test command writes to has
    too little free space for it (``needed``, in GB: environments not yet created and the build in the repository,
    the test files in ``temporary``, by default Python's temporary folder); a run that fills a disk fails after
    minutes, in the middle of a part."""
    temporary = Path(temporary or tempfile.gettempdir())
    wanted = [(ROOT, "the build", needed["build"]), (temporary, f"the test files in {temporary}", needed["test files"])]
    if not all(Path(environment).exists() for environment in environments):
        wanted.append((ROOT, "the two environments", needed["environments"]))
    by_disk = {}
    for folder, what, gigabytes in wanted:
        by_disk.setdefault(os.stat(folder).st_dev, []).append((folder, what, gigabytes))
    for items in by_disk.values():
        free, gigabytes = shutil.disk_usage(items[0][0]).free / 1e9, sum(item[2] for item in items)
        if free < gigabytes:
            folders = " and ".join(dict.fromkeys(str(folder) for folder, _, _ in items))
            parts = ", ".join(f"{what} {amount} GB" for _, what, amount in items)
            advice = " Free some space" + (", or set TMPDIR to a folder on a disk with room for the test files."
                                           if any(folder == temporary for folder, _, _ in items) else ".")
            sys.exit(f"not enough free disk space for the test command: {free:.1f} GB free on the disk of {folders}, "
                     f"and it needs about {gigabytes:.1f} GB there ({parts}).{advice}")


def setup_both():
    """Both environments, set up side by side (the installers spend part of their time waiting on downloads)."""
    newest, colab = Background(setup), Background(setup_colab)
    return newest.result(), colab.result()


def test(pytest_args=()):
    """The whole suite, in four lanes that run side by side, each a sequence of pytest runs, and six spare parts
    that the lanes take as they become free, on two sets of library versions:

    - **notebooks** (Colab's versions): nbval executes every notebook on TensorFlow with its own parameters and
      stores them in jupyter-book's cache for the book command (tests/support/notebook_cache.py). It trains two
      models (chapter 5's and the appendix's), the longest part of the suite;
    - **TensorFlow** (Colab's versions): papermill runs chapters 1-4 on JAX and chapters 5-6 and the photos
      notebook with the photos profile on offline stand-ins (tests/test_notebooks.py); then the package tests on
      TensorFlow;
    - **other backends** (the newest releases): the package tests whose result depends on the backend on JAX (not
      those marked ``single_backend``);
    - **book**, once nbval has passed: the book built from the notebooks it executed (the book command), then every
      page checked in headless Chromium (tests/browser), while the other lanes go on: the checks wait on the
      browser as much as they compute. Debian's chromium is installed in the background at the start where it is
      missing and the command runs as root (``browser_dependencies``); elsewhere without it, the checks skip
      (and fail under CI). With pytest arguments (``-k attention``) the book and the browser checks are left out:
      nbval may then execute some notebooks only, and the book command would execute the others itself;
    - **spare parts** (``SpareParts``), the longest first: the photos path end to end and rehearsed
      (``PHOTOS_TESTS``), the training tests on TensorFlow (``TRAINING_TESTS``), the two-device training runs
      (``DEVICE_TESTS``), the training tests on JAX, the benchmarks' tests (``BENCH_TESTS``), each on Colab's
      versions but the JAX training tests, and the package tests on PyTorch (newest), which runs eagerly, so it
      leaves out the slow ones. The package parts leave out the files of the first four. A lane that has run its own
      parts takes the next spare part until none is left: how long each lane's own parts take changes from run to
      run, and in the last two runs with every part fixed to a lane, the first lane and the last ended 168 and 432 s
      apart, another lane last each time.

    Colab's versions (``tools/colab-versions.txt``: TensorFlow 2.20.0, Keras 3.13.2, JAX 0.7.2, numpy 2.1.3) are
    installed in ``.venv-colab`` on the newest Python here: what a learner runs. The newest releases are in
    ``.venv``. Both environments are set up side by side, and each lane starts as soon as its own is ready.

    Every part runs at normal priority. (Two lanes once ran at a lower one, meant to leave the cores to nbval; but
    where Linux groups each session's processes for the scheduler, "autogroup", as on the 2-core machine, nbval's
    notebook kernels, which Jupyter starts in sessions of their own, get their group's share whatever the niceness,
    and the lower priority only slowed those lanes' last parts behind the others: the TensorFlow training tests took
    375 s for 128 CPU s and ended the run.) CPU seconds of each part in the suite's last two runs on a 2-core
    machine with an empty compile cache (as on CI): nbval 545-565; papermill 170 (211 before its JAX kernels
    compiled unoptimised, tests/test_notebooks.py); the TensorFlow package tests 167-168, its training tests
    128-133; JAX 271-282 (compiled unoptimised, ``BACKEND_VARIABLES``), its training tests 81-83; PyTorch 45-47; the
    photos path and rehearsal 222-225; the two-device runs 103-122 (before their JAX subprocesses compiled
    unoptimised, tests/test_distributed.py: its JAX tests alone took 40 CPU s against 61); the benchmarks 63-71; the
    book 11, the browser checks 53-54. The lanes ended within 19 s of each other (1,016-1,035 s). The summary says
    when each part started and ended, and in which lane.

    Every part shares one compile cache, ``_build/compile-cache/`` (``compile_cache_environment``): a program
    that XLA compiled for one process is loaded by the next, in this run and in later ones.

    Each lane's output goes to ``_build/test-logs/``, and is printed when the lane ends; the last lines say how
    long each part took and the CPU time it used. Fails (exit status 1) if any part fails.
    """
    check_free_space()
    logs = BUILD / "test-logs"
    logs.mkdir(parents=True, exist_ok=True)
    # Both environments are set up side by side, and each lane starts as soon as its own is ready; Debian's
    # chromium, for the browser checks, is installed meanwhile where it is missing (as root; its log in logs/).
    environments = {"newest": Background(setup), "colab": Background(setup_colab)}
    # With pytest arguments (a selection, e.g. -k attention), nbval may execute only some notebooks, and the book
    # command would execute the others itself (chapter 5's training among them): the book is left out then.
    whole = not pytest_args
    chromium = Background(lambda: browser_dependencies(logs / "browser-deps.log") if whole else None)
    newest, colab = VENV / "bin" / "python", COLAB_VENV / "bin" / "python"

    def pytest(python, *arguments):
        return [python, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.support.notebook_cache",
                "--durations=10", *pytest_args, *arguments]

    package = "not notebook and not browser"
    # nbval executes a fresh copy of the book (as the book command does), so that no run a reader left in
    # book/runs is loaded in place of the one the chapters train.
    staged = BUILD / "nbval"
    environments["colab"].result()  # (reading _toc.yml may need an environment's PyYAML)
    stage_book(staged)
    notebooks = [staged / path for path in executed_notebooks(staged)]
    nbval = "nbval (TensorFlow; Colab's versions)"
    nbval_done = Gate()  # the book lane waits for the notebooks nbval executed

    def book_ready():
        environments["newest"].result()
        nbval_done.result()
        try:
            chromium.result()
        except SystemExit:  # no chromium: the browser checks say so (and fail under CI)
            pass

    the_book = Background(book_ready)
    book_parts = [
        ("book (nbval's notebooks; newest)", [sys.executable, ROOT / "tools" / "dev.py", "book"],
         os.environ.get("KERAS_BACKEND", "tensorflow"), the_book),
        ("browser checks (Chromium)", pytest(newest, "tests/browser", "-m", "browser"), "tensorflow", the_book),
    ] if whole else []
    # Package tests that run in parts of their own, spare parts (below): the package parts leave them out.
    apart = PHOTOS_TESTS + TRAINING_TESTS + DEVICE_TESTS + BENCH_TESTS
    lanes = {  # name: (environment, parts: (name, command, backend[, what it waits for first]))
        "notebooks": ("colab", [(nbval, pytest(colab, *notebooks, "--nbval-lax"), "tensorflow")]),
        "tensorflow": ("colab", [
            ("papermill (ch1-4 on JAX; photos: ch5 JAX, ch6 TensorFlow; Colab's versions)",
             pytest(colab, "tests/test_notebooks.py", "-m", "notebook"), "tensorflow"),
            ("package on TensorFlow (Colab's versions)",
             pytest(colab, "tests", "-m", package, *(f"--ignore={path}" for path in apart)), "tensorflow"),
        ]),
        "backends": ("newest", [
            ("package on JAX (newest)", pytest(newest, "tests", "-m", f"{package} and not single_backend",
                                               *(f"--ignore={path}" for path in apart)), "jax"),
        ]),
        # Once nbval has executed the notebooks: the book built from them (the book command, which finds them in
        # jupyter-book's cache), then every page checked in headless Chromium, while the other lanes go on.
        "book": ("newest", book_parts),
    }
    # Then each lane takes these, the longest first (CPU seconds in the suite: 225, 128, 103, 81, 63, 45), until
    # none is left (SpareParts): however long each lane's own parts took in this run, the lanes end close together.
    # Each waits for its own environment.
    colab_ready, newest_ready = environments["colab"], environments["newest"]
    spare = SpareParts([
        ("photos end to end, and rehearsed (TensorFlow; Colab's versions)",
         pytest(colab, *PHOTOS_TESTS, "-m", package), "tensorflow", colab_ready),
        ("training on TensorFlow (Colab's versions)", pytest(colab, *TRAINING_TESTS, "-m", package), "tensorflow",
         colab_ready),
        ("two devices (TensorFlow and JAX; Colab's versions)", pytest(colab, *DEVICE_TESTS, "-m", package),
         "tensorflow", colab_ready),
        ("training on JAX (newest)", pytest(newest, *TRAINING_TESTS, "-m", f"{package} and not single_backend"),
         "jax", newest_ready),
        ("benchmarks (TensorFlow and JAX; Colab's versions)", pytest(colab, *BENCH_TESTS, "-m", package),
         "tensorflow", colab_ready),
        ("package on PyTorch (newest)",
         pytest(newest, "tests", "-m", f"{package} and not single_backend and not slow"), "torch", newest_ready),
    ])
    if not whole:
        print("pytest arguments given: the book and the browser checks are left out (python3 tools/dev.py book, "
              "then python3 tools/dev.py browser)", flush=True)
    results, spans, ran_in, threads = {}, {}, {}, []
    start = time.perf_counter()
    for lane, (environment, parts) in lanes.items():
        thread = threading.Thread(target=_run_lane, name=f"lane {lane}",
                                  args=(lane, parts, logs / f"{lane}.log", results, environments[environment]),
                                  kwargs={"spans": spans, "origin": start, "gates": {nbval: nbval_done},
                                          "spare": spare, "lanes": ran_in})
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    for name, *_ in spare.left():  # every lane stopped before taking it (their environments failed)
        results[name] = (0.0, 1, None)
    wall = time.perf_counter() - start
    print(f"\ntest parts ({len(lanes)} lanes side by side; {wall:.0f} s in all; CPU seconds: what a part kept "
          f"the {os.cpu_count()} cores busy; from-to: seconds since the lanes started, a lane's first part waiting "
          f"for its environment; the lane that ran it):", flush=True)
    for name, (seconds, returncode, cpu_seconds) in results.items():
        cpu = "" if cpu_seconds is None else f"{cpu_seconds:7.0f} CPU s"
        span = f"{spans[name][0]:5.0f}-{spans[name][1]:<5.0f}" if name in spans else " " * 11
        status = "passed" if returncode == 0 else f"FAILED ({returncode})"
        print(f"  {name:50} {seconds:6.0f} s {cpu}  {span} {ran_in.get(name, ''):10} {status}")
    cpu_total = sum(cpu for _, _, cpu in results.values() if cpu is not None)
    if cpu_total:
        print(f"  {'all parts':50} {wall:6.0f} s {cpu_total:7.0f} CPU s  (the cores were "
              f"{cpu_total / (wall * os.cpu_count()):.0%} busy)", flush=True)
    if any(returncode for _, returncode, _ in results.values()):
        sys.exit(1)


def quick_test(pytest_args=()):
    """The inner loop: the package's tests on TensorFlow, leaving out the notebooks, the browser and the tests marked
    slow, stopping at the first failure; both cores share the tests (pytest-xdist). What it leaves out, the whole
    suite (``test``) runs."""
    python = setup()
    environment = {"KERAS_BACKEND": "tensorflow", **compile_cache_environment()}
    start = time.perf_counter()
    run(python, "-m", "pytest", "tests", "-m", "not notebook and not browser and not slow", "-x", "-q",
        "-p", "no:cacheprovider", "-n", str(min(os.cpu_count() or 1, 2)), *pytest_args, env=environment)
    print(f"quick tests passed in {time.perf_counter() - start:.0f} s (the whole suite: python3 tools/dev.py test)")


def executed_notebooks(root=ROOT):
    """The notebooks of ``_toc.yml`` that the book executes, relative to ``root``: all but those whose metadata
    turns execution off (``"mystnb": {"execution_mode": "off"}``, e.g. the photos notebook, which needs downloads
    no machine that builds the book can make; tests/test_notebooks.py runs it on stand-ins)."""
    found = []
    for document in toc_documents(root):
        if document.endswith(".ipynb"):
            metadata = json.loads((Path(root) / document).read_text(encoding="utf-8")).get("metadata", {})
            if metadata.get("mystnb", {}).get("execution_mode") != "off":
                found.append(document)
    return found


def compile_cache_environment(directory=COMPILE_CACHE, environ=os.environ):
    """Variables that make every test process (notebook kernels and subprocesses inherit them) keep the
    programs XLA compiles in ``directory`` and load them from there when another process compiled them first.

    JAX compiles each op it runs eagerly and each jitted function; without this, every process compiles
    them anew (the op-by-op warm-up of a tiny training, 27 s, took 8 s with a cache another process had
    filled, on a 2-core CPU). TensorFlow keeps the XLA-compiled training steps (``jit_compile``), e.g. of
    the photos tests' training processes, which compile the same step. An entry is found only for the same
    program, compiler version and flags, so a stale one is never used; delete ``directory`` to reclaim the
    space.
    """
    directory = Path(directory)
    for backend in ("jax", "tensorflow"):
        (directory / backend).mkdir(parents=True, exist_ok=True)
    tf_flags = f"{environ.get('TF_XLA_FLAGS', '')} --tf_xla_persistent_cache_directory={directory / 'tensorflow'}"
    return {"JAX_COMPILATION_CACHE_DIR": str(directory / "jax"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # also the eager ops' many short compilations
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
            "TF_XLA_FLAGS": tf_flags.strip()}


# Package tests that run as spare parts of the test command (test()), each file in one part per backend it runs on,
# the package parts leaving them out: the photos path end to end and its rehearsal at Flickr8k's size, and the
# two-device training runs and the benchmarks (Colab's versions, on TensorFlow; they run JAX in subprocesses
# themselves); the training tests, which train and resume tiny models, the package tests' longest file (114 of
# the TensorFlow part's 259 CPU s, measured test by test on the 2-core machine), on TensorFlow and on JAX.
PHOTOS_TESTS = ("tests/test_photos.py", "tests/test_rehearse_photos.py")
TRAINING_TESTS = ("tests/test_train.py",)
DEVICE_TESTS = ("tests/test_distributed.py",)
BENCH_TESTS = ("tests/test_bench.py",)

# What a part on a backend runs with besides KERAS_BACKEND. PyTorch's OpenMP threads wait for work by spinning,
# which on a machine the other lanes keep busy burns CPU time they need: with one thread, the PyTorch tests of
# test_train, test_reliability and test_model took 37 CPU s instead of 97 beside two busy processes, and 30 instead
# of 44 on an idle machine (2-core machine). (TensorFlow's threads showed no such cost: tests/test_model.py took
# 52 CPU s with one thread or the default.)
#
# JAX's package tests compile for every call of a new shape: each op run eagerly, each step of a tiny model, most
# of them run once or a few times. LLVM's optimisations of the compiled code cost more CPU time there than they
# save (XLA's --xla_backend_optimization_level, 2 by default): the JAX part's 368 tests, all passing, took 343 CPU
# s at level 0 against 385, each with an empty compile cache of its own as on CI (without one: 433, 500 at level 1,
# 570 at 2); the tests that run a ViT-B/32 at full size ran slower, the many small ones faster (2-core machine,
# the runs side by side). Not for TensorFlow: its first compile took as long at level 0, and the book's training
# steps ran 10 times slower.
BACKEND_VARIABLES = {"torch": {"OMP_NUM_THREADS": "1"},
                     "jax": {"XLA_FLAGS": "--xla_backend_optimization_level=0"}}


def part_environment(backend, environ=os.environ):
    """The environment a test part on ``backend`` runs in: ``environ`` with its backend, the shared compile cache
    (``compile_cache_environment``) and ``BACKEND_VARIABLES``; flags of ``XLA_FLAGS`` are added to those
    ``environ`` has, not put in their place."""
    environment = {**environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": backend,
                   **compile_cache_environment(COMPILE_CACHE, environ)}
    for name, value in BACKEND_VARIABLES.get(backend, {}).items():
        environment[name] = f"{environ.get(name, '')} {value}".strip() if name == "XLA_FLAGS" else value
    return environment


def _run_lane(lane, parts, log_path, results, environment=None, spans=None, origin=None, gates=None, spare=None,
              lanes=None):
    """Run a lane's parts one after the other (all of them, even after a failure), then, where ``spare`` (a
    ``SpareParts``) is given, the spare parts it takes until none is left; output to ``log_path``, once
    ``environment`` (a ``Background`` setup, or anything with such a ``result()``) is ready; if it failed, every
    part of the lane fails and it takes no spare part. ``results[name]`` is (seconds, exit status, CPU seconds);
    ``spans[name]``, where given, (start, end) in seconds since ``origin`` (a ``time.perf_counter()``; by default,
    when the lane started); ``lanes[name]``, where given, the lane that ran it. ``gates``: a ``Gate`` per part name,
    opened when that part ends (with a reason when it failed or never ran), which another lane may wait for."""
    origin = time.perf_counter() if origin is None else origin
    gates, taken = gates or {}, []
    try:
        _run_parts(lane, parts, log_path, results, environment, spans, origin, gates, spare, lanes, taken)
    finally:  # whatever happened, no lane waits for ever
        for name, *_ in [*parts, *taken]:
            if name in gates:
                gates[name].open(f"{name} did not run")


def _run_parts(lane, parts, log_path, results, environment, spans, origin, gates, spare, lanes, taken):
    """``_run_lane``'s work. A part may name more items, each something with a ``result()`` to wait for first
    (e.g. a ``Background``); if one fails, the part fails without running, and the lane goes on. ``taken``: the
    spare parts this lane took, appended as it takes them."""
    if environment is not None:
        try:
            environment.result()
        except SystemExit as error:
            reason = error.code if isinstance(error.code, str) else "its environment could not be set up (above)"
            for name, *_ in parts:
                results[name] = (0.0, 1, None)
            log_path.write_text(f"lane {lane} did not start: {reason}\n", encoding="utf-8")
            with _PRINT_LOCK:
                print(f"\n===== lane {lane} did not start: {reason} =====", flush=True)
            return

    def spare_parts():
        while spare is not None and (part := spare.take()) is not None:
            taken.append(part)
            yield part

    with open(log_path, "w", encoding="utf-8") as log:
        for name, command, backend, *waits in itertools.chain(parts, spare_parts()):
            try:
                for wait in waits:
                    wait.result()
            except SystemExit as error:
                log.write(f"=== {name}: not run: {error.code}\n")
                log.flush()
                results[name] = (0.0, 1, None)
                if name in gates:
                    gates[name].open(f"{name} did not run")
                continue
            log.write(f"=== {name}: {' '.join(str(p) for p in command)}\n")
            log.flush()
            started = time.perf_counter()
            returncode, cpu_seconds = _run_part(lane, name, command, backend, log)
            ended = time.perf_counter()
            results[name] = (ended - started, returncode, cpu_seconds)
            if spans is not None:
                spans[name] = (started - origin, ended - origin)
            if lanes is not None:
                lanes[name] = lane
            if name in gates:
                gates[name].open(f"{name} failed" if returncode else None)
    with _PRINT_LOCK:
        print(f"\n===== lane {lane} ({os.path.relpath(log_path, ROOT)}) =====", flush=True)
        print(log_path.read_text(encoding="utf-8", errors="replace"), flush=True)


def _run_part(lane, name, command, backend, log):
    """Run the test part ``name``'s ``command`` for ``lane`` in the repository root, in
    ``part_environment(backend)``, its output to the open file ``log``; return its exit status and CPU seconds
    (``_wait_with_cpu_time``)."""
    process = subprocess.Popen([str(p) for p in command], cwd=ROOT, env=part_environment(backend), stdout=log,
                               stderr=subprocess.STDOUT)
    return _wait_with_cpu_time(process)


_PRINT_LOCK = threading.Lock()


def _wait_with_cpu_time(process):
    """Wait for ``process``; return its exit status and the CPU seconds (user and system) that it and the
    children it waited for (e.g. notebook kernels) used, or None where the platform cannot tell."""
    if not hasattr(os, "wait4"):
        return process.wait(), None
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_utime + usage.ru_stime


def _load_yaml(path):
    """The YAML file ``path`` as Python data. PyYAML comes with jupyter-book, in the environment: where the
    interpreter running this script has none (a bare Python), the environment's interpreter reads the file."""
    try:
        import yaml
    except ImportError:
        read = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1], encoding='utf-8'))))"
        python = venv_python()
        if not python.exists():  # the test command may read it before .venv is ready, once .venv-colab is
            python = COLAB_VENV / python.relative_to(VENV)
        completed = subprocess.run([str(python), "-c", read, str(path)], capture_output=True, text=True, check=True)
        return json.loads(completed.stdout)
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def toc_documents(root=ROOT):
    """The documents of ``_toc.yml`` (paths relative to ``root``, with their suffix), in reading order."""
    toc = _load_yaml(Path(root) / "_toc.yml")
    names = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                names.append(entry["file"])
            for key in ("sections", "chapters", "parts"):
                walk(entry.get(key))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    documents = []
    for name in names:
        found = [Path(name + suffix) for suffix in ("", ".ipynb", ".md") if (Path(root) / (name + suffix)).is_file()]
        if not found:
            sys.exit(f"_toc.yml names {name!r}, but there is no {name}.ipynb or {name}.md")
        documents.append(found[0].as_posix())
    return documents


# Files under book/ that are neither documents nor assets: run directories, build output, editor state.
_NOT_ASSETS = ("runs", "_build", ".*", "__pycache__", "*.pyc", "*.ipynb", "*.md")


def stage_book(stage, root=ROOT):
    """Copy exactly what the book is built from into ``stage``: the configuration, the documents of
    ``_toc.yml`` and the assets under ``book/`` (bibliography, local Sphinx extension, images).

    jupyter-book reads every source file under the folder it builds, hidden folders included, so a
    build from the repository root would also read (and execute) the notebooks of a virtual
    environment kept there. Built from the stage, it reads the book and nothing else. Returns the
    set of staged paths, relative to ``stage``.
    """
    root, stage = Path(root), Path(stage)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    staged = {"_config.yml", "_toc.yml", *toc_documents(root)}
    for directory, subdirectories, files in os.walk(root / "book"):
        subdirectories[:] = [d for d in subdirectories if not any(Path(d).match(p) for p in _NOT_ASSETS)]
        for name in files:
            if not any(Path(name).match(p) for p in _NOT_ASSETS):
                staged.add((Path(directory) / name).relative_to(root).as_posix())
    for document in toc_documents(root):
        staged |= included_files(root, document)
    for relative in sorted(staged):
        (stage / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, stage / relative)
    return staged


_INCLUDE = re.compile(r"^\s*(?:```+|:::+)\s*\{(?:literalinclude|include)\}\s+(\S+)", re.MULTILINE)


def included_files(root, document):
    """The files a document pulls in with ``{literalinclude}`` or ``{include}`` (e.g. an excerpt of
    minicap's code), relative to ``root``; an include that names a missing file is an error."""
    root = Path(root)
    text = (root / document).read_text(encoding="utf-8")
    if document.endswith(".ipynb"):
        text = "\n".join("".join(cell["source"]) for cell in json.loads(text)["cells"] if cell["cell_type"] == "markdown")
    found = set()
    for target in _INCLUDE.findall(text):
        path = ((root / document).parent / target).resolve()
        if not path.is_file() or root.resolve() not in path.parents:
            sys.exit(f"{document} includes {target!r}, which is not a file inside the repository")
        found.add(path.relative_to(root.resolve()).as_posix())
    return found


def book():
    """Build the rendered book into _build/html, with warnings as errors.

    The notebooks are executed through jupyter-book's cache (``_build/.jupyter_cache``): a notebook
    whose code has not changed since its last execution is not run again. The test suite's nbval
    run stores the notebooks it executed there (tests/support/notebook_cache.py), so after
    ``python3 tools/dev.py test`` the book reuses them; on a machine where the tests never ran, the
    cache is empty and the build executes every chapter itself.
    """
    python = setup()
    stage = BUILD / "stage"
    stage_book(stage)
    jupyter_book = python.parent / ("jupyter-book.exe" if os.name == "nt" else "jupyter-book")
    run(jupyter_book, "build", stage, "--path-output", ROOT, "-W", "--keep-going")
    print(f"the book is at {BUILD / 'html' / 'index.html'}")


def browser():
    """Open every page of the built book in headless Chromium and check it (see tests/browser).

    Needs Debian's chromium: as root with apt-get, e.g. on a fresh CI machine, it is installed when
    missing. Screenshots of every page are left in _build/screenshots.
    """
    python = setup()
    browser_dependencies()
    # Two workers: a page check waits on the browser (loading, MathJax's fonts) as much as it computes (one
    # worker: 117 s, 58 CPU s; two: 75-84 s, on the 2-core machine).
    run(python, "-m", "pytest", "tests/browser", "-m", "browser", "-p", "no:cacheprovider", "-n", "2")


def browser_dependencies(log_path=None):
    """Install Debian's chromium when it is missing, with apt-get (as root; otherwise say how and exit). The
    test command runs this in the background while it sets up the environments, apt-get's output going to
    ``log_path``; ``browser-deps`` runs it alone."""
    if shutil.which("/usr/bin/chromium") or "MINICAP_CHROMIUM" in os.environ:
        print("chromium is installed", flush=True)
        return
    if not (shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0):
        sys.exit("missing chromium: install Debian's package (apt-get install chromium)")
    apt = {"DEBIAN_FRONTEND": "noninteractive"}
    with open(log_path, "w", encoding="utf-8") if log_path else contextlib.nullcontext() as log:
        run("apt-get", "update", "-q", env=apt, log=log)
        run("apt-get", "install", "-y", "-q", "chromium", env=apt, log=log)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 tools/dev.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("setup", help="create .venv (the newest releases) and .venv-colab (Colab's versions) and "
                                      "install minicap with its extras in both")
    commands.add_parser("book", help="build the rendered book into _build/html")
    tests = commands.add_parser("test", help="run the whole test suite")
    tests.add_argument("--quick", action="store_true",
                       help="the inner loop: the package's tests on TensorFlow only, no notebooks, no slow tests, "
                            "stopping at the first failure (a few minutes)")
    tests.add_argument("pytest_args", nargs="*", help="passed on to every pytest run (e.g. --durations=50 or -x)")
    commands.add_parser("browser", help="check the built book in headless Chromium")
    commands.add_parser("browser-deps", help="install what the browser checks need (Debian's chromium)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "test":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "test":
        # pytest's arguments in the order given (argparse would put its unknown options after the rest: "-p name"
        # would reach pytest as "name -p"); "--quick" is ours, a first "--" only separates.
        rest = [a for a in argv[argv.index("test") + 1:] if a != "--quick"]
        args.pytest_args = rest[1:] if rest[:1] == ["--"] else rest
    if args.command == "setup":
        setup_both()
    elif args.command == "book":
        book()
    elif args.command == "test" and args.quick:
        quick_test(args.pytest_args)
    elif args.command == "test":
        test(args.pytest_args)
    elif args.command == "browser-deps":
        browser_dependencies()
    else:
        browser()


if __name__ == "__main__":
    main()
