"""The photos path end to end, offline: ``minicap train --profile photos`` downloads Flickr8k (stand-in
archives served from 127.0.0.1) and the "pretrained" ViT-B/32 weights (a stand-in official file on the
same server, as ``$MINICAP_VIT_MIRROR``), verifies and extracts them, loads the weights into minicap's own
ViT, computes and caches the frozen backbone's features, trains, is killed with SIGKILL at points the test
chooses, resumes to the same end, and ``minicap caption`` / ``minicap evaluate`` work on the result; the
same for a folder of the reader's own photos, there with the article's vit-keras implementation.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support import require
from tests.support.photo_stand_ins import (SMALL_PHOTOS, install_vit_weights, serve, write_caption_folder, write_flickr8k,
                             write_vit_b_weights)

ROOT = Path(__file__).resolve().parent.parent

# Independent of Keras's backend (or runs each backend itself): runs once, on the default one.
pytestmark = pytest.mark.single_backend

# Runs `minicap` with a SIGKILL planted at a point the test chooses: "train" N kills the process right
# after training step N (its checkpoint, when one falls on N, is written first); "features" N kills it
# while the frozen backbone computes its N-th batch of features; "none" runs it as a user would.
DRIVER = """
import os, signal, sys
import keras
import minicap.train
from minicap import cli

where, at = sys.argv[1], int(sys.argv[2])
if where == "train":
    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) == at:
                os.kill(os.getpid(), signal.SIGKILL)
    train = minicap.train.train
    minicap.train.train = lambda *args, **kwargs: train(*args, **{**kwargs, "callbacks": [Kill()]})
elif where == "features":
    predict, calls = keras.Model.predict_on_batch, []
    def counted(self, x):
        calls.append(1)
        if len(calls) == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return predict(self, x)
    keras.Model.predict_on_batch = counted
sys.exit(cli.main(sys.argv[3:]))
"""

# The small photos profile, with a checkpoint every 2 steps and no dropout, so that a resumed run is the
# uninterrupted one exactly.
SMALL = {**SMALL_PHOTOS, "checkpoint_every": 2, "dropout": 0.0}


VIT_FILE = "ViT-B_32_imagenet21k+imagenet2012.npz"


@pytest.fixture(scope="module")
def keras_home(tmp_path_factory):
    """A KERAS_HOME whose weights cache already holds the stand-in ViT-B/32 file."""
    home = tmp_path_factory.mktemp("keras_home")
    install_vit_weights(home)
    return home


def minicap(keras_home, *args, kill=("none", 0), mirror=None, backend=None):
    env = {**os.environ, "KERAS_HOME": str(keras_home), "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    env.pop("MINICAP_VIT_MIRROR", None)
    if backend:
        env["KERAS_BACKEND"] = backend
    if mirror:
        env["MINICAP_VIT_MIRROR"] = mirror
    return subprocess.run([sys.executable, "-c", DRIVER, kill[0], str(kill[1]), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=900)


def settings(**extra):
    return [f"--set={name}={json.dumps(value)}" for name, value in {**SMALL, **extra}.items()]


def feature_caches(data_dir):
    return [json.loads(p.read_text()) for p in sorted((Path(data_dir) / "features").glob("*/progress.json"))]


@pytest.mark.slow
def test_photos_profile_downloads_trains_resumes_after_sigkill_and_captions(tmp_path):
    digests, names = write_flickr8k(tmp_path / "mirror")
    vit_digest = write_vit_b_weights(tmp_path / "mirror" / VIT_FILE)
    keras_home = tmp_path / "keras_home"  # empty: the ViT weights are downloaded from the mirror
    data_dir, run, whole = tmp_path / "data", tmp_path / "run", tmp_path / "whole"
    with serve(tmp_path / "mirror") as url:
        train = ["train", "--profile", "photos", "--data-dir", data_dir,
                 *settings(data_url=url, data_hashes=digests, backbone_weights_hash=vit_digest)]
        killed = minicap(keras_home, *train, "-o", run, kill=("features", 2), mirror=url)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert (data_dir / "flickr8k" / "downloads" / "Flickr8k_Dataset.zip").exists()  # downloaded and verified
        assert (keras_home / "weights" / VIT_FILE).exists()  # the ViT weights too, from the mirror
        assert not (run / "model.keras").exists()
        assert not any(cache.get("complete") for cache in feature_caches(data_dir))  # never reads as complete

        killed = minicap(keras_home, *train, "-o", run, kill=("train", 3))
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert not (run / "model.keras").exists() and (run / "checkpoints" / "state.json").exists()
        caches = feature_caches(data_dir)
        assert len(caches) == 2 and all(c["complete"] for c in caches)  # train and validation features
        assert {c["num_images"] for c in caches} == {len(names["train"]), len(names["dev"])}

        resumed = minicap(keras_home, *train, "-o", run)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resuming" in resumed.stdout and "from step 2" in resumed.stdout
        uninterrupted = minicap(keras_home, *train, "-o", whole)
        assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

        history, expected = (json.loads((d / "history.json").read_text()) for d in (run, whole))
        assert history["step"] == expected["step"]  # every step once
        np.testing.assert_allclose(history["loss"][-5:], expected["loss"][-5:], rtol=1e-5)
        assert history["epochs"][-1]["val_loss"] == pytest.approx(expected["epochs"][-1]["val_loss"], rel=1e-5)
        config = json.loads((run / "config.json").read_text())
        assert (config["backbone"], config["model_dim"], config["num_heads"]) == ("vit-b32", 256, 4)
        assert config["vit_implementation"] == "minicap"  # the default: minicap's own ViT
        assert not (run / "checkpoints").exists()

        # The saved model holds the backbone: a new photo is captioned from its pixels, no cache involved.
        photo = tmp_path / "new photo.jpg"
        from PIL import Image

        Image.new("RGB", (300, 200), (200, 40, 40)).save(photo)
        for backend in ("tensorflow", "jax"):  # minicap's ViT runs on either
            captioned = minicap(keras_home, "caption", photo, "--model", run / "model.keras", "--beam", 3,
                                backend=backend)
            assert captioned.returncode == 0, captioned.stderr[-2000:]
            path, caption = captioned.stdout.strip().splitlines()[-1].split("\t")
            assert path == str(photo) and caption.split()

        evaluated = minicap(keras_home, "evaluate", "--model", run / "model.keras", "--dataset", "flickr8k", "--json")
        assert evaluated.returncode == 0, evaluated.stderr[-2000:]
        metrics = json.loads(evaluated.stdout[evaluated.stdout.index("{"):])
        assert metrics["dataset"] == "flickr8k" and metrics["split"] == "test" and metrics["images"] == len(names["test"])
        for key in ("bleu1", "bleu4", "cider_d"):
            assert 0.0 <= metrics[key] <= (10.0 if key == "cider_d" else 1.0)


@pytest.mark.slow
def test_a_folder_of_own_photos_trains_and_evaluates_with_vit_keras(tmp_path, keras_home):
    # Also the article's vit-keras implementation, one setting away, loading the same file from the weights cache.
    require("vit_keras", "vit-keras (the optional 'vit' extra) is not installed")
    folder = write_caption_folder(tmp_path / "my photos", count=12, layout="kaggle")
    run = tmp_path / "run"
    trained = minicap(keras_home, "train", "--profile", "photos", "--dataset", folder, "--data-dir", tmp_path / "data",
                      "-o", run, *settings(vit_implementation="vit-keras"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["dataset"] == str(folder) and saved["model"]["vit_implementation"] == "vit-keras"
    evaluated = minicap(keras_home, "evaluate", "--model", run / "model.keras", "--dataset", folder, "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    metrics = json.loads(evaluated.stdout[evaluated.stdout.index("{"):])
    assert metrics["split"] == "val" and metrics["images"] == 1  # 10% of 12 images, deterministically
    assert set(metrics) >= {"bleu1", "bleu2", "bleu3", "bleu4", "cider_d"}


@pytest.mark.slow
def test_a_run_kept_on_drive_serves_every_later_runtime(tmp_path, keras_home, monkeypatch):
    # USE_DRIVE on Colab, in process: the run, the archives and the feature cache on (a stand-in) Google Drive, the
    # photos unpacked onto the runtime's disk. A later runtime (its disk empty, the data's host unreachable) loads
    # the finished run without training; retraining there unpacks the archives kept on Drive and reuses the cached
    # features: nothing is downloaded and the ViT computes nothing.
    import keras

    from minicap.colab import notebook_storage
    from minicap.config import profile
    from minicap.data.features import list_feature_caches
    from minicap.train import feature_cache_dir, train_or_load

    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    monkeypatch.delenv("MINICAP_VIT_MIRROR", raising=False)
    digests, names = write_flickr8k(tmp_path / "mirror")

    def mount(mount_point):
        (Path(mount_point) / "MyDrive").mkdir(parents=True, exist_ok=True)

    def storage():
        return notebook_storage("photos", use_drive=True, colab=True, mount=mount, mount_point=tmp_path / "drive",
                                runtime_data_dir=tmp_path / "runtime")

    drive = tmp_path / "drive" / "MyDrive" / "minicap"
    with serve(tmp_path / "mirror") as url:
        first = storage()
        settings = {**SMALL_PHOTOS, "data_url": url, "data_hashes": digests}
        config = profile("photos", **{**first.settings, **settings})
        trained = train_or_load(config, first.run_dir, verbose=0)
    assert not trained.loaded and Path(first.run_dir) == drive / "runs" / "photos"
    assert (drive / "data" / "flickr8k" / "downloads" / "Flickr8k_Dataset.zip").exists()  # archives on Drive
    assert (tmp_path / "runtime" / "flickr8k" / "Flicker8k_Dataset" / names["train"][0]).exists()  # photos: runtime
    assert not (drive / "data" / "flickr8k" / "Flicker8k_Dataset").exists()
    caches = list_feature_caches(feature_cache_dir(config))
    assert len(caches) == 2 and all(c["complete"] for c in caches) and str(drive) in caches[0]["folder"]

    shutil.rmtree(tmp_path / "runtime")  # a new runtime: its disk is empty; the server is gone
    second = storage()
    config = profile("photos", **{**second.settings, **settings})
    written = (Path(second.run_dir) / "model.keras").stat().st_mtime_ns
    loaded = train_or_load(config, second.run_dir, verbose=0)
    assert loaded.loaded and (Path(second.run_dir) / "model.keras").stat().st_mtime_ns == written

    predict, calls = keras.Model.predict_on_batch, []
    monkeypatch.setattr(keras.Model, "predict_on_batch", lambda self, x: calls.append(1) or predict(self, x))
    retrained = train_or_load(config, second.run_dir, retrain=True, verbose=0)
    assert not retrained.loaded and calls == []  # every feature read from the cache on Drive
    assert (tmp_path / "runtime" / "flickr8k" / "Flicker8k_Dataset").is_dir()  # unpacked again, from Drive
    assert len(list_feature_caches(feature_cache_dir(config))) == 2
