"""Training: masked loss and accuracy, the warm-up schedule, and ``train`` on ``model.fit`` (chapter 5).

The decoder is trained with *teacher forcing*: it reads the true caption shifted right
(``[START] a red circle``) and predicts it shifted left (``a red circle [END]``) at every position at
once. Padding positions carry no word, so the loss and the accuracy ignore them.

``train`` adds what a long run needs: a progress bar, atomic checkpoints every few hundred steps,
resume after an interruption (run the same command again), optional mixed precision and XLA, a fixed
seed, and a JSON history. The run directory it writes::

    run_dir/train_config.json   what was asked for (the resume check compares it)
    run_dir/config.json         the model's CaptionConfig
    run_dir/tokenizer.json      the vocabulary
    run_dir/checkpoints/        state.json + the latest weights (with the optimizer's state)
    run_dir/history.json        loss, accuracy and learning rate per step and per epoch; the number of
                                devices the run trained on ("devices": 2 for two in data parallel),
                                and those of each run segment (a start or a resume)
    run_dir/model.keras         the trained model, written once training has finished

Reference: Vaswani et al. (2017), section 5.3 (optimizer and schedule) and 5.4 (label smoothing).
"""
import math
import time
from pathlib import Path

import keras
from keras import ops

from minicap.checkpoint import write_json_atomic

__all__ = ["MaskedSparseCrossEntropy", "MaskedAccuracy", "TransformerSchedule", "make_optimizer", "compile_model",
           "resolve_jit_compile", "History", "EpochLog", "JIT_BY_BACKEND"]


@keras.saving.register_keras_serializable(package="minicap")
class MaskedSparseCrossEntropy(keras.losses.Loss):
    """Cross-entropy over the vocabulary, averaged over the real (non-padding) tokens only.

    Args:
        pad_id: the target id that marks padding (ignored).
        label_smoothing: ε of the paper: the target puts 1 - ε on the true word and spreads ε
            uniformly over the vocabulary.

    Call arguments:
        y_true: ``(batch, length)`` int token ids.
        y_pred: ``(batch, length, vocab_size)`` logits (not probabilities).

    Returns:
        A scalar (``call`` returns the weighted ``(batch, length)`` losses Keras averages); 0 (not NaN)
        for a batch that is all padding.

    Example:
        >>> loss = MaskedSparseCrossEntropy(pad_id=0)
        >>> targets = np.array([[3, 4, 0]])  # two words, then padding
        >>> logits = np.zeros((1, 3, 5), "float32")  # uniform over 5 words: ln 5
        >>> round(float(loss(targets, logits)), 4)
        1.6094
    """

    def __init__(self, pad_id=0, label_smoothing=0.0, name="masked_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.pad_id = pad_id
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        log_probs = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)  # (B, T, V)
        true_log_prob = ops.take_along_axis(log_probs, y_true[..., None], axis=-1)[..., 0]  # (B, T)
        loss = -true_log_prob
        if self.label_smoothing:
            loss = (1.0 - self.label_smoothing) * loss - self.label_smoothing * ops.mean(log_probs, axis=-1)
        mask = ops.cast(ops.not_equal(y_true, self.pad_id), "float32")
        # Each real token weighs (B·T) / (real tokens) and padding 0, so Keras' mean over the B·T positions is
        # the mean over the real tokens. (Keras, not this method, reduces to a scalar: with several
        # TensorFlow devices it also divides each device's share of the loss by their number.)
        weight = mask * ops.cast(ops.size(mask), "float32") / ops.maximum(ops.sum(mask), 1.0)
        return loss * weight  # (B, T)

    def get_config(self):
        config = super().get_config()
        config.update({"pad_id": self.pad_id, "label_smoothing": self.label_smoothing})
        return config


@keras.saving.register_keras_serializable(package="minicap")
class MaskedAccuracy(keras.metrics.Metric):
    """The fraction of real (non-padding) target tokens predicted exactly, over all batches seen.

    ``update_state(y_true, y_pred)`` takes the target ids ``(batch, length)`` and the logits (or
    probabilities) ``(batch, length, vocab_size)``; ``result()`` is a scalar.

    Example:
        >>> accuracy = MaskedAccuracy(pad_id=0)
        >>> logits = np.eye(5, dtype="float32")[[[3, 1, 2]]]  # predicts 3, 1, 2
        >>> accuracy.update_state(np.array([[3, 4, 0]]), logits)
        >>> float(accuracy.result())  # one of the two real words is right; not the padding
        0.5
    """

    def __init__(self, pad_id=0, name="accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad_id = pad_id
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        mask = ops.cast(ops.not_equal(y_true, self.pad_id), "float32")
        self.correct.assign_add(ops.sum(ops.cast(ops.equal(predicted, y_true), "float32") * mask))
        self.total.assign_add(ops.sum(mask))

    def result(self):
        return self.correct / ops.maximum(self.total, 1.0)

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id}


@keras.saving.register_keras_serializable(package="minicap")
class TransformerSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) = scale · d^-0.5 · min(step^-0.5, step · warmup^-1.5), with step counted from 1.

    The rate rises linearly for ``warmup_steps`` steps, then decays as 1/√step. The peak,
    reached at ``warmup_steps``, is ``scale / √(d · warmup_steps)``.

    Example:
        >>> schedule = TransformerSchedule(model_dim=64, warmup_steps=1200)
        >>> round(float(schedule(1199)), 5)  # the peak, at step 1,200: 1 / sqrt(64 * 1200)
        0.00361
    """

    def __init__(self, model_dim, warmup_steps=4000, scale=1.0):
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be at least 1, got {warmup_steps}")
        self.model_dim = model_dim
        self.warmup_steps = warmup_steps
        self.scale = scale

    def __call__(self, step):
        step = ops.cast(step, "float32") + 1.0
        rate = ops.minimum(ops.rsqrt(step), step * self.warmup_steps**-1.5)
        return self.scale * self.model_dim**-0.5 * rate

    def get_config(self):
        return {"model_dim": self.model_dim, "warmup_steps": self.warmup_steps, "scale": self.scale}


# Not decayed by AdamW: biases, LayerNorm scales and offsets, and embedding tables, matched by name (a Keras
# variable's "bias" on JAX; TensorFlow's optimizer sees the tf.Variable's "caption_model/.../bias:0").
_NO_DECAY = [r"(^|/)(bias|gamma|beta|embeddings)(:\d+)?$"]


def make_optimizer(model_dim, warmup_steps=4000, scale=1.0, clipnorm=1.0, weight_decay=0.0):
    """Adam with the paper's β₁ = 0.9, β₂ = 0.98, ε = 1e-9, on the warm-up schedule.

    With ``weight_decay`` > 0 it is AdamW (decoupled decay: each step multiplies every weight matrix
    by ``1 - learning_rate * weight_decay``); biases, norms and embeddings are not decayed.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be at least 0, got {weight_decay}")
    schedule = TransformerSchedule(model_dim, warmup_steps, scale)
    adam = dict(beta_1=0.9, beta_2=0.98, epsilon=1e-9, clipnorm=clipnorm)
    if not weight_decay:
        return keras.optimizers.Adam(schedule, **adam)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=weight_decay, **adam)
    optimizer.exclude_from_weight_decay(var_names=_NO_DECAY)
    return optimizer


# jit_compile="auto", chosen by measurement rather than left to Keras (whose "auto" turns XLA off for
# TensorFlow on a CPU). The quick profile's training step (batch 64, model.fit, steady state; minicap
# bench: each backend's settings in one process, in alternation) on a 2-core CPU shared with others:
# JAX 88 ms jitted, 430 ms without (5x); TensorFlow 55-63 ms with XLA, 66-78 ms without while the
# other core was idle, both about 118 ms while another process held it (never slower with XLA).
# On a GPU XLA fuses the many small element-wise ops of a Transformer step as well, and Keras already
# turns it on there. PyTorch stays eager: Keras's jit for it is torch.compile, slow to compile and fragile.
#: Whether a training step is compiled with XLA under ``jit_compile="auto"``, per Keras backend (measured above).
JIT_BY_BACKEND = {"tensorflow": True, "jax": True, "torch": False}


def _supports_jit(model):
    """Whether every layer of ``model`` can run under XLA (Keras's own test, which also says no for
    TensorFlow with op determinism enabled and on Apple GPUs)."""
    try:
        from keras.src.trainers.trainer import model_supports_jit
    except ImportError:  # a Keras that moved it: the layers' own flags
        return all(getattr(layer, "supports_jit", True) for layer in model._flatten_layers())
    return model_supports_jit(model)


def resolve_jit_compile(jit_compile, model=None):
    """Whether a training step is compiled with XLA: ``"on"``/True, ``"off"``/False, or ``"auto"``:
    ``JIT_BY_BACKEND`` for the current backend, unless ``model`` has a layer XLA cannot compile (or,
    on TensorFlow, trains under a ``tf.distribute`` strategy, where Keras keeps XLA off)."""
    if jit_compile in ("on", True):
        return True
    if jit_compile in ("off", False):
        return False
    if jit_compile != "auto":
        raise ValueError(f"jit_compile must be 'auto', 'on', 'off', True or False, got {jit_compile!r}")
    backend = keras.backend.backend()
    if backend == "tensorflow" and getattr(model, "_distribute_strategy", None) is not None:
        return False  # several GPUs under a tf.distribute strategy: Keras's choice (not measured here)
    return JIT_BY_BACKEND.get(backend, False) and (model is None or _supports_jit(model))


def compile_model(model, pad_id=0, warmup_steps=4000, lr_scale=1.0, label_smoothing=0.0,
                  jit_compile="auto", weight_decay=0.0, run_eagerly=False, model_dim=None):
    """Compile a CaptionModel with the masked loss, masked accuracy and the scheduled Adam(W).

    ``jit_compile``: "auto" (XLA for TensorFlow and JAX, on CPUs too; eager for PyTorch: see
    ``JIT_BY_BACKEND``), "on"/True or "off"/False. ``run_eagerly``: no compiled step at all, each
    operation runs as Python calls it (for debugging; it overrides ``jit_compile``). ``model_dim``: the
    schedule's width ``d`` (default ``model.config.model_dim``; give it for a Keras model of your own).
    """
    model.compile(
        optimizer=make_optimizer(model_dim or model.config.model_dim, warmup_steps, lr_scale,
                                 weight_decay=weight_decay),
        loss=MaskedSparseCrossEntropy(pad_id, label_smoothing),
        metrics=[MaskedAccuracy(pad_id)],
        jit_compile=False if run_eagerly else resolve_jit_compile(jit_compile, model),
        run_eagerly=run_eagerly,
    )
    return model


class History(keras.callbacks.Callback):
    """Records loss, accuracy and learning rate after every step and every epoch, saved as JSON.

    The record survives a resume: it is stored with each checkpoint and reloaded with it.
    """

    def __init__(self, path, record=None):
        super().__init__()
        self.path = Path(path)
        self.record = record or {"step": [], "loss": [], "accuracy": [], "learning_rate": [], "epochs": []}
        self._epoch_start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        step = int(ops.convert_to_numpy(self.model.optimizer.iterations))
        self.record["step"].append(step)
        self.record["loss"].append(float(logs.get("loss", math.nan)))
        self.record["accuracy"].append(float(logs.get("accuracy", math.nan)))
        self.record["learning_rate"].append(float(ops.convert_to_numpy(
            self.model.optimizer.learning_rate)))

    def on_epoch_end(self, epoch, logs=None):
        entry = {"epoch": epoch + 1, "step": int(ops.convert_to_numpy(self.model.optimizer.iterations)),
                 "seconds": time.perf_counter() - (self._epoch_start or time.perf_counter())}
        entry.update({key: float(value) for key, value in (logs or {}).items()})
        self.record["epochs"].append(entry)
        self.save()

    def save(self):
        """Write the record to ``path`` (atomically: an interrupted write leaves the previous file)."""
        write_json_atomic(self.path, self.record)


class EpochLog(keras.callbacks.Callback):
    """Prints one line per epoch: its number in the whole run, the mean training loss and accuracy over its
    steps, the validation loss and accuracy at its end, and how long it took.

    ``train`` calls ``fit`` once per epoch (so that a resumed run sees the same batches); Keras' own
    ``verbose=2`` would then number every epoch "1/1". ``epochs`` is the run's total.
    """

    def __init__(self, epochs, print_function=print):
        super().__init__()
        self.epochs = epochs
        self.print_function = print_function
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        width = len(str(self.epochs))
        parts = [f"epoch {epoch + 1:>{width}}/{self.epochs}"]
        parts += [f"{key}={logs[key]:.3f}" for key in ("loss", "accuracy", "val_loss", "val_accuracy") if key in logs]
        parts.append(f"{time.perf_counter() - (self._start or time.perf_counter()):.0f}s")
        self.print_function(" ".join(parts), flush=True)

