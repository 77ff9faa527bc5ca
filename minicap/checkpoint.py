"""Checkpoints that a crash cannot corrupt, and resuming from them.

Every file is written under a temporary name and moved into place with ``os.replace``, which is
atomic: a process killed at any instant leaves either the previous file or the new one, never half
of one. The checkpoint's ``state.json`` is replaced *after* the weights file it names is complete,
so the latest state always points at whole weights. A checkpoint holds what changes during training
only: a frozen pretrained backbone's weights are not written again at every checkpoint.
"""
import json
import os
from pathlib import Path

import keras
import numpy as np


def write_json_atomic(path, data):
    """Write ``data`` as JSON to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def save_model_atomic(model, path):
    """``model.save(path)`` through a temporary file, so an interrupted save never leaves a broken model."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.tmp.keras")
    model.save(temporary)
    os.replace(temporary, path)


def training_state(model):
    """The variables a checkpoint must keep to resume ``model``'s training exactly, in a fixed order:
    the model's own (weights, dropout seeds), without those of a frozen pretrained backbone, which never
    change (a ViT-B/32 is 350 MB; a resumed run loads it from its pretrained file again), then the
    optimizer's (step count, Adam's moments)."""
    frozen = set()
    if getattr(model, "config", None) is not None and getattr(model.config, "pretrained", False) \
            and model.config.freeze_backbone:
        frozen = {id(variable) for variable in model.encoder.variables}
    variables = [v for v in model.variables if id(v) not in frozen]
    return variables + (list(model.optimizer.variables) if model.optimizer is not None else [])


def write_arrays_atomic(path, arrays):
    """Save ``{name: array}`` as an ``.npz`` file through a temporary file, so a crash leaves the old file."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp.npz")
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _describe(variables):
    """Each variable's shape and dtype, in order: what a checkpoint must match to be loaded into a model.
    (Not the paths: Keras numbers the layers of a second model in one process, ``dense_4`` for ``dense``.)"""
    return [[list(v.shape), str(v.dtype)] for v in variables]


class Checkpointer(keras.callbacks.Callback):
    """Saves the training state every ``every`` steps and at each epoch's end.

    The state is :func:`training_state`: the weights that train, the dropout seeds and the optimizer's
    variables (a frozen backbone is left out), as an ``.npz`` of plain arrays (no pickle).
    ``state.json`` records the epoch, the step within it and the global step of the latest
    checkpoint, the variables' shapes and dtypes (a checkpoint of another model is refused), plus
    ``extra()`` (e.g. the history so far). Older weights files are deleted once a newer one is in place.

    Args:
        directory: where checkpoints go (created if needed).
        every: save every this many steps (0: only at the end of each epoch).
        extra: a function returning a JSON-serialisable dict stored in ``state.json``.
    """

    def __init__(self, directory, every=0, extra=None):
        super().__init__()
        self.directory = Path(directory)
        self.every = every
        self.extra = extra or (lambda: {})
        self.epoch = 0
        self.batch_offset = 0  # batches of the current epoch done before this fit (a resumed epoch)

    @property
    def state_path(self):
        return self.directory / "state.json"

    def load_state(self):
        """The latest checkpoint's state dict, or None if there is none."""
        if not self.state_path.exists():
            return None
        try:
            state = json.loads(self.state_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"checkpoint state {self.state_path} is not valid JSON ({error}); "
                             f"delete {self.directory} to start afresh") from error
        weights = self.directory / state["weights"]
        if not weights.exists():
            raise ValueError(f"checkpoint state {self.state_path} names {weights}, which is missing; "
                             f"delete {self.directory} to start afresh")
        return state

    def restore(self, model):
        """Load the latest checkpoint into ``model`` (built and compiled); return its state or None."""
        state = self.load_state()
        if state is None:
            return None
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        variables = training_state(model)
        if state.get("variables") != _describe(variables):
            raise ValueError(f"checkpoint {self.directory} was written for another model (its variables differ); "
                             f"resume with the settings it was trained with, or delete {self.directory}")
        with np.load(self.directory / state["weights"], allow_pickle=False) as arrays:
            for index, variable in enumerate(variables):
                variable.assign(arrays[f"v{index}"])
        return state

    def save(self, epoch, step_in_epoch):
        self.directory.mkdir(parents=True, exist_ok=True)
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        name = f"step-{step:08d}.npz"
        variables = training_state(self.model)
        write_arrays_atomic(self.directory / name,
                            {f"v{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(variables)})
        state = {"epoch": epoch, "step_in_epoch": step_in_epoch, "step": step, "weights": name,
                 "variables": _describe(variables)}
        write_json_atomic(self.state_path, {**state, **self.extra()})
        for old in self.directory.glob("step-*.npz"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        done = self.batch_offset + batch + 1
        if self.every and done % self.every == 0:
            self.save(self.epoch, done)

    def on_epoch_end(self, epoch, logs=None):
        self.save(epoch + 1, 0)
