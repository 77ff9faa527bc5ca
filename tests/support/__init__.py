"""What the tests share: the tiny training run many of them need (``TINY_RUN``), ``require`` and ``unavailable``
for optional prerequisites, and, in modules of their own, the stand-ins of what no test machine can download
(:mod:`~tests.support.photo_stand_ins`), hand-made models (:mod:`~tests.support.stand_ins`,
:mod:`~tests.support.planted_captioner`), the layer checks (:mod:`~tests.support.layer_checks`) and the plugin that
hands nbval's executed notebooks to the book (:mod:`~tests.support.notebook_cache`).
"""
import importlib
import os

import pytest

# A training run of seconds on a CPU (the quick profile, tiny): 48 scenes of one object, 4 captions each, batches of
# 16 (12 steps an epoch), 2 epochs, a checkpoint every 2 steps. Run eagerly on TensorFlow and PyTorch: for a model
# this small a step run op by op is faster than tracing a graph (on TensorFlow, 4.5 s against 7.9 s per run on a
# 2-core CPU). Not on JAX, which compiles every op it runs eagerly: there the compiled step is faster (test_train.py
# and test_model.py on JAX with an empty compile cache: 193 CPU s against 275). The backend is read from
# KERAS_BACKEND, which the test lanes set, without importing Keras: nbval's process loads this package as a plugin.
_JAX = os.environ.get("KERAS_BACKEND", "tensorflow") == "jax"
TINY_RUN = dict(num_train=48, num_val=8, image_size=32, patch_size=8, max_objects=1, max_length=10, model_dim=16,
                num_heads=2, encoder_layers=1, decoder_layers=1, mlp_dim=32, batch_size=16, epochs=2,
                warmup_steps=5, checkpoint_every=2, run_eagerly=not _JAX)


def unoptimised_jax_flags(flags=""):
    """``flags`` (a value of ``XLA_FLAGS``) with XLA's optimisation level 0 added: what the test command gives its
    JAX package tests (tools/dev.py's ``BACKEND_VARIABLES``, with the measurements), for the JAX processes the tests
    start themselves whose programs mostly run once or a few times."""
    from tools.dev import BACKEND_VARIABLES

    return f"{flags} {BACKEND_VARIABLES['jax']['XLA_FLAGS']}".strip()


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
