"""Checkpoints that a crash cannot corrupt, and resuming from them.

Every file is written under a temporary name and moved into place with ``os.replace``, which is
atomic: a process killed at any instant leaves either the previous file or the new one, never half
of one. The checkpoint's ``state.json`` is replaced *after* the weights file it names is complete,
so the latest state always points at whole weights.
"""
import json
import os
from pathlib import Path

import keras


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


class Checkpointer(keras.callbacks.Callback):
    """Saves the weights and the optimizer's state every ``every`` steps and at each epoch's end.

    ``state.json`` records the epoch, the step within it and the global step of the latest
    checkpoint, plus ``extra()`` (e.g. the history so far). Older weights files are deleted once a
    newer one is in place.

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
        model.load_weights(self.directory / state["weights"])
        return state

    def save(self, epoch, step_in_epoch):
        self.directory.mkdir(parents=True, exist_ok=True)
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        name = f"step-{step:08d}.weights.h5"
        temporary = self.directory / f"step-{step:08d}.tmp.weights.h5"
        self.model.save_weights(temporary, overwrite=True)
        os.replace(temporary, self.directory / name)
        state = {"epoch": epoch, "step_in_epoch": step_in_epoch, "step": step, "weights": name}
        write_json_atomic(self.state_path, {**state, **self.extra()})
        for old in self.directory.glob("step-*.weights.h5"):
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
