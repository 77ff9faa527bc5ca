"""Developer tasks: set up an environment, build the book, run the tests (standard library only).

Run from the repository root with any Python >= 3.10; it creates ``.venv`` on first use::

    python3 -m minicap.dev book     # set up, then build the rendered book into _build/html
    python3 -m minicap.dev test     # set up, then run the whole test suite (both Keras backends)

Other commands: ``setup`` (only the environment), ``book --executed DIR`` (build the book from
notebooks that were already executed, e.g. by the test suite's papermill run, without running
them again), ``browser`` (open every built page in headless Chromium and check it).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BUILD = ROOT / "_build"
EXECUTED = BUILD / "executed"  # where the test suite's papermill run leaves executed notebooks


def venv_python():
    """The environment's interpreter: the active one if it is a virtual environment, else .venv's."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.executable)
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(*command, env=None):
    print("+", " ".join(str(part) for part in command), flush=True)
    merged = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    completed = subprocess.run([str(part) for part in command], cwd=ROOT, env=merged)
    if completed.returncode:
        sys.exit(completed.returncode)


def setup(extras="book,test,browser,vit"):
    """Create .venv (unless one is active), install minicap with its extras, register the kernels."""
    python = venv_python()
    if not python.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", f".[{extras}]")
    run(python, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3",
        "--display-name", "Python 3")
    run(python, "-m", "minicap.cli", "kernel", "install", "--sys-prefix")
    return python


def test(pytest_args=()):
    """The whole suite: everything on TensorFlow (package, nbval, papermill), the package on JAX."""
    python = setup()
    run(python, "-m", "pytest", "tests", "book", "--nbval-lax", "-p", "no:cacheprovider", *pytest_args,
        env={"KERAS_BACKEND": "tensorflow"})
    run(python, "-m", "pytest", "tests", "-m", "not notebook and not browser", "-p", "no:cacheprovider",
        *pytest_args, env={"KERAS_BACKEND": "jax"})


def _staged_source(executed):
    """Copy the book's sources into _build/stage with the executed notebooks in place of the sources.

    Returns the staging directory. Fails if a notebook of the table of contents was not executed.
    """
    stage = BUILD / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for name in ("_toc.yml",):
        shutil.copy(ROOT / name, stage / name)
    config = (ROOT / "_config.yml").read_text()
    config = config.replace("execute_notebooks: cache", "execute_notebooks: \"off\"")
    (stage / "_config.yml").write_text(config)
    shutil.copytree(ROOT / "book", stage / "book",
                    ignore=shutil.ignore_patterns("*.ipynb", "runs", "_build", ".ipynb_checkpoints"))
    for source in sorted((ROOT / "book").glob("*.ipynb")):
        done = Path(executed) / source.name
        if not done.exists():
            sys.exit(f"{done} is missing: run the test suite first, or build without --executed")
        notebook = json.loads(done.read_text())
        for cell in notebook["cells"]:
            tags = cell.get("metadata", {}).get("tags", [])
            if "injected-parameters" in tags:  # papermill's cell: keep it out of the rendered page
                cell["metadata"]["tags"] = tags + ["remove-cell"]
        (stage / "book" / source.name).write_text(json.dumps(notebook, indent=1))
    return stage


def book(executed=None):
    """Build the rendered book into _build/html, with warnings as errors."""
    python = setup()
    source = _staged_source(executed) if executed else ROOT
    jupyter_book = python.parent / ("jupyter-book.exe" if os.name == "nt" else "jupyter-book")
    run(jupyter_book, "build", source, "--path-output", ROOT, "-W", "--keep-going")
    print(f"the book is at {BUILD / 'html' / 'index.html'}")


def browser():
    """Open every page of the built book in headless Chromium and check it (see tests/browser).

    Needs Debian's chromium (and npm, which fetches MathJax for the offline pages): as root with
    apt-get, e.g. on a fresh CI machine, they are installed when missing. Screenshots of every page
    are left in _build/screenshots.
    """
    python = setup()
    missing = [package for package, program in (("chromium", "/usr/bin/chromium"), ("npm", "npm"))
               if not shutil.which(program)]
    if "MINICAP_CHROMIUM" in os.environ and "chromium" in missing:
        missing.remove("chromium")
    if missing:
        if not (shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0):
            sys.exit(f"missing {', '.join(missing)}: install Debian's packages (apt-get install {' '.join(missing)})")
        apt = {"DEBIAN_FRONTEND": "noninteractive"}
        run("apt-get", "update", "-q", env=apt)
        run("apt-get", "install", "-y", "-q", *missing, env=apt)
    run(python, "-m", "pytest", "tests/browser", "-m", "browser", "-p", "no:cacheprovider")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m minicap.dev", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("setup", help="create .venv and install minicap with its extras")
    build = commands.add_parser("book", help="build the rendered book into _build/html")
    build.add_argument("--executed", metavar="DIR",
                       help=f"reuse notebooks already executed into DIR (e.g. {EXECUTED.relative_to(ROOT)})")
    tests = commands.add_parser("test", help="run the whole test suite")
    tests.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed on to pytest")
    commands.add_parser("browser", help="check the built book in headless Chromium")
    args = parser.parse_args(argv)
    if args.command == "setup":
        setup()
    elif args.command == "book":
        book(args.executed)
    elif args.command == "test":
        test(args.pytest_args)
    else:
        browser()


if __name__ == "__main__":
    main()
