"""minicap against the same model from stock Keras layers: training throughput and MFU.

How many images per second does a training step of ``CaptionModel`` process, and what fraction of the device's
peak is that (model FLOPs utilisation, MFU)? The same architecture built from stock Keras layers
(``build_stock_model``) is timed alongside, with the same loss, optimizer, dtype policy and XLA setting, so the
ratio minicap / stock says whether minicap's own layers cost anything.

MFU = analytic training FLOPs per image (:func:`tools.bench.flops.training_flops`) × images/s ÷ peak FLOP/s (the
peak: :func:`tools.bench.device.peak_flops`).
"""
import math
import statistics
import time

import keras
import numpy as np
from keras import ops

from minicap.encoder import NORM_EPSILON
from minicap.model import CaptionModel
from minicap.positional import sinusoidal_encoding
from minicap.training import compile_model
from tools.bench.flops import training_flops

VIT_B32_BATCH_SIZES = {"gpu": (64, 128, 256), "cpu": (4,)}


def build_stock_model(config):
    """``CaptionModel``'s architecture from stock Keras layers only, as a functional model.

    Same pre-norm layers, heads, MLPs, dropout, masks and parameter count: ``Conv2D`` with a
    patch-sized kernel and stride for the patch embedding (the same weights as a Dense layer over
    flattened patches), ``Embedding`` for the learned patch positions and the tokens,
    ``keras.layers.MultiHeadAttention``, ``Dense``, ``LayerNormalization``. Inputs and outputs
    are those of ``CaptionModel``: ``[images, tokens]`` -> float32 logits.
    """
    layers = keras.layers
    spec = config.encoder_spec()
    size, patch, tokens_length = spec.image_size, spec.patch_size, config.max_length
    width, dim, patches = spec.width, config.model_dim, spec.num_patches
    rate = config.dropout

    def norm(name):
        return layers.LayerNormalization(epsilon=NORM_EPSILON, name=name)

    def residual(x, branch):
        return layers.Add()([x, layers.Dropout(rate)(branch)])

    def feed_forward(x, width, hidden, name):
        h = layers.Dense(hidden, activation="gelu", name=f"{name}_hidden")(x)
        return layers.Dense(width, name=f"{name}_projection")(layers.Dropout(rate)(h))

    def attention(query, value, width, heads, name, mask=None):
        mha = layers.MultiHeadAttention(heads, width // heads, dropout=rate, name=name)
        return mha(query, value, attention_mask=mask)

    images = keras.Input((size, size, 3), name="images")
    tokens = keras.Input((tokens_length,), dtype="int32", name="tokens")

    x = layers.Rescaling(2.0, offset=-1.0)(images)  # [0, 1] -> [-1, 1]
    x = layers.Conv2D(width, patch, strides=patch, name="patch_projection")(x)  # (B, g, g, E)
    x = layers.Reshape((patches, width))(x)  # (B, N, E)
    positions = ops.cumsum(ops.ones_like(ops.cast(x[:1, :, 0], "int32")), axis=1) - 1  # (1, N): 0 .. N-1
    x = layers.Add()([x, layers.Embedding(patches, width, name="patch_positions")(positions)])
    x = layers.Dropout(rate)(x)
    for i in range(spec.num_layers):
        h = norm(f"encoder_{i}_attention_norm")(x)
        x = residual(x, attention(h, h, width, spec.num_heads, f"encoder_{i}_attention"))
        h = norm(f"encoder_{i}_feed_forward_norm")(x)
        x = residual(x, feed_forward(h, width, spec.mlp_dim, f"encoder_{i}_feed_forward"))
    encoded = norm("encoder_final_norm")(x)
    if width != dim:
        encoded = layers.Dense(dim, name="encoder_projection")(encoded)  # (B, N, d)

    causal = np.tril(np.ones((tokens_length, tokens_length), bool))[None]  # (1, T, T)
    mask = ops.logical_and(causal, ops.expand_dims(ops.not_equal(tokens, config.pad_id), 1))  # (B, T, T)
    y = layers.Embedding(config.vocab_size, dim, name="token_embedding")(tokens) * math.sqrt(dim)
    y = y + ops.convert_to_numpy(sinusoidal_encoding(tokens_length, dim))[None]  # (B, T, d)
    y = layers.Dropout(rate)(y)
    for i in range(config.decoder_layers):
        h = norm(f"decoder_{i}_self_attention_norm")(y)
        y = residual(y, attention(h, h, dim, config.num_heads, f"decoder_{i}_self_attention", mask))
        h = norm(f"decoder_{i}_cross_attention_norm")(y)
        y = residual(y, attention(h, encoded, dim, config.num_heads, f"decoder_{i}_cross_attention"))
        h = norm(f"decoder_{i}_feed_forward_norm")(y)
        y = residual(y, feed_forward(h, dim, config.mlp_dim, f"decoder_{i}_feed_forward"))
    y = norm("decoder_final_norm")(y)
    logits = layers.Dense(config.vocab_size, dtype="float32", name="head")(y)  # (B, T, V)
    return keras.Model([images, tokens], logits, name="stock_captioner")


def _compile(model, config, jit):
    """minicap's recipe (the masked loss and accuracy, the scheduled Adam) on either build of the model."""
    return compile_model(model, config.pad_id, warmup_steps=100, jit_compile=jit, model_dim=config.model_dim)


def random_batch(config, batch_size, seed=0):
    """Images, input tokens and targets for one step, converted to backend tensors once (on the device)."""
    rng = np.random.default_rng(seed)
    images = rng.random((batch_size, config.image_size, config.image_size, 3), dtype=np.float32)
    tokens = rng.integers(1, config.vocab_size, (batch_size, config.max_length + 1)).astype("int32")
    lengths = rng.integers(config.max_length // 2, config.max_length + 2, batch_size)
    tokens[np.arange(config.max_length + 1)[None] >= lengths[:, None]] = config.pad_id  # realistic padding
    convert = ops.convert_to_tensor
    return (convert(images), convert(tokens[:, :-1])), convert(tokens[:, 1:])


def _jax_steps(model, x, y, steps):
    """Under JAX, ``steps`` calls of the model's compiled train step with its state kept on the device.

    ``train_on_batch`` writes every variable back to the model and reads the loss to the host after
    each step; this loop does neither until the end, like ``fit``. Returns a function that writes the
    final state back to the model (called after the timing stops).
    """
    names = ("trainable_variables", "non_trainable_variables", "optimizer_variables", "metrics_variables")
    state = model._get_jax_state(**{name: True for name in names}, purge_model_variables=False)
    for _ in range(steps):
        logs, state = model.train_function(state, iter([(x, y, None)]))
    float(logs["loss"])  # waits for the device

    def write_back():
        model._jax_state, model._jax_state_synced = dict(zip(names, state)), False
        model.jax_state_sync()

    return write_back


def _fast_loop_available(model):
    return keras.backend.backend() == "jax" and all(
        hasattr(model, name) for name in ("_get_jax_state", "train_function", "jax_state_sync"))


def time_training(models, x, y, steps, repeats):
    """Median seconds per step of each compiled model, timed in alternation after a warm-up.

    Each timing runs ``steps`` steps on the same device-resident batch and ends by reading the last
    loss as a float, which waits for the device. Under JAX the steps run back to back on the
    device-resident state (``_jax_steps``); elsewhere they are ``train_on_batch`` calls.
    """
    for model in models.values():
        for _ in range(2):  # the first call compiles
            model.train_on_batch(x, y)
    seconds = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            if _fast_loop_available(model):
                write_back = _jax_steps(model, x, y, steps)
                seconds[name].append((time.perf_counter() - start) / steps)
                write_back()
                continue
            for _ in range(steps):
                logs = model.train_on_batch(x, y, return_dict=True)
            float(logs["loss"])
            seconds[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in seconds.items()}


def bench_training(label, config, batch_sizes, steps, repeats, jit, context):
    """Training records of minicap and its stock build at each batch size."""
    records = []
    minicap = _compile(CaptionModel(config), config, jit)
    stock = _compile(build_stock_model(config), config, jit)
    if minicap.count_params() != stock.count_params():
        raise RuntimeError(f"stock build has {stock.count_params()} parameters, minicap {minicap.count_params()}")
    flops = training_flops(config)
    for batch_size in batch_sizes:
        x, y = random_batch(config, batch_size)
        seconds = time_training({"minicap": minicap, "stock": stock}, x, y, steps, repeats)
        ratio = seconds["stock"] / seconds["minicap"]  # throughput ratio minicap / stock
        for name, model in (("minicap", minicap), ("stock", stock)):
            images_per_second = batch_size / seconds[name]
            records.append({
                **context, "figure": "training", "config": label, "model": name, "batch_size": batch_size,
                "jit_compile": bool(model.jit_compile), "steps": steps, "repeats": repeats,
                "step_loop": "device-resident state" if _fast_loop_available(model) else "train_on_batch",
                "seconds_per_step": seconds[name], "images_per_second": images_per_second,
                "parameters": model.count_params(), "training_flops_per_image": flops,
                "mfu": flops * images_per_second / context["peak_flops"],
                "minicap_over_stock": ratio,
            })
    return records


