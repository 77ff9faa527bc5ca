"""Shared test settings: quiet TensorFlow, deterministic seeds, the float32 policy, and the finished tiny training
run many tests read (``run_dir``). The helpers the tests import live in ``tests/support``."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402 (after the backend is chosen)
import pytest  # noqa: E402

from tests.support import TINY_RUN  # noqa: E402


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A finished tiny training run (TINY_RUN, one epoch of 32 scenes): model.keras, tokenizer.json, config.json, ...;
    read it, don't change it."""
    from minicap.config import profile
    from minicap.train import train

    path = tmp_path_factory.mktemp("run") / "run"
    train(profile("quick", **{**TINY_RUN, "num_train": 32, "epochs": 1}), path, verbose=0)
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
