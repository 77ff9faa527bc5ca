"""Benchmarks of training as ``minicap train`` runs it: the middle of ``python -m tools.bench``.

Three questions, answered on this machine with the profiles of :mod:`minicap.config` (the fourth, how
long until the captions are right, is :mod:`tools.bench.faithfulness`'s):

1. **Which XLA setting is fastest, on which backend?** The quick profile's training step, as
   ``minicap.train.train`` takes it (``model.fit`` over the profile's ``CaptionBatches``, compiled by
   ``compile_model``), with XLA on and off. Keras fixes its backend once per process, so each
   backend other than the current one runs in a subprocess (``python -m tools.bench.training``) and
   its records are merged. ``minicap.training.JIT_BY_BACKEND``, the "auto" setting, follows these numbers.
2. **Does the input pipeline keep up?** The time to produce one batch (``CaptionBatches[i]``) as a
   share of a whole step. ``fit`` reads a ``PyDataset`` of one worker in the training thread,
   before each step, so the step time includes it.
3. **What does the feature cache save?** The photos profile (a frozen ViT-B/32 at 224 pixels and a
   small decoder) trained on cached backbone features ``(batch, 49, 768)`` against trained on images,
   where the ViT runs at every step; and the one-off cost of computing the features.
"""
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from minicap.config import TrainConfig, model_config
from minicap.model import CaptionModel
from minicap.train import make_batches
from minicap.training import compile_model, resolve_jit_compile
from tools.bench.device import context_of_this_process
from tools.bench.flops import decoder_flops, encoder_flops

ROOT = Path(__file__).resolve().parents[2]  # the clone: tools/bench/training.py

FLICKR8K_TRAIN_IMAGES = 6000  # the photos profile's data set: 6,000 training images ...
FLICKR8K_REFERENCES = 5  # ... of 5 captions each; an epoch shows every caption once (469 steps of 64)
JIT_SETTINGS = {"tensorflow": ("on", "off"), "jax": ("on", "off"), "torch": ("off",)}  # torch "on": torch.compile


class _Slice(keras.utils.PyDataset):
    """``count`` batches of ``batches`` from ``start`` on, cycling; ``fit``'s epoch ends change nothing."""

    def __init__(self, batches, start, count):
        super().__init__()
        self.batches, self.start, self.count = batches, start, count

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        return self.batches[(self.start + index) % len(self.batches)]


class _ArrayBatches:
    """Batches ``((inputs, tokens[:, :-1]), tokens[:, 1:])`` of in-memory arrays, in order."""

    def __init__(self, inputs, tokens, batch_size):
        self.inputs, self.tokens, self.batch_size = inputs, tokens, batch_size

    def __len__(self):
        return len(self.inputs) // self.batch_size

    def __getitem__(self, index):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return (self.inputs[rows], self.tokens[rows, :-1]), self.tokens[rows, 1:]


class _StepClock(keras.callbacks.Callback):
    """Notes the time at which the first ``warmup`` steps of a ``fit`` are done."""

    def __init__(self, warmup):
        super().__init__()
        self.warmup, self.start = warmup, None

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.warmup - 1:
            float(keras.ops.convert_to_numpy(logs["loss"]))  # waits for the device
            self.start = time.perf_counter()


def time_fits(runs, repeats=1, warmup=1):
    """Seconds per step of ``model.fit`` for each of ``runs``, ``{name: (model, batches, steps)}``,
    timed in alternation (every run once per repeat), so that a machine's changing load shifts all
    runs alike rather than the one that happened to run last.

    Each ``fit`` runs ``warmup`` steps first (the first ``fit``'s first step compiles), then the
    timed ``steps``; its clock starts once the warm-up steps are done and stops when ``fit``
    returns, after the last step's work (on JAX, ``fit`` writes the state back), so a timing holds
    the steps' work and their batches, not ``fit``'s own setup.

    Returns:
        ``{name: [seconds per step of each repeat]}``.
    """
    seconds = {name: [] for name in runs}
    start = dict.fromkeys(runs, 0)
    for _ in range(repeats):
        for name, (model, batches, steps) in runs.items():
            clock = _StepClock(warmup)
            model.fit(_Slice(batches, start[name], warmup + steps), verbose=0, shuffle=False, callbacks=[clock])
            seconds[name].append((time.perf_counter() - clock.start) / steps)
            start[name] += warmup + steps
    return seconds


def _compile(model, settings, jit):
    """``compile_model`` with the training settings of ``settings`` (a TrainConfig)."""
    return compile_model(model, model.config.pad_id, settings.warmup_steps, settings.lr_scale,
                         settings.label_smoothing, jit_compile=jit, weight_decay=settings.weight_decay)


# ---------------------------------------------------------------------------------------------
# 1 and 2: the training step per XLA setting, and the input pipeline's share of it
# ---------------------------------------------------------------------------------------------

def bench_training_step(settings, num_scenes=1024, steps=10, repeats=3, jits=None, precision="auto"):
    """The quick profile's training step with each XLA setting of ``jits`` (default: ``JIT_SETTINGS``
    of this backend), and the input pipeline's share of the default setting's step.

    Args:
        settings: the profile (a ``TrainConfig``, or its dict): model, batch size, optimizer.
        num_scenes: shapes scenes the batches are drawn from (4 captions each: 16 scenes a batch of 64).

    Returns:
        records: one ``"training_step"`` per setting, then one ``"input_pipeline"``.
    """
    from minicap.data.shapes import make_shapes
    from minicap.text import Tokenizer

    settings = settings if isinstance(settings, TrainConfig) else TrainConfig.from_dict(settings)
    context = context_of_this_process(precision)
    backend = context["backend"]
    data = make_shapes(num_scenes, split="train", seed=settings.seed, image_size=settings.model.image_size,
                       max_objects=settings.max_objects)
    tokenizer = Tokenizer.fit([c for refs in data.captions for c in refs], min_count=settings.min_word_count)
    batches = make_batches(settings, None, data, tokenizer, training=True, progress=False)
    config = model_config(settings, len(tokenizer), tokenizer.pad_id)
    default = resolve_jit_compile("auto", CaptionModel(config))
    models = {}
    for jit in jits or JIT_SETTINGS.get(backend, ("off",)):
        keras.utils.set_random_seed(settings.seed)
        models[jit] = _compile(CaptionModel(config), settings, jit)
    timings = time_fits({jit: (model, batches, steps) for jit, model in models.items()}, repeats)
    records = []
    for jit, model in models.items():
        seconds = statistics.median(timings[jit])
        records.append({**context, "figure": "training_step", "config": "quick", "jit": jit,
                        "jit_compile": bool(model.jit_compile), "default": bool(model.jit_compile) == default,
                        "batch_size": settings.batch_size, "steps": steps, "repeats": repeats,
                        "seconds_per_step": seconds, "seconds_per_step_best": min(timings[jit]),
                        "seconds_per_step_repeats": timings[jit],
                        "images_per_second": settings.batch_size / seconds})
    batch_seconds = []
    for index in range(min(len(batches), 2 * steps)):
        begin = time.perf_counter()
        batches[index]
        batch_seconds.append(time.perf_counter() - begin)
    step = next((r for r in records if r["default"]), records[0])
    per_batch = statistics.median(batch_seconds)
    records.append({**context, "figure": "input_pipeline", "config": "quick", "batch_size": settings.batch_size,
                    "batches": len(batch_seconds), "seconds_per_batch": per_batch,
                    "images_per_second": settings.batch_size / per_batch, "step_jit": step["jit"],
                    "seconds_per_step": step["seconds_per_step"],
                    "share_of_step": per_batch / step["seconds_per_step"]})
    return records


def in_subprocess(backend, function, options, log=print):
    """``function``'s records (a function of this module named in ``SUBPROCESS_FUNCTIONS``) computed by
    a fresh Python process on ``backend``: its JSON, read back."""
    import importlib.util

    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if module is None or importlib.util.find_spec(module) is None:
        raise ValueError(f"backend {backend!r} is not installed here (or unknown); choose among "
                         f"{sorted(name for name in JIT_SETTINGS if importlib.util.find_spec(name))}")
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "records.json"
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # the clone's tools, minicap
        environment = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3",
                       "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # JAX: no 75% of a GPU's memory up front
        command = [sys.executable, "-m", "tools.bench.training", function, json.dumps(options), str(output)]
        log(f"  {backend}: {' '.join(command[:4])} ...")
        done = subprocess.run(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=ROOT)
        if done.returncode:
            raise RuntimeError(f"the {backend} subprocess failed (status {done.returncode}):\n{done.stdout[-3000:]}")
        return json.loads(output.read_text())


# ---------------------------------------------------------------------------------------------
# 3: cached features against the frozen backbone at every step
# ---------------------------------------------------------------------------------------------

def bench_feature_cache(settings, batch_size=None, steps=10, image_steps=1, repeats=3, vocab_size=3000, jit="auto",
                        precision="auto"):
    """One training step of the photos profile on cached backbone features and on images, and the
    cost of computing the features, each extrapolated to a Flickr8k epoch and to the whole run.

    The model is the profile's with random backbone weights (nothing to download; the step time does
    not depend on the values). Inputs are in-memory arrays on both sides, so the ratio is the
    model's alone (reading and resizing JPEG files would slow the image side further). The record
    also holds the ratio's ceiling from matmul FLOPs (ViT forward + decoder training over decoder
    training; vit-keras's class token, one position in 50, left out).

    Returns:
        one ``"feature_cache"`` record.
    """
    settings = settings if isinstance(settings, TrainConfig) else TrainConfig.from_dict(settings)
    settings = settings.replace(backbone_weights=None)
    batch_size = batch_size or settings.batch_size
    context = context_of_this_process(precision)
    config = model_config(settings, vocab_size, pad_id=0)
    keras.utils.set_random_seed(settings.seed)
    model = _compile(CaptionModel(config), settings, jit)
    rng = np.random.default_rng(0)
    count = 2 * batch_size
    images = rng.random((count, config.image_size, config.image_size, 3), dtype=np.float32)
    tokens = rng.integers(1, vocab_size, (count, config.max_length + 1)).astype("int32")

    # The features, as cached_backbone_features computes them: a compiled pass of the encoder.
    inputs = keras.Input((config.image_size, config.image_size, 3))
    extractor = keras.Model(inputs, model.encoder(inputs, training=False), name="feature_extractor")
    extractor.predict_on_batch(images[:batch_size])  # compiles
    begin = time.perf_counter()
    features = np.concatenate([np.asarray(extractor.predict_on_batch(images[start:start + batch_size]))
                               for start in range(0, count, batch_size)]).astype(np.float16)  # the cache's dtype
    feature_seconds = (time.perf_counter() - begin) / count
    features = features.astype(np.float32)  # as CaptionBatches reads them from the cache

    # A second model for images: on TensorFlow, a train step traced for features then images has an
    # input of unknown rank (and one run trains on one kind of input anyway).
    keras.utils.set_random_seed(settings.seed)
    image_model = _compile(CaptionModel(config), settings, jit)
    timings = time_fits({"cached": (model, _ArrayBatches(features, tokens, batch_size), steps),
                         "images": (image_model, _ArrayBatches(images, tokens, batch_size), image_steps)}, repeats)
    cached, uncached = statistics.median(timings["cached"]), statistics.median(timings["images"])
    # The ceiling of the ratio: a step on images adds the ViT's forward pass (no backward: it is frozen)
    # to the decoder's training step (forward and backward, about 3 forward passes).
    backbone_flops, decoder_training_flops = encoder_flops(config), 3 * decoder_flops(config)
    epoch_steps = math.ceil(FLICKR8K_TRAIN_IMAGES * FLICKR8K_REFERENCES / batch_size)
    epochs = settings.epochs
    cached_run = feature_seconds * FLICKR8K_TRAIN_IMAGES + epochs * epoch_steps * cached
    return {**context, "figure": "feature_cache", "config": "photos", "jit_compile": bool(model.jit_compile),
            "batch_size": batch_size, "image_size": config.image_size, "backbone": config.backbone,
            "backbone_weights": None, "num_patches": config.num_patches, "feature_dim": config.feature_dim,
            "decoder_layers": config.decoder_layers, "model_dim": config.model_dim, "num_heads": config.num_heads,
            "mlp_dim": config.mlp_dim, "vocab_size": vocab_size, "max_length": config.max_length,
            "steps": steps, "image_steps": image_steps, "repeats": repeats,
            "seconds_per_step_cached": cached, "seconds_per_step_images": uncached,
            "seconds_per_step_repeats": timings,
            "images_over_cached": uncached / cached, "backbone_flops_per_image": backbone_flops,
            "decoder_training_flops_per_image": decoder_training_flops,
            "flops_images_over_cached": (backbone_flops + decoder_training_flops) / decoder_training_flops,
            "feature_seconds_per_image": feature_seconds, "epoch_images": FLICKR8K_TRAIN_IMAGES,
            "epoch_steps": epoch_steps, "extrapolated": "per Flickr8k epoch: epoch_steps x seconds per step",
            "epoch_seconds_cached": epoch_steps * cached, "epoch_seconds_images": epoch_steps * uncached,
            "feature_seconds": feature_seconds * FLICKR8K_TRAIN_IMAGES, "epochs": epochs,
            "run_seconds_cached": cached_run, "run_seconds_images": epochs * epoch_steps * uncached,
            "run_images_over_cached": epochs * epoch_steps * uncached / cached_run}


SUBPROCESS_FUNCTIONS = {"training_step": bench_training_step}


if __name__ == "__main__":  # python -m tools.bench.training FUNCTION OPTIONS_JSON OUTPUT_JSON (in_subprocess)
    name, options, output = sys.argv[1:]
    records = SUBPROCESS_FUNCTIONS[name](**json.loads(options))
    Path(output).write_text(json.dumps(records, indent=1) + "\n")
