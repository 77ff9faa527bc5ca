"""``minicap.distribute``: data-parallel training, tested on two virtual CPU devices.

A process sees several CPU devices only if it asks before its backend starts (JAX:
``XLA_FLAGS=--xla_force_host_platform_device_count=2``; TensorFlow: two logical CPUs), so the
training runs happen in a subprocess: this file run as a script (``python tests/test_distributed.py
worker OUT``), which writes what it measured to ``OUT/results.json`` for the tests to check.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.support import TINY_RUN, require, unoptimised_jax_flags

# Independent of Keras's backend (or runs each backend itself): runs once, on the default one.
pytestmark = pytest.mark.single_backend

TINY = {**TINY_RUN, "run_eagerly": False}  # compiled steps, as data-parallel training runs them
CRASH_STEP = 5  # mid-epoch, one step after the checkpoint of step 4
SAMPLE_SEED = 7  # the images and captions each process feeds a saved model to compare its outputs


def _sample(tokenizer):
    images = np.random.default_rng(SAMPLE_SEED).random((3, 32, 32, 3)).astype("float32")
    return images, tokenizer.encode(["a red circle", "a blue square", "a green triangle"], TINY["max_length"])


def _outputs(model, tokenizer):
    return keras.ops.convert_to_numpy(model(_sample(tokenizer))).tolist()


# ----------------------------------------------------------------------------------------------------------
# Without several devices, in this process (whose backend is KERAS_BACKEND, TensorFlow by default)

DATA_PARALLEL = keras.backend.backend() in ("jax", "tensorflow")  # the backends that can train data-parallel


@pytest.fixture
def one_cpu_device(monkeypatch):
    """This machine as Keras would list one with a single CPU device and no GPU or TPU, whatever it has."""
    def list_devices(device_type=None):
        return ["cpu:0"] if device_type in (None, "cpu", "CPU") else []

    monkeypatch.setattr(keras.distribution, "list_devices", list_devices)


def test_one_device_without_accelerators(one_cpu_device):
    from minicap.distribute import accelerators, data_parallel, replicas

    assert accelerators() == []
    placement = data_parallel(0, batch_size=64)
    device = "cpu:0" if DATA_PARALLEL else f"the {keras.backend.backend()} backend's device"
    assert len(placement) == 1 and str(placement) == f"1 device ({device})"
    with placement.scope():
        assert replicas() == 1


# What asking for two devices on a machine of one says, on each backend.
TOO_MANY = ("devices=2 but this machine has no GPU or TPU and 1 CPU device; ask for at most 1" if DATA_PARALLEL else
            f"devices=2: data-parallel training needs the JAX or TensorFlow backend, not {keras.backend.backend()}")


def test_bad_device_counts_are_clear_errors(one_cpu_device):
    from minicap.distribute import data_parallel

    for bad in (-1, "two", 1.5, True):
        with pytest.raises(ValueError, match="devices must be 0 .* or a number of devices, got"):
            data_parallel(bad)
    with pytest.raises(ValueError, match=TOO_MANY):
        data_parallel(2, batch_size=64)
    if DATA_PARALLEL:
        with pytest.raises(ValueError, match="batch_size 64 is not divisible by the 3 devices"):
            data_parallel(3, batch_size=64)


def test_minicap_train_devices_2_without_two_devices_fails_before_writing(tmp_path, capsys, one_cpu_device):
    from minicap import cli

    assert cli.main(["train", "-o", str(tmp_path / "run"), "--devices", "2", "--set", "num_train=8"]) == 2
    assert f"minicap train: error: {TOO_MANY}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_devices_is_a_setting_and_an_option():
    from minicap import cli
    from minicap.config import profile, TrainConfig
    from minicap.train import cached_backbone_features, load_run, train

    assert profile("quick").devices == 0
    assert profile("quick", devices=2).devices == 2  # --set devices=2
    assert cli.build_parser().parse_args(["train", "--devices", "2"]).devices == 2


def test_a_short_batch_is_padded_with_targets_the_loss_ignores():
    from minicap.distribute import EvenBatches
    from minicap.training import MaskedAccuracy, MaskedSparseCrossEntropy

    rng = np.random.default_rng(0)
    images, tokens = rng.random((3, 4, 4, 3)).astype("float32"), rng.integers(1, 9, (3, 5))
    targets = np.concatenate([rng.integers(1, 9, (3, 3)), np.zeros((3, 2), int)], axis=1)  # padded captions
    even = EvenBatches([((images, tokens), targets)], multiple=2, pad_id=0)
    (padded_images, padded_tokens), padded_targets = even[0]
    assert padded_images.shape[0] == padded_tokens.shape[0] == padded_targets.shape[0] == 4
    assert (padded_targets[3] == 0).all() and (padded_images[3] == images[2]).all()
    logits = rng.normal(size=(4, 5, 9)).astype("float32")
    loss = MaskedSparseCrossEntropy(pad_id=0)
    assert float(loss(padded_targets, logits)) == pytest.approx(float(loss(targets, logits[:3])), rel=1e-6)
    accuracy, padded_accuracy = MaskedAccuracy(), MaskedAccuracy()
    accuracy.update_state(targets, logits[:3])
    padded_accuracy.update_state(padded_targets, logits)
    assert float(padded_accuracy.result()) == float(accuracy.result())
    assert EvenBatches([((images[:2], tokens[:2]), targets[:2])], 2)[0][1].shape[0] == 2  # even: unchanged


def test_a_resume_may_train_on_another_number_of_devices(tmp_path):
    from minicap.config import profile, TrainConfig
    from minicap.train import cached_backbone_features, load_run, train

    class Crash(Exception):
        pass

    class CrashAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 == 3:
                raise Crash

    config = profile("quick", **{**TINY, "epochs": 1, "run_eagerly": True})
    with pytest.raises(Crash):
        train(config, tmp_path / "run", verbose=0, callbacks=[CrashAt()])
    # As if the interrupted segment had run on two GPUs: the device count is not a setting a resume must match.
    saved = tmp_path / "run" / "train_config.json"
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "devices": 2}))
    result = train(config, tmp_path / "run", verbose=0)
    assert result.resumed_from_step == 2
    assert [segment["from_step"] for segment in result.history["segments"]] == [0, 2]
    with pytest.raises(Crash):  # while a change of what is computed is still refused
        train(config.replace(seed=1), tmp_path / "other", verbose=0, callbacks=[CrashAt()])
    with pytest.raises(ValueError, match=r"different settings \(seed\)"):
        train(config, tmp_path / "other", verbose=0)


# ----------------------------------------------------------------------------------------------------------
# Two virtual CPU devices, in a subprocess


def _run_script(args, backend, devices, timeout):
    environment = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    environment.pop("XLA_FLAGS", None)
    if backend == "jax":
        # Tiny runs, whose steps XLA compiles for each device count and runs a few times: unoptimised, as the
        # package tests on JAX compile (tools/dev.py's BACKEND_VARIABLES). This file's JAX tests took 40 CPU s
        # against 61 (2-core machine, the runs side by side).
        devices_flag = f"--xla_force_host_platform_device_count={devices}" if devices > 1 else ""
        environment["XLA_FLAGS"] = unoptimised_jax_flags(devices_flag)
    environment["MINICAP_TEST_CPU_DEVICES"] = str(devices)
    root = Path(__file__).parents[1]  # the minicap these tests import, not another installed one
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    process = subprocess.run([sys.executable, __file__, *args], env=environment, cwd=root,
                             capture_output=True, text=True, timeout=timeout)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-6000:]
    return process.stdout


@pytest.fixture(scope="module", params=["jax", "tensorflow"])
def worker(request, tmp_path_factory):
    """What ``_worker`` measured on two virtual CPU devices of ``backend``, and where its runs are."""
    backend = request.param
    require(backend)
    out = tmp_path_factory.mktemp(f"data_parallel_{backend}")
    log = _run_script(["worker", str(out)], backend, devices=2, timeout=1500)
    return {**json.loads((out / "results.json").read_text()), "log": log, "out": out, "backend": backend}


@pytest.mark.slow
def test_two_devices_train_as_one_does(worker):
    one, two = worker["runs"]["one"], worker["runs"]["two"]
    print(f"{worker['backend']}: 1 device: loss {one['loss']:.5f}, val_loss {one['val_loss']:.5f}, "
          f"{one['seconds']:.1f} s; 2 devices: loss {two['loss']:.5f}, val_loss {two['val_loss']:.5f}, "
          f"{two['seconds']:.1f} s")
    assert two["loss"] == pytest.approx(one["loss"], rel=0.02)
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=0.02)
    assert one["loss"] < 0.8 * one["first_loss"]  # both trained, not just stayed equal
    assert one["segments"] == [{"from_step": 0, "devices": 1, "device_names": ["cpu:0"]}]
    assert two["segments"] == [{"from_step": 0, "devices": 2, "device_names": ["cpu:0", "cpu:1"]}]
    assert (one["devices"], two["devices"]) == (1, 2)  # history.json's own record of the run's devices
    assert "training on 1 device (cpu:0)" in worker["log"]
    assert "training on 2 devices (data parallel): cpu:0, cpu:1" in worker["log"]


@pytest.mark.slow
def test_two_devices_compute_the_same_backbone_features(worker):
    with np.load(worker["out"] / "features.npz") as arrays:
        one, two = arrays["arr_0"], arrays["arr_1"]
    assert one.shape == two.shape and one.shape[0] == 11
    # The cache holds float16: a float32 difference of rounding can move a value by one float16 step (2^-11).
    np.testing.assert_allclose(two, one, rtol=2**-10, atol=2**-10)


@pytest.mark.slow
def test_two_devices_resume_after_a_crash(worker):
    resumed, whole = worker["runs"]["resumed"], worker["runs"]["two"]
    assert resumed["resumed_from_step"] == CRASH_STEP - 1  # the last checkpoint
    assert resumed["steps"] == whole["steps"]  # every step once
    assert [segment["from_step"] for segment in resumed["segments"]] == [0, CRASH_STEP - 1]
    assert {segment["devices"] for segment in resumed["segments"]} == {2} and resumed["devices"] == 2
    # Without dropout a resumed run is the uninterrupted one (as on one device).
    assert resumed["val_loss"] == pytest.approx(whole["val_loss"], rel=1e-5)


@pytest.fixture(scope="module")
def loaded(worker):
    """The outputs of the models of ``worker``'s runs "two" and "resumed", loaded in a fresh process with one
    device and no distribution (one process for both)."""
    runs = ["two", "resumed"]
    lines = _run_script(["load", *(str(worker["out"] / run) for run in runs)], worker["backend"], devices=1,
                        timeout=300).splitlines()
    return dict(zip(runs, json.loads(lines[-1])))


@pytest.mark.slow
@pytest.mark.parametrize("run", ["two", "resumed"])
def test_models_trained_on_two_devices_load_on_one(worker, loaded, run):
    """A fresh process with one device and no distribution loads the model and computes what it computed."""
    np.testing.assert_allclose(loaded[run], worker["runs"][run]["outputs"], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# The subprocess


def _worker(out):
    """Train TINY on one device and on two, crash and resume on two, compute backbone features on one
    device and on two; write what happened to ``out/results.json`` and ``out/features.npz``."""
    from minicap.config import profile, TrainConfig
    from minicap.train import cached_backbone_features, load_run, train

    class Crash(Exception):
        pass

    class CrashAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) == CRASH_STEP:
                raise Crash

    # XLA compiles slowly on TensorFlow CPUs; JAX always compiles.
    config = profile("quick", **TINY, jit_compile="off" if keras.backend.backend() == "tensorflow" else "auto")
    runs = {}

    def record(name, result, seconds):
        history = json.loads((result.run_dir / "history.json").read_text())  # as the run saved it
        runs[name] = {"loss": history["loss"][-1], "first_loss": history["loss"][0], "steps": history["step"],
                      "val_loss": history["epochs"][-1]["val_loss"], "segments": history["segments"],
                      "devices": history["devices"],
                      "resumed_from_step": result.resumed_from_step, "seconds": seconds,
                      "outputs": _outputs(result.model, result.tokenizer)}

    for name, devices in (("one", 1), ("two", 2)):
        start = time.perf_counter()
        record(name, train(config.replace(devices=devices), out / name, verbose=0),
               time.perf_counter() - start)
    try:
        train(config.replace(devices=2), out / "resumed", verbose=0, callbacks=[CrashAt()])
    except Crash:
        pass
    from minicap.distribute import replicas

    assert replicas() == 1  # the crash left the devices' scope
    start = time.perf_counter()
    record("resumed", train(config.replace(devices=2), out / "resumed", verbose=0), time.perf_counter() - start)
    np.savez(out / "features.npz", *_features(out))
    results = {"runs": runs}
    (out / "results.json").write_text(json.dumps(results))


def _features(out):
    """The backbone features of 11 images computed on one device and on two, with the same weights
    (batches of 4: the last batch, of 3, is padded to split across the 2 devices)."""
    from PIL import Image

    from minicap.config import profile, TrainConfig
    from minicap.train import cached_backbone_features, load_run, train
    from minicap.distribute import data_parallel
    from minicap.model import CaptionConfig, CaptionModel

    rng = np.random.default_rng(0)
    paths = []
    for index in range(11):
        paths.append(out / f"image-{index}.png")
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(paths[-1])
    model_settings = {name: TINY[name] for name in ("image_size", "patch_size", "model_dim", "num_heads",
                                                    "encoder_layers", "decoder_layers", "mlp_dim", "max_length")}
    features, weights = [], None
    for devices in (data_parallel(1), data_parallel(2)):
        model_config = CaptionConfig(vocab_size=20, **model_settings)
        config = TrainConfig(model=model_config, batch_size=4, data_dir=str(out / f"features-{len(devices)}"))
        with devices.scope():
            model = CaptionModel(model_config)
            model(_sample_batch())
            if weights is not None:  # the one-device model's weights
                model.set_weights(weights)
            weights = model.get_weights()
            features.append(np.asarray(cached_backbone_features(model, paths, config, progress=False),
                                       np.float32))
    return features


def _sample_batch():
    return np.zeros((2, 32, 32, 3), "float32"), np.ones((2, TINY["max_length"]), "int32")


def _load(directories):
    """Print the outputs of the models in ``directories`` (one device, no distribution), as a JSON list."""
    from minicap.config import profile, TrainConfig
    from minicap.train import cached_backbone_features, load_run, train

    from minicap.distribute import replicas

    assert replicas() == 1
    print(json.dumps([_outputs(*load_run(directory)) for directory in directories]))


if __name__ == "__main__":
    command, paths = sys.argv[1], [Path(arg) for arg in sys.argv[2:]]
    if os.environ.get("KERAS_BACKEND") == "tensorflow" and int(os.environ["MINICAP_TEST_CPU_DEVICES"]) > 1:
        import tensorflow as tf

        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration()] * int(os.environ["MINICAP_TEST_CPU_DEVICES"]))
    keras.utils.set_random_seed(0)
    _worker(paths[0]) if command == "worker" else _load(paths)
