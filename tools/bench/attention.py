"""Time minicap's MultiHeadAttention against keras.layers.MultiHeadAttention (forward + backward).

Both layers sit in the same one-layer model (self-attention, then a mean squared error), compiled the
same way by ``model.compile``; each timing is ``train_on_batch`` (forward, backward and an SGD update
of the same number of weights), after warm-up, median over repeats.

    python -m tools.bench.attention                      # TensorFlow, CPU, the default sizes
    python -m tools.bench.attention --jit --causal       # XLA-compiled, with a causal mask
    KERAS_BACKEND=jax python -m tools.bench.attention
"""
import argparse
import statistics
import time

import keras
import numpy as np

from minicap.attention import MultiHeadAttention, causal_mask


def build_model(kind, length, dim, heads, causal, jit):
    tokens = keras.Input((length, dim))
    mask = keras.ops.convert_to_numpy(causal_mask(length))[None] if causal else None
    if kind == "minicap":
        layer = MultiHeadAttention(model_dim=dim, num_heads=heads)
    else:
        layer = keras.layers.MultiHeadAttention(num_heads=heads, key_dim=dim // heads)
    outputs = layer(tokens, tokens, attention_mask=mask)
    model = keras.Model(tokens, outputs)
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse", jit_compile=jit)
    return model


def time_steps(model, x, y, steps, repeats, warmup):
    for _ in range(warmup):
        model.train_on_batch(x, y)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        times.append((time.perf_counter() - start) / steps)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="train steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--jit", action="store_true", help="compile with XLA (jit_compile=True)")
    parser.add_argument("--causal", action="store_true", help="apply a causal mask")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, args.length, args.dim)).astype("float32")
    y = rng.normal(size=(args.batch, args.length, args.dim)).astype("float32")
    print(f"backend {keras.backend.backend()}, keras {keras.__version__}, batch {args.batch}, "
          f"length {args.length}, dim {args.dim}, heads {args.heads}, jit {args.jit}, causal {args.causal}")
    medians = {}
    # Interleave the two layers' repeats so that load from other processes hits both alike.
    models = {kind: build_model(kind, args.length, args.dim, args.heads, args.causal, args.jit)
              for kind in ("minicap", "keras")}
    assert models["minicap"].count_params() == models["keras"].count_params()
    times = {kind: [] for kind in models}
    for kind, model in models.items():
        time_steps(model, x, y, 1, 1, args.warmup)
    for _ in range(args.repeats):
        for kind, model in models.items():
            times[kind] += time_steps(model, x, y, args.steps, 1, 0)
    for kind in models:
        medians[kind] = statistics.median(times[kind])
        print(f"{kind:8s} median {1e3 * medians[kind]:7.2f} ms/step "
              f"(min {1e3 * min(times[kind]):.2f}, max {1e3 * max(times[kind]):.2f}, "
              f"{args.repeats} repeats of {args.steps} steps)")
    print(f"ratio minicap / keras: {medians['minicap'] / medians['keras']:.3f}")


if __name__ == "__main__":
    main()
