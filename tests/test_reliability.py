"""The bad-input catalogue, interrupted work and safe loading, through the public API and the CLI.

Image files (corrupt, truncated, directory, grayscale, RGBA, CMYK, 16-bit, huge) are covered in
test_images.py; downloads and archives in test_download.py; tampered tokenizer files in
test_text.py; kills during training in test_train.py. This module covers the rest, and the
command line's handling of them.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from tests.support import TINY_RUN
from minicap.config import profile
from minicap.train import train
from minicap.checkpoint import Checkpointer, save_model_atomic
from minicap.data.flickr8k import read_token_file
from minicap.data.images import load_image
from minicap.data.shapes import make_shapes
from minicap.evaluate import evaluate_shapes
from minicap.model import load_captioner
from minicap.text import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
TINY = TINY_RUN  # the tiny training run's settings (tests/support)


def test_one_pixel_image_is_resized(tmp_path):
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "dot.png")
    image = load_image(tmp_path / "dot.png", 32)
    assert image.shape == (32, 32, 3) and (image == (200, 10, 10)).all()


def test_caption_file_with_empty_lines_and_bad_bytes(tmp_path):
    path = tmp_path / "Flickr8k.token.txt"
    path.write_bytes(b"a.jpg#0\tA dog runs .\n\n\r\na.jpg#1\tA caf\xe9 dog .\nb.jpg#0\tTwo cats\n")
    with pytest.warns(UserWarning, match=r"Flickr8k.token.txt.*lines \[4\] are not valid UTF-8"):
        captions = read_token_file(path)
    assert captions == {"a.jpg": ["A dog runs .", "A caf\ufffd dog ."], "b.jpg": ["Two cats"]}


def test_long_captions_are_truncated_and_said_so():
    tokenizer = Tokenizer.fit(["a red circle left of a blue square"])
    with pytest.warns(UserWarning, match="truncated"):
        ids = tokenizer.encode(["a red circle left of a blue square"], 5)
    assert ids.shape == (1, 5) and ids[0, -1] == tokenizer.end_id
    assert tokenizer.truncated == 1


def test_unknown_words_become_unk():
    tokenizer = Tokenizer.fit(["a red circle"])
    ids = tokenizer.encode(["a purple circle"], 6)[0]
    assert ids[2] == tokenizer.unk_id
    assert tokenizer.decode(ids) == "a [UNK] circle"


def test_empty_split_is_refused(run_dir):
    model, tokenizer = load_captioner(run_dir / "model.keras")
    with pytest.raises(ValueError, match="the split is empty"):
        evaluate_shapes(model, tokenizer, make_shapes(0, image_size=32))


def test_a_file_that_is_not_a_model(tmp_path, run_dir):
    text = tmp_path / "model.keras"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"model.keras is not a Keras model file"):
        load_captioner(text, run_dir / "tokenizer.json")
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as archive:
        archive.writestr("readme.txt", "not a model")
    with pytest.raises(ValueError, match="other.keras could not be loaded as a minicap model"):
        load_captioner(tmp_path / "other.keras", run_dir / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load_captioner(tmp_path / "missing.keras")
    keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).save(tmp_path / "dense.keras")
    with pytest.raises(ValueError, match="holds a Sequential, not a minicap CaptionModel"):
        load_captioner(tmp_path / "dense.keras", run_dir / "tokenizer.json")


def _crafted(run_dir, path, entry):
    """A copy of the trained model.keras whose configuration also names ``entry`` (a serialised Keras object),
    deep inside the model's own settings, where Keras would deserialise it."""
    with zipfile.ZipFile(run_dir / "model.keras") as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                config["config"]["config"]["extra"] = {"layers": [entry]}
                data = json.dumps(config).encode()
            target.writestr(item, data)
    return path


CODE_RUNNING = {
    "Lambda": {"module": "keras.layers", "class_name": "Lambda", "registered_name": "Lambda",
               "config": {"name": "lambda", "function": {"class_name": "__lambda__",
                                                          "config": {"code": "4wEAAAAAAAAA", "defaults": None}}}},
    "TFSMLayer": {"module": "keras.layers", "class_name": "TFSMLayer", "registered_name": "TFSMLayer",
                  "config": {"filepath": "/tmp/a-saved-model", "call_endpoint": "serve", "name": "tfsm"}},
    "function": {"module": "os", "class_name": "function", "config": "system", "registered_name": "system"},
    "Evil": {"module": "evil.layers", "class_name": "Evil", "registered_name": "evil>Evil", "config": {}},
}


@pytest.mark.parametrize("name", CODE_RUNNING)
def test_a_model_file_naming_code_or_unknown_classes_is_refused_before_keras_reads_it(tmp_path, run_dir, monkeypatch,
                                                                                     name):
    crafted = _crafted(run_dir, tmp_path / "model.keras", CODE_RUNNING[name])
    shutil.copy(run_dir / "tokenizer.json", tmp_path / "tokenizer.json")

    def never(*args, **kwargs):
        raise AssertionError("Keras was asked to load a refused file")

    monkeypatch.setattr(keras.models, "load_model", never)
    with pytest.raises(ValueError, match=rf"model.keras is refused: it names '{name}'"):
        load_captioner(crafted)
    from minicap import cli

    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    assert cli.main(["caption", str(tmp_path / "photo.png"), "--model", str(crafted)]) == 2


def test_a_model_that_keras_itself_wrote_with_a_lambda_is_refused(tmp_path, run_dir):
    # Not hand-made: Keras serialises the Lambda's Python code into the file, and would run it when loading.
    model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda x: x * 2.0)])
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="lambda.keras is refused: it names 'Lambda'.*runs code stored in the file"):
        load_captioner(tmp_path / "lambda.keras", run_dir / "tokenizer.json")


def test_model_and_tokenizer_that_do_not_match(tmp_path, run_dir):
    Tokenizer.fit(["an entirely different vocabulary of words"]).save(tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match=r"tokenizer.json \(\d+ tokens\) does not match .*model.keras"):
        load_captioner(run_dir / "model.keras", tmp_path / "tokenizer.json")


def test_tampered_tokenizer_next_to_a_model(tmp_path, run_dir):
    data = json.loads((run_dir / "tokenizer.json").read_text())
    data["vocabulary"] = data["vocabulary"][1:] if isinstance(data, dict) and "vocabulary" in data else data
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_captioner(run_dir / "model.keras", tmp_path / "tokenizer.json")


def test_a_crash_while_saving_a_checkpoint_keeps_the_last_good_one(tmp_path, run_dir, monkeypatch):
    model, _ = load_captioner(run_dir / "model.keras")
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    checkpointer.set_model(model)
    checkpointer.save(epoch=0, step_in_epoch=2)
    good = json.loads(checkpointer.state_path.read_text())

    def crash_halfway(handle, **arrays):
        handle.write(b"half a file")
        raise KeyboardInterrupt("killed while saving")

    model.optimizer.iterations.assign(7)
    monkeypatch.setattr(np, "savez", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save(epoch=0, step_in_epoch=4)
    assert json.loads(checkpointer.state_path.read_text()) == good  # still the last complete checkpoint
    monkeypatch.undo()
    assert checkpointer.restore(model)["step_in_epoch"] == 2


def test_a_crash_while_saving_the_model_keeps_the_old_file(tmp_path, run_dir, monkeypatch):
    target = tmp_path / "model.keras"
    target.write_bytes((run_dir / "model.keras").read_bytes())
    model, _ = load_captioner(run_dir / "model.keras")

    def crash_halfway(path, *args, **kwargs):
        Path(path).write_bytes(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "save", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_model_atomic(model, target)
    assert target.read_bytes() == (run_dir / "model.keras").read_bytes()


def test_mixed_precision_training_stays_finite(tmp_path):
    settings = {**TINY, "mixed_precision": True}  # (compiled on JAX, as every tiny run there: tests/support)
    result = train(profile("quick", **settings), tmp_path / "mixed", verbose=0)
    assert np.isfinite(result.history["loss"]).all()
    assert all(np.isfinite(e["val_loss"]) for e in result.history["epochs"])
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after training
    assert result.model.dtype_policy.name.startswith("mixed_")
    model, _ = load_captioner(tmp_path / "mixed" / "model.keras")  # loads (in the float32 policy)
    assert np.isfinite(keras.ops.convert_to_numpy(model((np.zeros((1, 32, 32, 3), "float32"), np.ones((1, 4), "int32"))))).all()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "minicap.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)


@pytest.mark.single_backend  # the script's handling of bad files, whatever the backend
def test_cli_captions_the_good_images_and_names_the_bad_ones(tmp_path, run_dir):
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "good.png")
    Image.fromarray(np.zeros((40, 50), np.uint16) + 900).save(tmp_path / "deep.png")  # 16-bit grayscale
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    done = _cli("caption", tmp_path / "good.png", tmp_path / "corrupt.jpg", tmp_path, tmp_path / "deep.png",
                "--model", run_dir / "model.keras")
    assert done.returncode == 1
    lines = done.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(tmp_path / "good.png"), str(tmp_path / "deep.png")]
    assert re.search(r"corrupt.jpg", done.stderr) and re.search(r"is a directory", done.stderr)


@pytest.mark.single_backend  # the script's handling of bad files, whatever the backend
def test_cli_reports_a_bad_model_in_one_line(tmp_path):
    (tmp_path / "m.keras").write_text("no")
    (tmp_path / "tokenizer.json").write_text("{}")
    done = _cli("evaluate", "--model", tmp_path / "m.keras")
    assert done.returncode == 2
    assert "is not a Keras model file" in done.stderr and "Traceback" not in done.stderr


def test_no_pickle_anywhere_and_models_load_safely():
    sources = {path: path.read_text() for path in (ROOT / "minicap").rglob("*.py")}
    for path, text in sources.items():
        assert not re.search(r"\bimport pickle\b|\bpickle\.|allow_pickle\s*=\s*True|\bdill\b|torch\.load", text), path
        for call in re.findall(r"load_model\([^)]*\)", text):
            assert "safe_mode=True" in call, f"{path}: {call}"
