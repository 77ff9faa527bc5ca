"""The input pipeline: images per second that ``CaptionBatches`` delivers, which must exceed what a training step
consumes."""
import time

from minicap.data.pipeline import CaptionBatches
from minicap.text import Tokenizer


def bench_pipeline(label, images, captions, max_length, batch_size, context):
    """Images per second that ``CaptionBatches`` delivers (one pass over ``images``, no model)."""
    tokenizer = Tokenizer.fit([c for refs in captions for c in refs])
    batches = CaptionBatches(images, captions, tokenizer, max_length, batch_size, references="random")
    start = time.perf_counter()
    count = sum(len(batches[index][1]) for index in range(len(batches)))
    seconds = time.perf_counter() - start
    return {**context, "figure": "input_pipeline", "config": label, "batch_size": batch_size,
            "images": count, "seconds": seconds, "seconds_per_batch": seconds / len(batches),
            "images_per_second": count / seconds}
