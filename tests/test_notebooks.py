"""The book's notebooks: their structure, and their execution with papermill.

nbval executes every notebook with its own parameters on TensorFlow (``python3 tools/dev.py test``), and the
rendered book reuses those executions (tests/support/notebook_cache.py). The papermill runs here test what nbval does
not, so that no execution repeats another:

- chapters 1-4 on the JAX backend (the GPU machine's backend, which has no TensorFlow);
- chapters 5 and 6 with ``PROFILE = "photos"``: the article's pretrained ViT-B/32 (minicap's own, its weights
  downloaded from a mirror on 127.0.0.1), Flickr8k downloaded from 127.0.0.1, features cached, a decoder
  trained, then captioning, against the offline stand-ins of
  tests/photo_stand_ins.py (what a Colab reader runs must not crash). Chapter 5 trains on JAX (the GPU
  machine's backend) and chapter 6 captions with that model on TensorFlow (Colab's): each chapter runs once
  with photos, and a model saved on one backend is shown to caption on the other. (The photos path on
  TensorFlow alone, training included, is tests/test_photos.py's; its layers on each backend, the package
  tests'.)

The executed notebooks are left in ``_build/executed/<backend>/`` for a look at their outputs.
"""
import ast
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.support import require, unoptimised_jax_flags

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
EXECUTED = ROOT / "_build" / "executed"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
PHOTOS_CHAPTERS = ("05_training.ipynb", "06_captioning.ipynb")
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
    assert first.startswith(("# Chapter", "# Appendix", "# Caption your own photos", "# Your own model")), \
        "the first cell is the title"
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_lines_fit_the_page(path):
    too_long = [(index, len(line)) for index, cell in enumerate(load(path)["cells"]) if cell["cell_type"] == "code"
                for line in source(cell).splitlines() if len(line) > MAX_CODE_LINE]
    assert not too_long, f"code lines over {MAX_CODE_LINE} characters, as (cell index, length): {too_long}"


def _text(value):
    """A notebook field that is a string or a list of strings (as .ipynb files store them), as one string."""
    return value if isinstance(value, str) else "".join(value)


def _printed(notebook):
    """Everything the notebook's cells printed."""
    return "".join(_text(o.get("text", "")) for c in notebook["cells"] for o in c.get("outputs", []))


def _execute(path, backend, parameters, monkeypatch):
    papermill = require("papermill", "papermill (the 'test' extra) is not installed")
    monkeypatch.setenv("KERAS_BACKEND", backend)  # the kernel inherits it, and imports Keras after it
    if backend == "jax":
        # JAX compiles each op a chapter runs eagerly, most of them once: unoptimised, as the package tests on JAX
        # (tools/dev.py's BACKEND_VARIABLES). Chapters 1-4 took 49 CPU s against 62, chapters 5 (JAX) and 6 65
        # against 76 with the photos profile (2-core machine, the runs side by side). TensorFlow's kernels compile
        # as a reader's do: at XLA's level 0 its training steps ran 10 times slower.
        monkeypatch.setenv("XLA_FLAGS", unoptimised_jax_flags(os.environ.get("XLA_FLAGS", "")))
    if path.name in GPU_KERNEL_NOTEBOOKS:
        # The minicap-gpu kernel names its backend (the one of the shell that installed it): register one for
        # ``backend``, as `KERAS_BACKEND=jax minicap kernel install` would, where Jupyter looks first.
        from minicap.kernel import KERNEL_NAME, kernel_spec

        kernels = EXECUTED / backend / "jupyter"
        spec = kernels / "kernels" / KERNEL_NAME / "kernel.json"
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(json.dumps(kernel_spec(backend=backend), indent=1))
        monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(kernels), os.environ.get("JUPYTER_PATH")])))
    target = EXECUTED / backend / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    declared = papermill.inspect_notebook(str(path))
    unknown = set(parameters) - set(declared)
    assert not unknown, f"{path.name} has no parameters {sorted(unknown)}"
    papermill.execute_notebook(str(path), str(target), parameters=parameters, cwd=str(BOOK), progress_bar=False,
                               log_output=False, request_save_on_cell_execute=False)
    return json.loads(target.read_text())


@pytest.mark.notebook
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name < "05"], ids=lambda p: p.stem)
def test_chapters_one_to_four_execute_on_jax(path, monkeypatch):
    require("jax")
    executed = _execute(path, "jax", {}, monkeypatch)
    assert "on jax" in _printed(executed)


@pytest.fixture(scope="module")
def photos_data(tmp_path_factory):
    """Flickr8k stand-in archives and a ViT-B/32 stand-in weights file served on 127.0.0.1 (the ViT file as
    ``$MINICAP_VIT_MIRROR``), and an empty KERAS_HOME for the weights to be downloaded into."""
    from tests.support.photo_stand_ins import SMALL_PHOTOS, serve, write_flickr8k, write_vit_b_weights

    root = tmp_path_factory.mktemp("photos")
    digests, _ = write_flickr8k(root / "mirror")
    vit_digest = write_vit_b_weights(root / "mirror" / "ViT-B_32_imagenet21k+imagenet2012.npz")
    with serve(root / "mirror") as url:
        yield {"keras_home": root / "keras_home", "data_dir": root / "data", "mirror": url,
               "settings": {**SMALL_PHOTOS, "data_url": url, "data_hashes": digests,
                            "backbone_weights_hash": vit_digest}}


def _modified(path):
    """``{file: modification time}`` of every file under ``path``."""
    return {p.relative_to(path): p.stat().st_mtime_ns for p in Path(path).rglob("*") if p.is_file()}


@pytest.mark.notebook
@pytest.mark.slow
def test_chapters_five_and_six_run_the_photos_profile(photos_data, monkeypatch):
    require("jax")
    require("tensorflow")
    monkeypatch.setenv("KERAS_HOME", str(photos_data["keras_home"]))
    monkeypatch.setenv("MINICAP_VIT_MIRROR", photos_data["mirror"])
    settings = {**photos_data["settings"], "data_dir": str(photos_data["data_dir"])}
    run_dir = "runs/photos-stand-ins"  # relative to book/, as the chapters' own runs are
    shutil.rmtree(BOOK / run_dir, ignore_errors=True)
    common = {"PROFILE": "photos", "RUN_DIR": run_dir, "SETTINGS": settings, "NUM_EVAL": 4}
    trained = _execute(BOOK / "05_training.ipynb", "jax", common, monkeypatch)
    printed = _printed(trained)
    assert "on jax" in printed and "vit-b32" in printed and "float16" in printed  # the backbone, its cached features
    assert "training on" in printed  # a fresh run: chapter 5 trained it
    assert (BOOK / run_dir / "model.keras").exists()
    assert json.loads((BOOK / run_dir / "config.json").read_text())["vit_implementation"] == "minicap"
    assert (photos_data["keras_home"] / "weights" / "ViT-B_32_imagenet21k+imagenet2012.npz").exists()  # downloaded
    # Chapter 6 in another runtime (another backend, even) finds chapter 5's finished run and trains nothing:
    # no step, no file of the run written.
    before = _modified(BOOK / run_dir)
    captioned = _execute(BOOK / "06_captioning.ipynb", "tensorflow", {**common, "BEAM_WIDTH": 2}, monkeypatch)
    printed = _printed(captioned)
    assert "on tensorflow" in printed  # the JAX-trained model, loaded and captioning on TensorFlow
    assert "loaded the finished run" in printed and "training on" not in printed and "epoch 1/" not in printed
    assert _modified(BOOK / run_dir) == before
    outputs = [o for c in captioned["cells"] for o in c.get("outputs", [])]
    assert any("minicap-attention" in _text(o.get("data", {}).get("text/html", "")) for o in outputs)


@pytest.mark.notebook
@pytest.mark.slow
def test_the_photos_notebook_goes_from_the_archives_to_a_captioned_photo(photos_data, monkeypatch, tmp_path):
    """"Caption your own photos" on the stand-ins, as a reader runs it: downloads, features, training, the test
    split's scores, the validation photos captioned, and a photo of the reader's (a file path) with the explorer."""
    require("tensorflow")
    monkeypatch.setenv("KERAS_HOME", str(photos_data["keras_home"]))
    monkeypatch.setenv("MINICAP_VIT_MIRROR", photos_data["mirror"])
    from PIL import Image

    photo = tmp_path / "my photo.jpg"
    Image.new("RGB", (320, 240), (40, 70, 210)).save(photo)
    settings = {**photos_data["settings"], "data_dir": str(tmp_path / "data")}
    parameters = {"RUN_DIR": str(tmp_path / "run"), "SETTINGS": settings, "NUM_SHOW": 4, "BEAM_WIDTH": 2,
                  "PHOTO": str(photo)}
    executed = _execute(BOOK / "your_photos.ipynb", "tensorflow", parameters, monkeypatch)
    printed = _printed(executed)
    assert "training on" in printed and "epoch 2/2" in printed  # one line per epoch
    assert "photos of the test split" in printed and "beam 2" in printed
    assert (tmp_path / "run" / "model.keras").exists()
    outputs = [o for c in executed["cells"] for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # photos, history, captions, attention
    assert any("minicap-attention" in _text(o.get("data", {}).get("text/html", "")) for o in outputs)


def test_the_book_executes_every_page_but_the_photos_notebook():
    """The photos notebook needs downloads that no machine building the book can make: its page is rendered
    unexecuted (its metadata turns myst-nb's execution off), nbval leaves it out, and the page says so."""
    from tools import dev

    executed = dev.executed_notebooks()
    assert "book/your_photos.ipynb" not in executed
    assert set(executed) == {f"book/{p.name}" for p in NOTEBOOKS} - {"book/your_photos.ipynb"}
    notebook = load(BOOK / "your_photos.ipynb")
    assert notebook["metadata"]["mystnb"]["execution_mode"] == "off"
    assert "not executed when the book is built" in source(notebook["cells"][0])


INCLUDE = re.compile(r"```\{literalinclude\}\s+(\S+)\n((?::[\w-]+:.*\n)*)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_excerpt_names_a_file_and_markers_that_exist(path):
    """A ``literalinclude`` of minicap's code follows the code when it moves: its file exists and holds the
    ``start-after`` and ``end-before`` markers, in that order (the book build would otherwise fail with -W)."""
    for cell in load(path)["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        for target, options in INCLUDE.findall(source(cell) + "\n"):
            included = (BOOK / target).resolve()
            assert included.is_file(), f"{path.name} includes {target}, which does not exist"
            text = included.read_text(encoding="utf-8")
            markers = dict(re.findall(r":(start-after|end-before):\s*\"?(.*?)\"?\s*$", options, flags=re.M))
            positions = [text.find(markers[key]) for key in ("start-after", "end-before") if key in markers]
            assert all(p >= 0 for p in positions), f"{path.name}: {target} lacks a marker of {markers}"
            assert positions == sorted(positions), f"{path.name}: {target}'s markers are out of order"


# A sentence of prose about the page's own run, and what may stand in it besides words: its numbers come from the
# run (a glue role) or the text points at what the cell printed; seed and chapter numbers, math and code are not
# the run's figures.
THIS_RUN = re.compile(r"\bthis (?:page's )?run\b", re.IGNORECASE)
NOT_A_FIGURE = re.compile(r"\{glue:text\}`[^`]*`|\$[^$]*\$|`[^`]*`|\bseeds? \d+(?:(?: to |-)\d+)?|\bchapters? \d+"
                          r"|\b[A-Za-z][\w/-]*\d[\w/]*")  # names such as Flickr8k or ViT-B/32


def sentences(text):
    """The sentences of a markdown text's paragraphs (tables left out)."""
    found = []
    for paragraph in re.split(r"\n\s*\n", text):
        if not paragraph.lstrip().startswith("|"):
            found += re.split(r"(?<=[.!?:])\s+(?=[A-Z*`(])", " ".join(paragraph.split()))
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_prose_about_this_run_takes_its_numbers_from_the_run(path):
    """Where the text speaks of the page's own run, no number in it is typed by hand: each comes from the run
    (myst-nb's glue, filled in when the page is built), or the text points at what a cell printed."""
    typed = []
    for cell in load(path)["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        for sentence in sentences(source(cell)):
            if not THIS_RUN.search(sentence):
                continue
            if re.search(r"\d", NOT_A_FIGURE.sub("", sentence)):
                typed.append(sentence)
    assert not typed, f"{path.name}: a number typed by hand where the text describes this run: {typed}"


def test_the_pages_glue_what_their_prose_quotes():
    """Every value a page's prose pastes ({glue:text}`name`) is glued by one of its cells (the book build, with
    warnings as errors, fails on a missing one; this says which)."""
    for path in NOTEBOOKS:
        notebook = load(path)
        code = "\n".join(source(c) for c in notebook["cells"] if c["cell_type"] == "code")
        quoted = {key for c in notebook["cells"] if c["cell_type"] == "markdown"
                  for key in re.findall(r"\{glue:text\}`([\w-]+)", source(c))}
        names = set(re.findall(r"glue\(\s*\"([\w-]+)\"", code))
        dynamic = re.findall(r"glue\(\s*f\"", code)
        assert quoted <= names or dynamic, f"{path.name} pastes {sorted(quoted - names)} but glues none of them"
        assert not quoted or "from minicap.plot import" in code and "glue" in code
