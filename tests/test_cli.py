"""``minicap caption`` and ``minicap evaluate`` on a trained run, the command line's usage errors, and
the benchmarks of the clone, ``python -m tools.bench`` (its figures: test_bench.py).

The commands run in this process through ``minicap.cli.main`` (what the ``minicap`` script calls);
test_reliability.py runs the script itself as a subprocess for bad image files and bad models.
"""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import minicap as package
from tests.support import require
from minicap.cli import main
from minicap.data.faithfulness import check_caption
from minicap.data.folder import load_caption_folder
from minicap.data.images import load_image
from minicap.data.shapes import make_shapes
from minicap.evaluate import evaluate_shapes
from minicap.metrics import cider_d, corpus_bleu
from minicap.generate import Generator
from minicap.model import load_captioner
from tests.support.photo_stand_ins import write_caption_folder
from tests.support.planted_captioner import BEAM, GREEDY, save_planted_captioner

# What the commands print and refuse does not depend on Keras's backend (the models they load are tested on
# each backend by test_model.py and test_generate.py): runs once, on the default one.
pytestmark = pytest.mark.single_backend

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "cider_d", "faithfulness", "grounding", "chance", "mentions")


def minicap(capsys, *args):
    """Run ``minicap ARGS``; return its exit status, standard output and standard error."""
    status = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return status or 0, out, err  # the script passes main's result to sys.exit, which reads None as 0


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two shapes scenes as 48-pixel PNG files (the model's 32 pixels: the command resizes them)."""
    folder = tmp_path_factory.mktemp("images")
    paths = [folder / f"scene{index}.png" for index in range(2)]
    for path, image in zip(paths, make_shapes(2, split="val", seed=3, image_size=48).images):
        Image.fromarray(image).save(path)
    return paths


def captions_of(run_dir, paths, beam_width=1):
    """The captions the Python API writes for ``paths``."""
    model, tokenizer = load_captioner(run_dir / "model.keras")
    batch = np.stack([load_image(path, model.config.image_size) for path in paths]).astype("float32") / 255.0
    generator = Generator.from_tokenizer(model, tokenizer)
    tokens = generator.beam_search(batch, beam_width) if beam_width > 1 else generator.greedy(batch)
    return tokenizer.decode_batch(tokens)


@pytest.mark.parametrize("beam_width", [1, 3])
def test_caption_prints_each_image_with_its_caption(capsys, monkeypatch, run_dir, images, beam_width):
    widths, beam_search = [], Generator.beam_search

    def spy(self, batch, beam_width=5, *args, **kwargs):  # which decoder the command chose
        widths.append(beam_width)
        return beam_search(self, batch, beam_width, *args, **kwargs)

    monkeypatch.setattr(Generator, "beam_search", spy)
    status, out, err = minicap(capsys, "caption", *images, "--model", run_dir / "model.keras", "--beam", beam_width)
    assert status == 0, err
    assert widths == ([beam_width] if beam_width > 1 else [])
    monkeypatch.undo()
    expected = captions_of(run_dir, images, beam_width)
    assert out.splitlines() == [f"{path}\t{caption}" for path, caption in zip(images, expected)]


def test_caption_saves_each_image_s_word_attention_as_a_png(capsys, run_dir, images, tmp_path):
    status, _, err = minicap(capsys, "caption", images[0], "--model", run_dir / "model.keras",
                             "--attention", tmp_path / "one.png")
    assert status == 0, err
    status, _, err = minicap(capsys, "caption", *images, "--model", run_dir / "model.keras",
                             "--attention", tmp_path / "two.png")
    assert status == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.png", "two-0.png", "two-1.png"]
    assert f"saved to {tmp_path / 'two-1.png'}" in err
    for path in tmp_path.iterdir():
        with Image.open(path) as figure:
            assert figure.format == "PNG" and min(figure.size) >= 100
            figure.verify()  # a whole image, not a truncated file


@pytest.mark.parametrize("beam_width", [1, 2])
def test_evaluate_json_reports_the_metrics_of_the_api(capsys, run_dir, beam_width):
    status, out, err = minicap(capsys, "evaluate", "--model", run_dir / "model.keras", "--num", 12, "--json",
                               "--beam", beam_width)
    assert status == 0, err
    metrics = json.loads(out)  # NaN (grounding without mentions) reads back as nan
    assert list(metrics) == ["dataset", "split", "images", *METRICS]
    assert (metrics["dataset"], metrics["split"], metrics["images"]) == ("shapes", "test", 12)
    for name in ("bleu1", "bleu2", "bleu3", "bleu4", "faithfulness"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert 0.0 <= metrics["cider_d"] <= 10.0 and metrics["mentions"] == int(metrics["mentions"]) >= 0
    if metrics["mentions"]:
        assert 0.0 <= metrics["grounding"] <= 1.0 and 0.0 < metrics["chance"] <= 1.0
    else:  # no caption named an object of its scene
        assert math.isnan(metrics["grounding"]) and math.isnan(metrics["chance"])
    # The held-out scenes of seed 2, drawn as the model was trained (max_objects 1, from train_config.json).
    model, tokenizer = load_captioner(run_dir / "model.keras")
    data = make_shapes(12, split="heldout", seed=2, image_size=32, max_objects=1)
    options = {"method": "beam", "beam_width": beam_width} if beam_width > 1 else {}
    expected, _ = evaluate_shapes(model, tokenizer, data, **options)
    for name in METRICS:
        assert metrics[name] == pytest.approx(expected[name], nan_ok=True), name


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A saved model that writes GREEDY under greedy decoding and BEAM under beam search, for every image."""
    return save_planted_captioner(tmp_path_factory.mktemp("planted") / "run")


def scores(captions, references):
    return {**corpus_bleu(captions, references), "cider_d": cider_d(captions, references)}


@pytest.mark.parametrize("beam_width, written", [(2, BEAM), (1, GREEDY)])
def test_evaluate_scores_the_captions_of_the_decoder_asked_for(capsys, planted, beam_width, written):
    status, out, err = minicap(capsys, "evaluate", "--model", planted, "--num", 6, "--json", "--beam", beam_width)
    assert status == 0, err
    metrics = json.loads(out)
    data = make_shapes(6, split="heldout", seed=2, image_size=32, max_objects=3)  # the command's scenes (seed 2)
    expected = {**scores([written] * 6, data.captions),
                "faithfulness": np.mean([check_caption(written, scene).faithful for scene in data.scenes])}
    other = scores([BEAM if written == GREEDY else GREEDY] * 6, data.captions)
    assert other["bleu1"] != pytest.approx(expected["bleu1"])  # the scores tell the two decoders apart
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value), name


@pytest.mark.parametrize("beam_width, written", [(3, BEAM), (1, GREEDY)])
def test_evaluate_on_a_folder_of_photos_scores_the_captions_of_the_decoder_asked_for(capsys, tmp_path, planted,
                                                                                   beam_width, written):
    folder = write_caption_folder(tmp_path / "photos", count=4)
    status, out, err = minicap(capsys, "evaluate", "--model", planted, "--dataset", folder, "--split", "all",
                               "--json", "--beam", beam_width)
    assert status == 0, err
    metrics = json.loads(out)
    assert (metrics["split"], metrics["images"]) == ("all", 4)
    references = load_caption_folder(folder, "all").captions
    expected = scores([written] * 4, references)
    other = scores([BEAM if written == GREEDY else GREEDY] * 4, references)
    assert other["cider_d"] != pytest.approx(expected["cider_d"])
    assert {name: metrics[name] for name in expected} == pytest.approx(expected)


# ---------------------------------------------------------------- usage errors: exit status 2, one line

def one_line_error(capsys, *args):
    status, out, err = minicap(capsys, *args)
    assert status == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("width", [0, -2])
@pytest.mark.parametrize("command", ["caption", "evaluate"])
def test_a_beam_width_below_one_is_refused(capsys, tmp_path, command, width):
    images = [tmp_path / "image.png"] if command == "caption" else []
    # Refused before the model is read: this one does not even exist.
    message = one_line_error(capsys, command, *images, "--model", tmp_path / "model.keras", "--beam", width)
    assert message == (f"minicap {command}: error: --beam must be a beam width of at least 1 (1: greedy "
                       f"decoding), got {width}")


@pytest.mark.parametrize("epochs", [["--epochs", "0"], ["--epochs", "-1"], ["--set", "epochs=0"]])
def test_training_for_no_epochs_is_refused_before_anything_is_written(capsys, tmp_path, epochs):
    # Zero epochs would save an untrained model as if it were trained; the settings are checked first.
    message = one_line_error(capsys, "train", "-o", tmp_path / "run", *epochs)
    assert message == f"minicap train: error: epochs must be a positive integer, got {epochs[1].split('=')[-1]}"
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_a_model_is_named_before_the_tokenizer_is_looked_for(capsys, tmp_path, monkeypatch,
                                                                               run_dir):
    monkeypatch.chdir(tmp_path)  # the tokenizer's default place is next to the model: ./tokenizer.json
    Image.new("RGB", (8, 8)).save("x.png")
    (tmp_path / "notamodel.keras").write_text("hello")
    message = one_line_error(capsys, "caption", "x.png", "--model", "notamodel.keras")
    assert message.startswith("minicap caption: error: notamodel.keras is not a Keras model file")
    # A real model without its tokenizer: now the tokenizer is what is missing.
    (tmp_path / "run").mkdir()
    shutil.copy(run_dir / "model.keras", tmp_path / "run" / "model.keras")
    message = one_line_error(capsys, "caption", "x.png", "--model", "run/model.keras")
    assert message == "minicap caption: error: run/tokenizer.json: no such tokenizer file"


def test_the_benchmarks_are_the_clones_run_with_python_m(capsys, tmp_path, monkeypatch):
    # `python -m tools.bench` reads its own options and hands them on; the package's command has no bench.
    from tools.bench import suite

    calls = []

    def run(**options):
        calls.append(options)
        return {"planted": True}

    monkeypatch.setattr(suite, "run", run)
    monkeypatch.setattr(suite, "format_table", lambda report: f"table of {sorted(report)}")
    path = tmp_path / "bench.json"
    assert suite.main(["--quick", "-o", str(path), "--set", "model_dim=16", "--set=jit_compile=off", "--backends",
                       "jax, tensorflow", "--batch-sizes", "8,16", "--skip-vit", "--steps", "2"]) == 0
    assert capsys.readouterr().out == "table of ['planted']\n"
    assert json.loads(path.read_text()) == {"planted": True}
    (options,) = calls
    assert options["quick"] is True and options["skip_vit"] is True and options["steps"] == 2
    assert options["overrides"] == {"model_dim": 16, "jit_compile": "off"}
    assert options["backends"] == ["jax", "tensorflow"] and options["batch_sizes"] == (8, 16)
    assert options["skip_feature_cache"] is None and options["precision"] == "auto"  # the defaults
    root = Path(package.__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "tools.bench", "--help"], cwd=root, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m tools.bench [-h] [--quick]")
    with pytest.raises(SystemExit) as exit_status:
        main(["bench", "--quick"])
    assert exit_status.value.code == 2 and "invalid choice: 'bench'" in capsys.readouterr().err


def test_the_installed_package_is_minicap_alone():
    """pyproject.toml's package discovery, as setuptools runs it for a wheel: minicap and its subpackages, never
    the repository's tools/ or tests/."""
    tomllib = require("tomllib", "tomllib (Python 3.11+) is needed to read pyproject.toml")
    setuptools = require("setuptools")
    root = Path(package.__file__).resolve().parent.parent
    settings = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = setuptools.find_namespace_packages(str(root), include=settings.get("include", ("*",)),
                                                  exclude=settings.get("exclude", ()))
    assert "minicap" in packages and "minicap.data" in packages
    assert (root / "tools" / "bench" / "suite.py").is_file() and (root / "tools" / "dev.py").is_file()
    assert [name for name in packages if name.split(".")[0] != "minicap"] == []


@pytest.mark.parametrize("dataset", ["shapes", "folder"])
def test_evaluate_decodes_with_the_options_asked_for(capsys, monkeypatch, tmp_path, run_dir, dataset):
    # `minicap evaluate --beam 2` must search with 2 beams (the default would be 5), and the scoring functions must
    # pass sampling's temperature, top-k and seed on: each option is seen where the decoder receives it.
    from minicap.evaluate import evaluate_caption_set, evaluate_shapes
    from minicap.generate import Generator
    from tests.support.photo_stand_ins import write_caption_folder

    received = []
    for method in ("beam_search", "sample"):
        original = getattr(Generator, method)

        def spy(self, images, *args, _original=original, _method=method, **kwargs):
            received.append((_method, args, kwargs))
            return _original(self, images, *args, **kwargs)

        monkeypatch.setattr(Generator, method, spy)
    where = "shapes" if dataset == "shapes" else str(write_caption_folder(tmp_path / "photos", count=10))
    status, out, _ = minicap(capsys, "evaluate", "--model", run_dir / "model.keras", "--dataset", where, "--num", 4,
                             "--beam", 2, "--json")
    assert status == 0 and json.loads(out)["images"] >= 1
    assert received and all(method == "beam_search" and kwargs.get("beam_width", args[:1] and args[0]) == 2
                            for method, args, kwargs in received)
    received.clear()
    model, tokenizer = load_captioner(run_dir / "model.keras")
    options = dict(method="sample", temperature=0.25, top_k=3, seed=7)
    if dataset == "shapes":
        evaluate_shapes(model, tokenizer, make_shapes(4, image_size=32, seed=3), **options)
    else:
        from minicap.data.folder import load_caption_folder

        evaluate_caption_set(model, tokenizer, load_caption_folder(where, "val", image_size=32), **options)
    assert received and all(method == "sample" and {k: kwargs.get(k) for k in ("temperature", "top_k", "seed")}
                            == {"temperature": 0.25, "top_k": 3, "seed": 7} for method, args, kwargs in received)
