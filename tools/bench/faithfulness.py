"""Time to 95% faithfulness, the last figure of ``python -m tools.bench``: how long until the captions are right?

The quick profile trained by ``minicap.train.train`` while a callback captions 300 validation scenes greedily
every few hundred steps; the first training time (evaluations left out) at which 95% of the captions are
faithful to their scenes.
"""
import contextlib
import sys
import tempfile
import time

import keras

from minicap.data.datasets import load_data
from minicap.distribute import mixed_precision_dtype
from minicap.train import make_batches, train
from minicap.training import resolve_jit_compile


class _Stop(Exception):
    """Ends a benchmark's training run early (the target is reached, or the budget spent)."""


class FaithfulnessCurve(keras.callbacks.Callback):
    """Every ``every`` steps, the faithfulness of greedy captions of ``scenes``, against training time.

    Training time is wall-clock seconds since ``started`` (``minicap.train.train`` was called: its data,
    model and compilation count) less the time spent in these evaluations. Raises ``_Stop`` once the
    faithfulness reaches ``target`` (when ``stop_at_target``), or ``max_steps`` or ``max_seconds``
    are spent.
    """

    def __init__(self, scenes, tokenizer, every, target, started, total_steps, max_steps=None,
                 max_seconds=None, stop_at_target=True, log=print):
        super().__init__()
        self.scenes, self.tokenizer, self.every, self.target = scenes, tokenizer, every, target
        self.started, self.total_steps, self.max_steps, self.max_seconds = started, total_steps, max_steps, max_seconds
        self.stop_at_target, self.log = stop_at_target, log
        self.images = scenes.images.astype("float32") / 255.0
        self.steps, self.evaluation_seconds, self.points, self.first_step_seconds = 0, 0.0, [], None
        self.generator = None

    def training_seconds(self):
        return time.perf_counter() - self.started - self.evaluation_seconds

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.first_step_seconds is None:
            self.first_step_seconds = self.training_seconds()  # data, model, compilation and one step
        last = self.steps in (self.total_steps, self.max_steps)
        over = self.max_seconds is not None and self.training_seconds() >= self.max_seconds
        if self.steps % self.every == 0 or last or over:
            reached = self.evaluate() >= self.target
            if (reached and self.stop_at_target) or last or over:
                raise _Stop

    def evaluate(self):
        from minicap.data.faithfulness import faithfulness_rate
        from minicap.generate import Generator

        seconds, paused = self.training_seconds(), time.perf_counter()
        if self.generator is None:
            tokenizer = self.tokenizer
            self.generator = Generator.from_tokenizer(self.model, tokenizer)
        captions = self.tokenizer.decode_batch(self.generator.greedy(self.images))
        rate = faithfulness_rate(captions, self.scenes)
        self.points.append({"step": self.steps, "seconds": seconds, "faithfulness": rate})
        self.log(f"  step {self.steps}: faithfulness {rate:.3f} after {seconds:.1f} s of training")
        self.evaluation_seconds += time.perf_counter() - paused
        return rate


def first_and_best(points, target):
    """The first point of a curve whose faithfulness reaches ``target`` (None if none does), and the
    best point (the first of equals; None for no points)."""
    reached = next((point for point in points if point["faithfulness"] >= target), None)
    best = max(points, key=lambda point: point["faithfulness"], default=None)
    return reached, best


def time_to_faithfulness(settings, target=0.95, every=250, num_scenes=300, max_steps=None, max_seconds=None,
                         log=print):
    """Train ``settings`` (the quick profile) with ``minicap.train.train`` until its greedy captions of
    ``num_scenes`` validation scenes are ``target`` faithful, or its epochs, ``max_steps`` or
    ``max_seconds`` (of training time) run out.

    Returns:
        one ``"time_to_faithfulness"`` record: the curve of (step, seconds, faithfulness), and the
        first point at or above ``target``, or ``None`` with the best point.
    """
    from minicap.data.shapes import make_shapes
    from minicap.text import Tokenizer

    # The same tokenizer train() fits (its data are deterministic), and the validation scenes train() draws.
    train_split, _ = load_data(settings.replace(num_val=1))
    tokenizer = Tokenizer.fit([c for refs in train_split.captions for c in refs], min_count=settings.min_word_count)
    total_steps = settings.epochs * len(make_batches(settings, None, train_split, tokenizer, training=True))
    scenes = make_shapes(num_scenes, split="val", seed=settings.seed + 1, image_size=settings.model.image_size,
                         max_objects=settings.max_objects)
    policy = keras.mixed_precision.global_policy().name
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        curve = FaithfulnessCurve(scenes, tokenizer, every, target, started, total_steps, max_steps, max_seconds,
                                  log=log)
        try:
            with contextlib.redirect_stdout(sys.stderr):  # train's progress lines are not the bench's table
                train(settings, run_dir, verbose=0, callbacks=[curve])
        except _Stop:
            pass
        finally:
            keras.mixed_precision.set_global_policy(policy)  # train() sets the profile's own
    reached, best = first_and_best(curve.points, target)
    model = settings.model
    dtype_policy = "mixed_" + mixed_precision_dtype() if settings.mixed_precision else "float32"
    return {"backend": keras.backend.backend(), "dtype_policy": dtype_policy, "figure": "time_to_faithfulness",
            "config": "quick",
            "target": target, "every": every, "val_scenes": num_scenes, "batch_size": settings.batch_size,
            "jit": settings.jit_compile, "jit_compile": resolve_jit_compile(settings.jit_compile),
            "settings": settings.to_dict(),
            "summary": (f"{model.image_size} px, patches {model.patch_size} ({model.patch_stem}), width "
                        f"{model.model_dim}, {model.encoder_layers}+{model.decoder_layers} layers, "
                        f"{settings.num_train} scenes, batch {settings.batch_size}, {settings.epochs} epochs"),
            "steps_trained": curve.steps, "total_steps": total_steps,
            "first_step_seconds": curve.first_step_seconds, "evaluation_seconds": curve.evaluation_seconds,
            "reached": reached is not None, "seconds": reached["seconds"] if reached else None,
            "step": reached["step"] if reached else None, "best": best, "curve": curve.points}
