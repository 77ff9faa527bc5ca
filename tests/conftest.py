"""Shared test settings: quiet TensorFlow, deterministic seeds, a temporary working directory; and
``require``/``unavailable``, which skip a test whose optional dependency is missing, except under CI.

Test modules import the helpers with ``from conftest import require`` (pytest puts ``tests/`` on the
import path), and the developer tools of ``tools/`` by their names (``import dev``, ``import bench``): this
file puts ``tools/`` on the import path too.
"""
import importlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402


def unavailable(reason):
    """Skip locally; fail under CI (the variable ``CI`` set), where a missing prerequisite is a broken pipeline."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def require(module_name, reason=None):
    """Import and return ``module_name``, an optional dependency of a test; without it, ``unavailable``.

    Unlike ``pytest.importorskip``, a CI run cannot pass by silently skipping the tests it exists for.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        unavailable(f"{reason or module_name + ' is not installed'} ({error})")


# A training run of seconds on a CPU, for tests that need a trained model on disk (the run_dir fixture).
# Run eagerly: faster than a compiled step for a model this small (see tests/test_train.py's TINY).
TINY_RUN = dict(num_train=32, num_val=8, image_size=32, patch_size=8, max_objects=1, max_length=10, model_dim=16,
                num_heads=2, encoder_layers=1, decoder_layers=1, mlp_dim=32, batch_size=16, epochs=1,
                warmup_steps=5, checkpoint_every=2, run_eagerly=True)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A finished tiny training run (TINY_RUN): model.keras, tokenizer.json, config.json, ...; read it, don't change it."""
    from minicap.config import profile
    from minicap.train import train

    path = tmp_path_factory.mktemp("run") / "run"
    train(profile("quick", **TINY_RUN), path, verbose=0)
    keras.mixed_precision.set_global_policy("float32")
    return path


@pytest.fixture(autouse=True)
def _seed_and_policy():
    """Every test starts from the same seed and the float32 policy, whatever the last one set."""
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"
