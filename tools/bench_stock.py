"""minicap against the same model from stock Keras layers: training throughput and MFU; decoding speed.

Three questions of ``minicap bench`` (:mod:`bench`), each answered by timings taken in one process:

1. **Training**: how many images per second does a training step of ``CaptionModel`` process, and
   what fraction of the device's peak is that (model FLOPs utilisation, MFU)? The same
   architecture built from stock Keras layers (``build_stock_model``) is timed alongside, with the
   same loss, optimizer, dtype policy and XLA setting, so the ratio minicap / stock says whether
   minicap's own layers cost anything.
2. **Decoding**: captions per second of cached greedy decoding, naive greedy decoding (the full
   model re-run at every step) and cached beam search.
3. **Input pipeline**: images per second that ``CaptionBatches`` delivers, which must exceed what a
   training step consumes.

MFU = analytic training FLOPs per image (``training_flops``) × images/s ÷ peak FLOP/s (the peak:
:func:`bench_device.peak_flops`).
"""
import math
import statistics
import time

import keras
import numpy as np
from keras import ops

from minicap.model import CaptionConfig, CaptionModel
from minicap.training import resolve_jit_compile

VIT_B32_BATCH_SIZES = {"gpu": (64, 128, 256), "cpu": (4,)}

def vit_b32_config(dropout=0.0):
    """The end-to-end "ViT-B/32" captioner: a 12-layer encoder of width 768 (12 heads, MLP 3072) over
    the 7 × 7 patches of a 224-pixel image, a 4-layer decoder of width 512 (8 heads, MLP 2048),
    24 tokens and 8,000 words."""
    return CaptionConfig(vocab_size=8000, max_length=24, image_size=224, patch_size=32, model_dim=512,
                         num_heads=8, encoder_layers=12, decoder_layers=4, mlp_dim=2048, dropout=dropout,
                         encoder_dim=768, encoder_heads=12, encoder_mlp_dim=3072)


def quick_config(vocab_size, max_length=None, dropout=None, settings=None):
    """The quick training profile's model (or that of ``settings``, a ``TrainConfig``) for a vocabulary
    of ``vocab_size`` words, with ViT's linear patch embedding: the benchmark compares Transformers with
    their stock-Keras builds, and a colour-shape stem (a prior for the shapes scenes) has no stock
    counterpart."""
    from minicap.config import model_config, profile

    settings = settings or profile("quick")
    config = model_config(settings, vocab_size, pad_id=0)
    changes = {"max_length": max_length, "dropout": dropout, "patch_stem": "linear",
               "output_positions": False}
    return CaptionConfig.from_dict({**config.to_dict(), **{k: v for k, v in changes.items() if v is not None}})


# ---------------------------------------------------------------------------------------------
# Analytic FLOPs
# ---------------------------------------------------------------------------------------------

def _attention_flops(queries, keys, width):
    """Q, O projections of the queries, K, V projections of the keys, QKᵀ and AV."""
    return 2 * (2 * queries * width * width) + 2 * (2 * keys * width * width) + 2 * (2 * queries * keys * width)


def _feed_forward_flops(positions, width, hidden):
    return 2 * (2 * positions * width * hidden)


def encoder_flops(config):
    """Matmul FLOPs (2·m·n·k each) of one image through a scratch encoder: the patch embedding, then per
    layer the Q, K, V, O projections, the attention scores and weighted sum, and the MLP."""
    patches, width = config.num_patches, config.encoder_dim or config.model_dim
    layer = _attention_flops(patches, patches, width) + _feed_forward_flops(patches, width, config.encoder_mlp_dim or config.mlp_dim)
    return 2 * patches * config.patch_size ** 2 * 3 * width + config.encoder_layers * layer


def decoder_flops(config, length=None):
    """Matmul FLOPs of one caption of ``length`` tokens (default ``config.max_length``) from the
    encoder's patch vectors on: the projection to the decoder width if any; per decoder layer the
    self-attention (all ``length`` × ``length`` scores even though half are masked), the
    cross-attention (the K and V projections of the ``num_patches`` vectors included), the MLP; the
    vocabulary head. What a model trained on cached backbone features computes."""
    tokens = config.max_length if length is None else length
    patches, width, dim = config.num_patches, config.feature_dim, config.model_dim
    flops = 2 * patches * width * dim if width != dim else 0
    layer = (_attention_flops(tokens, tokens, dim) + _attention_flops(tokens, patches, dim)
             + _feed_forward_flops(tokens, dim, config.mlp_dim))
    return flops + config.decoder_layers * layer + 2 * tokens * dim * config.vocab_size


def forward_flops(config, length=None):
    """Matmul FLOPs (2·m·n·k each) of one image's forward pass through a scratch-encoder CaptionModel:
    ``encoder_flops`` + ``decoder_flops``. Not counted: layer norms, softmax, GELU, embeddings
    lookups, the optimizer (all O(params) or O(activations), not matmuls)."""
    if config.backbone != "scratch":
        raise ValueError(f"forward_flops counts the scratch encoder only, got backbone {config.backbone!r}")
    return encoder_flops(config) + decoder_flops(config, length)


def training_flops(config, length=None):
    """FLOPs of one image's training step: forward + backward ≈ 3 × forward (the backward pass
    computes two matmuls, for the inputs' and the weights' gradients, per forward matmul)."""
    return 3 * forward_flops(config, length)


# ---------------------------------------------------------------------------------------------
# The stock-Keras build
# ---------------------------------------------------------------------------------------------

def build_stock_model(config):
    """``CaptionModel``'s architecture from stock Keras layers only, as a functional model.

    Same pre-norm layers, heads, MLPs, dropout, masks and parameter count: ``Conv2D`` with a
    patch-sized kernel and stride for the patch embedding (the same weights as a Dense layer over
    flattened patches), ``Embedding`` for the learned patch positions and the tokens,
    ``keras.layers.MultiHeadAttention``, ``Dense``, ``LayerNormalization``. Inputs and outputs
    are those of ``CaptionModel``: ``[images, tokens]`` -> float32 logits.
    """
    from minicap.encoder import NORM_EPSILON
    from minicap.positional import sinusoidal_encoding

    layers = keras.layers
    size, patch, tokens_length = config.image_size, config.patch_size, config.max_length
    width, dim, patches = config.encoder_dim or config.model_dim, config.model_dim, config.num_patches
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
    for i in range(config.encoder_layers):
        h = norm(f"encoder_{i}_attention_norm")(x)
        x = residual(x, attention(h, h, width, config.encoder_heads or config.num_heads, f"encoder_{i}_attention"))
        h = norm(f"encoder_{i}_feed_forward_norm")(x)
        x = residual(x, feed_forward(h, width, config.encoder_mlp_dim or config.mlp_dim, f"encoder_{i}_feed_forward"))
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


# ---------------------------------------------------------------------------------------------
# Timings
# ---------------------------------------------------------------------------------------------

def _compile(model, config, jit):
    from minicap.training import MaskedAccuracy, MaskedSparseCrossEntropy, make_optimizer

    model.compile(optimizer=make_optimizer(config.model_dim, warmup_steps=100),
                  loss=MaskedSparseCrossEntropy(config.pad_id), metrics=[MaskedAccuracy(config.pad_id)],
                  jit_compile=resolve_jit_compile(jit, model))
    return model


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


def bench_decoding(config, batch_size, repeats, beam_width, context):
    """Captions per second of cached greedy, naive greedy and cached beam search, ``config.max_length``
    tokens each (no caption ends early: the end token is an id the model never writes)."""
    from minicap.generate import Generator

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


def bench_pipeline(label, images, captions, max_length, batch_size, context):
    """Images per second that ``CaptionBatches`` delivers (one pass over ``images``, no model)."""
    from minicap.data.pipeline import CaptionBatches
    from minicap.text import Tokenizer

    tokenizer = Tokenizer.fit([c for refs in captions for c in refs])
    batches = CaptionBatches(images, captions, tokenizer, max_length, batch_size, references="random")
    start = time.perf_counter()
    count = sum(len(batches[index][1]) for index in range(len(batches)))
    seconds = time.perf_counter() - start
    return {**context, "figure": "input_pipeline", "config": label, "batch_size": batch_size,
            "images": count, "seconds": seconds, "seconds_per_batch": seconds / len(batches),
            "images_per_second": count / seconds}
