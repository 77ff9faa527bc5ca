"""Decoding speed: captions per second of cached greedy decoding, naive greedy decoding (the full model re-run at
every step) and cached beam search, on the quick profile's model."""
import statistics
import time

import keras
import numpy as np
from keras import ops

from minicap.generate import Generator
from minicap.model import CaptionModel


def bench_decoding(config, batch_size, repeats, beam_width, context):
    """Captions per second of cached greedy, naive greedy and cached beam search, ``config.max_length``
    tokens each (no caption ends early: the end token is an id the model never writes)."""
    model = CaptionModel(config)
    generator = Generator(model, start_id=1, end_id=-1, pad_id=config.pad_id)
    images = ops.convert_to_tensor(np.random.default_rng(0).random(
        (batch_size, config.image_size, config.image_size, 3), dtype=np.float32))
    runs = [("greedy", True, lambda: generator.greedy(images, cached=True)),
            ("greedy", False, lambda: generator.greedy(images, cached=False)),
            ("beam", True, lambda: generator.beam_search(images, beam_width=beam_width))]
    for _, _, run in runs:
        run()  # compile
    seconds = {(method, cached): [] for method, cached, _ in runs}
    for _ in range(repeats):
        for method, cached, run in runs:
            start = time.perf_counter()
            run()  # returns numpy tokens: waits for the device
            seconds[(method, cached)].append(time.perf_counter() - start)
    medians = {key: statistics.median(values) for key, values in seconds.items()}
    speedup = medians[("greedy", False)] / medians[("greedy", True)]
    jit = {"jax": "jax.jit", "tensorflow": "tf.function"}.get(keras.backend.backend(), "eager")
    return [{**context, "figure": "decoding", "config": "quick", "method": method, "cached": cached,
             "beam_width": beam_width if method == "beam" else 1, "batch_size": batch_size,
             "max_length": config.max_length, "jit_compile": jit, "repeats": repeats,
             "seconds": medians[(method, cached)], "captions_per_second": batch_size / medians[(method, cached)],
             "cached_over_naive": speedup if method == "greedy" else None}
            for method, cached, _ in runs]


