"""Colab and Kaggle: the "Open in Colab" badge and the setup cell that every chapter notebook starts with,
and where a notebook keeps its run on Colab (:func:`notebook_storage`: Google Drive, when the reader asks).

The repository is named here and only here; ``_config.yml``'s ``repository.url`` must agree (a test
checks it). The setup cell runs before minicap is installed, so its source uses the standard library
only. On Colab (``google.colab`` imported) and on Kaggle (``KAGGLE_KERNEL_RUN_TYPE`` set) it installs
minicap from the repository *without its dependencies*, so that pip never replaces the TensorFlow, Keras
and JAX that those runtimes ship, then minicap's few small dependencies, which they have already (pip
leaves installed packages alone). The pretrained ViT-B/32 of the photos profile is minicap's own
(``minicap.vit``): it needs nothing more. Setting ``WITH_VIT_KERAS = True`` in the cell also installs
vit-keras 0.2.0, the article's ViT library (``CaptionConfig(vit_implementation="vit-keras")``): that
release declares ``Python <3.12`` while Colab and Kaggle run newer Pythons, so there it is installed
with ``--ignore-requires-python`` and without dependencies (its code runs on them; scipy, opencv and
typing_extensions come with both runtimes, validators is installed with it). Anywhere else the cell
installs nothing. tests/test_colab.py resolves the cell's pip commands against PyPI for Colab's Pythons
(3.13, and 3.12 as Colab's previous runtime and Kaggle's image have it), wheels only, next to Colab's
TensorFlow, Keras and JAX. The cell carries jupyter-book's ``remove-cell`` tag: the rendered page leaves
out this pip plumbing (the cell still runs when the book is built), while Colab and Kaggle, which ignore
tags, show and run it.

Keep the notebooks in line with this module::

    python -m minicap.colab sync [BOOK_DIR]           # rewrite badges and setup cells
    python -m minicap.colab sync --check [BOOK_DIR]   # only report, exit 1 if any notebook differs
"""
import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

REPOSITORY = "minicap-book/minicap"  # GitHub owner/name: the one place the repository is named
BRANCH = "main"
BOOK_DIR = "book"  # where the notebooks live, relative to the repository root
COLAB_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"

# minicap's dependencies (pyproject.toml) without tensorflow and keras, which Colab and Kaggle have already.
# pip leaves packages that are already installed alone; a test keeps this list in line with pyproject.
SMALL_DEPENDENCIES = ["numpy", "matplotlib", "pillow", "tqdm"]
VIT_KERAS = "vit-keras==0.2.0"
VIT_KERAS_DEPENDENCIES = ["validators"]  # its others, scipy and opencv (cv2), come with Colab and Kaggle
# The variable Kaggle's notebook image sets in every session (its kernels read it to tell Kaggle apart).
KAGGLE_VARIABLE = "KAGGLE_KERNEL_RUN_TYPE"
# jupyter-book's cell tag that keeps the setup cell off the rendered page (it still runs there).
SETUP_CELL_TAGS = ["remove-cell"]

def repository_url():
    """The repository's web address, e.g. ``https://github.com/minicap-book/minicap``."""
    return f"https://github.com/{REPOSITORY}"


_VIT_KERAS_ARGUMENTS = ", ".join(json.dumps(name) for name in [VIT_KERAS] + VIT_KERAS_DEPENDENCIES)

SETUP_CELL = f'''\
# Setup (see minicap/colab.py): on Colab and Kaggle, install minicap without touching
# their TensorFlow, Keras and JAX. Elsewhere: nothing to do.
import os, subprocess, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# True: also install vit-keras, the article's ViT library, for
# CaptionConfig(vit_implementation="vit-keras"). minicap's own ViT needs nothing.
WITH_VIT_KERAS = False

def pip_commands(python_version, hosted, vit_keras=False):
    \"\"\"The pip commands this cell runs: none off Colab and Kaggle.\"\"\"
    if not hosted:
        return []
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    minicap = "minicap @ git+{repository_url()}@{BRANCH}"
    commands = [pip + ["--no-deps", minicap],
                pip + {json.dumps(SMALL_DEPENDENCIES)}]
    if vit_keras:
        # vit-keras 0.2.0 declares Python <3.12; its code runs on newer ones.
        new = ["--ignore-requires-python"] if python_version >= (3, 12) else []
        commands.append(pip + ["--no-deps", *new, {_VIT_KERAS_ARGUMENTS}])
    return commands

hosted = "google.colab" in sys.modules or "{KAGGLE_VARIABLE}" in os.environ
for command in pip_commands(sys.version_info[:2], hosted, WITH_VIT_KERAS):
    subprocess.run(command, check=True)
'''


# Google Drive on Colab: where it is mounted, the folder of the reader's Drive that keeps minicap's runs, archives
# and feature caches, and the runtime's own disk, where the photos are unpacked (Drive serves many small files
# slowly; a runtime's disk is gone when it ends, so what is costly to make again stays on Drive).
DRIVE_MOUNT = "/content/drive"
DRIVE_FOLDER = "MyDrive/minicap"
RUNTIME_DATA_DIR = "/content/minicap-data"


@dataclasses.dataclass(frozen=True)
class Storage:
    """Where a notebook keeps its run and its data (see :func:`notebook_storage`)."""

    run_dir: str  # the run directory (train_config.json, checkpoints, model.keras, ...)
    settings: dict  # TrainConfig settings naming the data's places: data_dir and extract_dir on Drive, else {}
    on_drive: bool  # True when the run and the data live on Google Drive

    def describe(self):
        """One line per place, for the notebook to print."""
        if not self.on_drive:
            return f"run: {self.run_dir}"
        return (f"run: {self.run_dir}\narchives and feature caches: {self.settings['data_dir']} (Google Drive)\n"
                f"photos unpacked to: {self.settings['extract_dir']} (this runtime's disk)")


def on_colab():
    """True inside a Colab runtime."""
    return "google.colab" in sys.modules


def notebook_storage(profile, use_drive=False, run_dir="", colab=None, mount=None, mount_point=DRIVE_MOUNT,
                     runtime_data_dir=RUNTIME_DATA_DIR):
    """Where a notebook of ``profile`` keeps its run, and its data's settings: a :class:`Storage`.

    With ``use_drive`` on Colab, Google Drive is mounted (Colab asks the reader to allow it) and everything that
    is costly to make again goes to ``MyDrive/minicap``: the run (``runs/<profile>``, or ``run_dir`` relative to
    that folder), the downloaded archives and the frozen backbone's feature cache (``data``). The photos are
    unpacked onto the runtime's own disk (``RUNTIME_DATA_DIR``), which a new runtime does again from the archives
    on Drive. Chapters 5 and 6 and the photos notebook call this with the same arguments, so each finds the run,
    the archives and the features another one left, in any later runtime. Anywhere else ``use_drive`` is ignored
    (with a note) and the run stays in ``run_dir`` (default ``runs/<profile>``) on this machine.

    Args:
        profile: the profile's name, which names the default run directory.
        use_drive: keep the run and the data on Google Drive (Colab only).
        run_dir: the run directory ("" for the default).
        colab: whether this is Colab (default: ``google.colab`` is imported).
        mount: the function that mounts Drive at a folder (default ``google.colab.drive.mount``).
        mount_point, runtime_data_dir: where Drive is mounted, and the runtime's folder for unpacked photos.
    """
    if not use_drive:
        return Storage(run_dir or f"runs/{profile}", {}, False)
    if not (on_colab() if colab is None else colab):
        print(f"USE_DRIVE applies on Colab only; here the run is kept in {run_dir or f'runs/{profile}'}")
        return Storage(run_dir or f"runs/{profile}", {}, False)
    if mount is None:
        from google.colab import drive

        mount = drive.mount
    if not os.path.isdir(os.path.join(mount_point, DRIVE_FOLDER.split("/")[0])):  # not mounted yet
        mount(os.fspath(mount_point))
    folder = os.path.join(mount_point, DRIVE_FOLDER)
    run_dir = os.path.join(folder, run_dir or os.path.join("runs", profile))  # an absolute run_dir stays as it is
    settings = {"data_dir": os.path.join(folder, "data"), "extract_dir": os.fspath(runtime_data_dir)}
    return Storage(run_dir, settings, True)


def colab_url(notebook_name):
    """The address that opens ``book/<notebook_name>`` of the repository on Colab."""
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/{BOOK_DIR}/{_notebook_file(notebook_name)}"


def badge(notebook_name):
    """The markdown "Open in Colab" badge for ``book/<notebook_name>`` (name with or without ``.ipynb``)."""
    return f"[![Open In Colab]({COLAB_BADGE_IMAGE})]({colab_url(notebook_name)})"


def _notebook_file(notebook_name):
    name = str(notebook_name)
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"notebook_name must be a file name in {BOOK_DIR}/ such as '01_patches.ipynb', got {name!r}")
    if not name.endswith(".ipynb"):
        if "." in name:
            raise ValueError(f"notebook_name must name a .ipynb notebook, got {name!r}")
        name += ".ipynb"
    return name


def _source_text(cell):
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _source_lines(text):
    """Notebook JSON keeps a cell's source as a list of lines, each but the last ending in a newline."""
    return text.splitlines(keepends=True)


def canonical_notebook(notebook, notebook_name):
    """Return a copy of a notebook (as JSON data) with the canonical badge line and setup cell.

    The badge replaces the first cell's line that shows a Colab badge, or is put after that cell's
    title line when it has none; the second cell's source becomes `SETUP_CELL` with no outputs,
    tagged with `SETUP_CELL_TAGS` (any other tags it has are kept).
    """
    cells = notebook.get("cells", [])
    if len(cells) < 2 or cells[0].get("cell_type") != "markdown" or cells[1].get("cell_type") != "code":
        raise ValueError(f"{notebook_name}: a chapter notebook starts with a markdown cell (title and badge) "
                         f"and the code setup cell; got cells of types "
                         f"{[cell.get('cell_type') for cell in cells[:2]]}")
    notebook = json.loads(json.dumps(notebook))
    title_cell, setup_cell = notebook["cells"][0], notebook["cells"][1]
    lines = _source_text(title_cell).split("\n")
    badge_line = badge(notebook_name)
    badge_rows = [index for index, line in enumerate(lines) if COLAB_BADGE_IMAGE in line]
    if badge_rows:
        lines[badge_rows[0]] = badge_line
    else:  # after the title, set apart by blank lines
        lines[1:1] = ["", badge_line]
    title_cell["source"] = _source_lines("\n".join(lines))
    setup_cell["source"] = _source_lines(SETUP_CELL.rstrip("\n"))
    setup_cell["outputs"] = []
    setup_cell["execution_count"] = None
    metadata = setup_cell.setdefault("metadata", {})
    tags = list(metadata.get("tags", []))
    metadata["tags"] = tags + [tag for tag in SETUP_CELL_TAGS if tag not in tags]
    return notebook


def sync_notebooks(book_dir=BOOK_DIR, check=False):
    """Give every ``*.ipynb`` in `book_dir` the canonical Colab badge and setup cell (cell index 1).

    Args:
        book_dir: the directory of the chapter notebooks.
        check: when true, only report which notebooks differ and write nothing.

    Returns the paths of the notebooks that were rewritten (or, with `check`, that would be).
    """
    book_dir = Path(book_dir)
    if not book_dir.is_dir():
        raise FileNotFoundError(f"book_dir {str(book_dir)!r} is not a directory of notebooks")
    changed = []
    for path in sorted(book_dir.glob("*.ipynb")):
        notebook = json.loads(path.read_text(encoding="utf-8"))
        updated = canonical_notebook(notebook, path.name)
        if updated != notebook:
            changed.append(path)
            if not check:  # written the way nbformat writes notebooks, so diffs stay small
                text = json.dumps(updated, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
                path.write_text(text, encoding="utf-8")
    return changed


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minicap.colab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    sync = commands.add_parser("sync", help="rewrite every notebook's Colab badge and setup cell")
    sync.add_argument("book_dir", nargs="?", default=BOOK_DIR, help=f"notebook directory (default {BOOK_DIR})")
    sync.add_argument("--check", action="store_true", help="write nothing; exit 1 if a notebook differs")
    args = parser.parse_args(argv)
    changed = sync_notebooks(args.book_dir, check=args.check)
    for path in changed:
        print(f"{'differs' if args.check else 'updated'}: {path}")
    if args.check and changed:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
