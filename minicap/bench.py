"""Benchmarks: training throughput and MFU against a stock-Keras build, decoding speed (``minicap bench``).

Three questions, each answered by timings taken in one process:

1. **Training**: how many images per second does a training step of ``CaptionModel`` process, and
   what fraction of the device's peak is that (model FLOPs utilisation, MFU)? The same
   architecture built from stock Keras layers (``build_stock_model``) is timed alongside, with the
   same loss, optimizer, dtype policy and XLA setting, so the ratio minicap / stock says whether
   minicap's own layers cost anything.
2. **Decoding**: captions per second of cached greedy decoding, naive greedy decoding (the full
   model re-run at every step) and cached beam search.
3. **Input pipeline**: images per second that ``CaptionBatches`` delivers, which must exceed what a
   training step consumes.

MFU = analytic training FLOPs per image (``training_flops``) × images/s ÷ peak FLOP/s. The peak
comes from ``--peak-tflops``, else from ``PEAK_TFLOPS`` by GPU name, else (a CPU) from a float32
matmul measured on this machine, and the JSON says which.
"""
import datetime
import math
import os
import platform
import statistics
import time

import keras
import numpy as np
from keras import ops

from minicap.model import CaptionConfig, CaptionModel
from minicap.training import resolve_jit_compile

# Dense bfloat16 peak of common GPUs, in TFLOP/s (float16 for the T4, which has no fast bfloat16).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "T4": 65.0}
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
    from minicap import trainer

    settings = settings or trainer.profile("quick")
    config = trainer.model_config(settings, vocab_size, pad_id=0)
    changes = {"max_length": max_length, "dropout": dropout, "patch_stem": "linear",
               "output_positions": False}
    return CaptionConfig.from_dict({**config.to_dict(), **{k: v for k, v in changes.items() if v is not None}})


# ---------------------------------------------------------------------------------------------
# Analytic FLOPs
# ---------------------------------------------------------------------------------------------

def forward_flops(config, length=None):
    """Matmul FLOPs (2·m·n·k each) of one image's forward pass through a scratch-encoder CaptionModel.

    Counted: the patch embedding; per encoder layer the Q, K, V, O projections, the attention scores
    and weighted sum, the MLP; the projection to the decoder width if any; per decoder layer the
    self-attention (as the encoder's, all ``length`` × ``length`` scores even though half are
    masked), the cross-attention (query and output projections, the K and V projections of the
    encoder's ``num_patches`` vectors, scores and weighted sum), the MLP; the vocabulary head.
    Not counted: layer norms, softmax, GELU, embeddings lookups, the optimizer (all O(params) or
    O(activations), not matmuls). ``length`` defaults to ``config.max_length``.
    """
    if config.backbone != "scratch":
        raise ValueError(f"forward_flops counts the scratch encoder only, got backbone {config.backbone!r}")
    tokens = config.max_length if length is None else length
    patches, patch_values = config.num_patches, config.patch_size ** 2 * 3
    width, enc_mlp = config.encoder_width, config.encoder_mlp_width
    dim, mlp = config.model_dim, config.mlp_dim

    def attention(queries, keys, width):  # projections of queries (Q, O) and keys (K, V), QKᵀ and AV
        return 2 * (2 * queries * width * width) + 2 * (2 * keys * width * width) + 2 * (2 * queries * keys * width)

    def feed_forward(positions, width, hidden):
        return 2 * (2 * positions * width * hidden)

    encoder_layer = attention(patches, patches, width) + feed_forward(patches, width, enc_mlp)
    flops = 2 * patches * patch_values * width + config.encoder_layers * encoder_layer
    if width != dim:
        flops += 2 * patches * width * dim
    decoder_layer = (attention(tokens, tokens, dim) + attention(tokens, patches, dim)
                     + feed_forward(tokens, dim, mlp))
    flops += config.decoder_layers * decoder_layer + 2 * tokens * dim * config.vocab_size
    return flops


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
    width, dim, patches = config.encoder_width, config.model_dim, config.num_patches
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
        x = residual(x, attention(h, h, width, config.encoder_num_heads, f"encoder_{i}_attention"))
        h = norm(f"encoder_{i}_feed_forward_norm")(x)
        x = residual(x, feed_forward(h, width, config.encoder_mlp_width, f"encoder_{i}_feed_forward"))
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
# Device, precision and peak
# ---------------------------------------------------------------------------------------------

def device_info():
    """``{"kind": "gpu" | "cpu", "name": ...}`` of the device the backend computes on."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        kind = "gpu" if device.platform in ("gpu", "cuda", "rocm") else device.platform
        return {"kind": kind, "name": getattr(device, "device_kind", str(device))}
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return {"kind": "gpu", "name": tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")}
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return {"kind": "gpu", "name": torch.cuda.get_device_name(0)}
    return {"kind": "cpu", "name": platform.processor() or platform.machine() or "CPU",
            "cores": os.cpu_count()}


def resolve_policy(precision, device):
    """The dtype policy for ``precision``: "float32", "mixed" (bfloat16, or float16 on pre-Ampere
    GPUs) or "auto" (mixed on a GPU, float32 on a CPU, where bfloat16 matmuls are rarely faster)."""
    from minicap.trainer import mixed_precision_dtype

    if precision not in ("auto", "float32", "mixed"):
        raise ValueError(f"precision must be 'auto', 'float32' or 'mixed', got {precision!r}")
    if precision == "auto":
        precision = "mixed" if device["kind"] == "gpu" else "float32"
    return "mixed_" + mixed_precision_dtype() if precision == "mixed" else "float32"


def measure_matmul_flops(size=2048, repeats=5, dtype="float32"):
    """The best FLOP/s of a ``size`` × ``size`` matmul on this device (the CPU fallback peak)."""
    a = keras.random.normal((size, size), dtype=dtype, seed=0)
    b = keras.random.normal((size, size), dtype=dtype, seed=1)
    ops.convert_to_numpy(ops.matmul(a, b)[0, 0])  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        ops.convert_to_numpy(ops.matmul(a, b)[0, 0])
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def peak_flops(device, peak_tflops=None, policy="float32"):
    """``(FLOP/s, source)``: ``peak_tflops`` if given, the table's entry for a known GPU, else measured."""
    if peak_tflops is not None:
        if peak_tflops <= 0:
            raise ValueError(f"peak_tflops must be positive, got {peak_tflops}")
        return peak_tflops * 1e12, "given (--peak-tflops)"
    if device["kind"] == "gpu":
        for name, tflops in PEAK_TFLOPS.items():
            if name in device["name"].upper():
                return tflops * 1e12, f"table: {name} dense 16-bit peak"
    dtype = policy.replace("mixed_", "")
    source = (f"measured: best {dtype} 2048x2048 matmul on this {device['kind']}, before and after the "
              f"timings (a lower bound of its peak)")
    return measure_matmul_flops(dtype=dtype), source


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


# ---------------------------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------------------------

def run(quick=False, precision="auto", jit="auto", peak_tflops=None, batch_sizes=None, vit_batch_sizes=None,
        steps=None, repeats=None, decode_batch=None, skip_vit=None, backends=None, overrides=None,
        skip_feature_cache=None, skip_faithfulness=False, faithfulness_every=None, faithfulness_budget=None,
        log=print):
    """Run every benchmark; return the report (a JSON-ready dict, see ``minicap bench --help``).

    Args:
        quick: the CI run: small batches, few steps, the quick profile's step with the default XLA
            setting only, a tiny time to 95% faithfulness (two steps, 16 scenes: it runs the code,
            it does not reach 95%); on a CPU, no ViT-B/32 and no feature-cache comparison.
        precision: "auto", "float32" or "mixed" (see ``resolve_policy``).
        jit: XLA for the training steps compared with stock Keras and for the feature-cache
            comparison: "auto" (``training.JIT_BY_BACKEND``), "on" or "off". The quick profile's
            step is timed with both settings.
        peak_tflops: the device's peak in TFLOP/s (default: table or measured).
        batch_sizes, vit_batch_sizes: training batch sizes of the quick and the ViT-B/32 configs.
        steps, repeats: timed steps per repeat, and repeats (medians are reported).
        decode_batch: images per decoding run (256 by default).
        skip_vit: leave out ViT-B/32 (default: only when ``quick`` on a CPU).
        backends: backends of the quick profile's step timings; others than the current one run in a
            subprocess each (default: the current one with ``quick``, else tensorflow and jax).
        overrides: settings of the quick profile, as ``trainer.profile("quick", **overrides)`` takes them.
        skip_feature_cache: leave out the photos profile on cached features vs images (default: only
            when ``quick`` on a CPU).
        skip_faithfulness: leave out the time to 95% faithfulness.
        faithfulness_every: steps between evaluations of the faithfulness (default 250; ``quick`` 1).
        faithfulness_budget: most training seconds spent reaching 95% (default 900).
        log: called with each progress line.
    """
    import importlib.util

    from minicap import bench_train
    from minicap.data.shapes import make_shapes
    from minicap.text import Tokenizer
    from minicap.trainer import profile

    for name, value in (("steps", steps), ("repeats", repeats), ("decode_batch", decode_batch),
                        ("faithfulness_every", faithfulness_every)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if faithfulness_budget is not None and not faithfulness_budget > 0:
        raise ValueError(f"faithfulness_budget must be a positive number of seconds, got {faithfulness_budget!r}")
    if jit not in ("auto", "on", "off"):
        raise ValueError(f"jit must be 'auto', 'on' or 'off', got {jit!r}")
    settings = profile("quick", **(overrides or {}))
    current = keras.backend.backend()
    if backends is None:
        backends = [current] if quick else [b for b in ("tensorflow", "jax") if importlib.util.find_spec(b)]
    unknown = [b for b in backends if b not in bench_train.JIT_SETTINGS]
    if unknown or not backends:
        raise ValueError(f"backends must name some of {sorted(bench_train.JIT_SETTINGS)}, got {backends!r}")
    steps = steps or (3 if quick else 10)
    repeats = repeats or (1 if quick else 3)
    step_options = dict(num_scenes=256 if quick else 1024, steps=steps, repeats=repeats, precision=precision,
                        jits=["auto"] if quick else None)  # quick: the default setting only
    records, skipped = [], []
    # Other backends first, each in its own process, before this one holds any device memory.
    for backend in backends:
        if backend != current:
            log(f"training step: quick profile on {backend} (subprocess)")
            try:
                records += bench_train.in_subprocess(backend, "training_step",
                                                     {"settings": settings.to_dict(), **step_options}, log)
            except RuntimeError as error:  # one backend's failure does not cost the other figures
                log(str(error))
                skipped.append({"figure": "training_step", "config": "quick",
                                "reason": f"{backend}: {str(error).splitlines()[-1][:200]}"})
    device = device_info()
    policy = resolve_policy(precision, device)
    previous_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        peak, peak_source = peak_flops(device, peak_tflops, policy)
        context = {"backend": current, "device": device["name"], "dtype_policy": policy, "peak_flops": peak}
        if current in backends:
            log(f"training step: quick profile on {current}; input pipeline")
            records += bench_train.bench_training_step(settings, **step_options)
        records = [{**record, "peak_flops": peak} for record in records]  # the subprocesses' too
        if skip_feature_cache is None:
            skip_feature_cache = quick and device["kind"] == "cpu"
        if skip_feature_cache:
            skipped.append({"figure": "feature_cache", "config": "photos",
                            "reason": "skipped: two ViT-B/32 models (88M parameters) to build and compile "
                                      "(run minicap bench without --quick, or on a GPU)"})
        else:
            sizes = dict(batch_size=2, steps=1, image_steps=1) if quick else dict(steps=10, image_steps=2)
            log(f"feature cache: photos profile on cached features and on images, {sizes}")
            records.append({**bench_train.bench_feature_cache(profile("photos"), jit=jit, precision=precision,
                                                              **sizes), "peak_flops": peak})
        shapes = make_shapes(256 if quick else 1024, image_size=settings.model.image_size,
                             max_objects=settings.max_objects)
        vocab_size = len(Tokenizer.fit([c for refs in shapes.captions for c in refs]))
        quick_model = quick_config(vocab_size, settings=settings)
        log("training: quick profile, minicap and stock")
        records += bench_training("quick", quick_model, batch_sizes or (settings.batch_size,), steps,
                                  max(repeats, 2 if quick else 3), jit, context)
        if skip_vit is None:
            skip_vit = quick and device["kind"] == "cpu"
        if skip_vit:
            skipped.append({"figure": "training", "config": "vit-b32",
                            "reason": "skipped: 113M parameters take seconds per step on a CPU "
                                      "(run minicap bench without --quick, or on a GPU)"})
        else:
            vit = vit_b32_config()
            vit_sizes = vit_batch_sizes or VIT_B32_BATCH_SIZES["gpu" if device["kind"] == "gpu" else "cpu"]
            vit_steps = steps if device["kind"] == "gpu" else min(steps, 2)
            log(f"training: ViT-B/32 at batch sizes {list(vit_sizes)}, minicap and stock")
            rng = np.random.default_rng(0)
            pixels = rng.integers(0, 256, (4 * max(vit_sizes), 224, 224, 3), dtype=np.uint8)
            captions = [shapes.captions[i % len(shapes.captions)] for i in range(len(pixels))]
            records.append(bench_pipeline("vit-b32", pixels, captions, vit.max_length, max(vit_sizes), context))
            records += bench_training("vit-b32", vit, vit_sizes, vit_steps, 2 if device["kind"] == "cpu" else repeats,
                                      jit, context)
        decode_batch = decode_batch or (64 if quick else 256)
        log(f"decoding: {decode_batch} captions of 20 tokens, greedy (cached, naive) and beam 5")
        records += bench_decoding(quick_config(vocab_size, max_length=20, settings=settings), decode_batch,
                                  max(repeats, 2 if quick else 3), 5, context)
        if peak_source.startswith("measured"):
            # Other processes may have slowed the first measurement: measure again, keep the best.
            peak = max(peak, peak_flops(device, None, policy)[0])
            for record in records:
                record["peak_flops"] = peak
                if record["figure"] == "training":
                    record["mfu"] = record["training_flops_per_image"] * record["images_per_second"] / peak
        if skip_faithfulness:
            skipped.append({"figure": "time_to_faithfulness", "config": "quick",
                            "reason": "skipped (--skip-faithfulness)"})
        else:
            if quick:  # the code path only: two steps of a small run, 16 scenes
                target = dict(settings=settings.replace(num_train=64, epochs=1), every=faithfulness_every or 1,
                              num_scenes=16, max_steps=2)
            else:
                target = dict(settings=settings, every=faithfulness_every or 250, num_scenes=300,
                              max_seconds=faithfulness_budget or 900)
            log(f"time to 95% faithfulness: quick profile, greedy captions of {target['num_scenes']} validation "
                f"scenes every {target['every']} steps (minutes)")
            records.append({**bench_train.time_to_faithfulness(log=log, **target), "device": device["name"],
                            "peak_flops": peak})
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": quick, "backend": current, "backends": list(backends), "keras": keras.__version__,
        "device": device, "dtype_policy": policy, "jit": jit,
        "jit_compile": {"auto": resolve_jit_compile("auto"), "on": True, "off": False}[jit],
        "overrides": dict(overrides or {}), "peak_flops": peak, "peak_source": peak_source,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "records": records, "skipped": skipped,
    }


def _rows(records, figure):
    return [record for record in records if record["figure"] == figure]


def format_table(report):
    """The report as plain text: one section per question."""
    records = report["records"]
    lines = [f"{report['backend']} on {report['device']['name']} ({report['device']['kind']}), "
             f"{report['dtype_policy']}, peak {report['peak_flops'] / 1e12:.2f} TFLOP/s ({report['peak_source']}); "
             f"load average {', '.join(f'{x:.1f}' for x in report['load_average'] or [])}"]

    steps = _rows(records, "training_step")
    if steps:
        lines += ["", f"Quick profile's training step (model.fit over CaptionBatches, batch "
                      f"{steps[0]['batch_size']}, {steps[0]['dtype_policy']}; * = jit_compile=\"auto\")",
                  f"{'backend':<12}{'xla':>5}{'':>2}{'ms/step':>10}{'images/s':>10}{'vs default':>12}"]
        for record in steps:
            default = next((r for r in steps if r["backend"] == record["backend"] and r["default"]), record)
            lines.append(f"{record['backend']:<12}{'on' if record['jit_compile'] else 'off':>5}"
                         f"{'*' if record['default'] else '':>2}{1000 * record['seconds_per_step']:>10.1f}"
                         f"{record['images_per_second']:>10.0f}"
                         f"{record['seconds_per_step'] / default['seconds_per_step']:>11.2f}x")

    pipelines = _rows(records, "input_pipeline")
    if pipelines:
        lines += ["", "Input pipeline (CaptionBatches[i]: pixels to float32, captions to tokens)",
                  f"{'config':<9}{'backend':<12}{'batch':>6}{'ms/batch':>10}{'images/s':>10}{'share of a step':>17}"]
        for record in pipelines:
            share = (f"{100 * record['share_of_step']:.1f}% of {1000 * record['seconds_per_step']:.0f} ms"
                     if "share_of_step" in record else "")
            lines.append(f"{record['config']:<9}{record['backend']:<12}{record['batch_size']:>6}"
                         f"{1000 * record['seconds_per_batch']:>10.2f}{record['images_per_second']:>10.0f}{share:>17}")

    for record in _rows(records, "feature_cache"):
        lines += ["", f"Feature cache: photos profile, {record['backbone']} frozen (random weights) at "
                      f"{record['image_size']} px = {record['num_patches']} patches x {record['feature_dim']}; decoder "
                      f"{record['decoder_layers']} x {record['model_dim']}, {record['num_heads']} heads, MLP "
                      f"{record['mlp_dim']}; batch {record['batch_size']}; {record['backend']}, XLA "
                      f"{'on' if record['jit_compile'] else 'off'}, {record['dtype_policy']}, {record['device']}",
                  f"  step on cached features  {record['seconds_per_step_cached']:9.3f} s  "
                  f"(median of {record['steps']})",
                  f"  step on images (ViT runs) {record['seconds_per_step_images']:8.3f} s  "
                  f"(median of {record['image_steps']})   ratio {record['images_over_cached']:.1f}x",
                  f"  features once: {1000 * record['feature_seconds_per_image']:.1f} ms per image",
                  f"  extrapolated to Flickr8k ({record['epoch_images']} images, {record['epoch_steps']} steps an "
                  f"epoch): epoch {record['epoch_seconds_cached']:.0f} s cached vs "
                  f"{record['epoch_seconds_images']:.0f} s on images; {record['epochs']} epochs: "
                  f"{record['feature_seconds']:.0f} s of features + {record['epochs']} x "
                  f"{record['epoch_seconds_cached']:.0f} s = {record['run_seconds_cached']:.0f} s vs "
                  f"{record['run_seconds_images']:.0f} s ({record['run_images_over_cached']:.1f}x)"]

    for record in _rows(records, "time_to_faithfulness"):
        target = f"{100 * record['target']:.0f}%"
        if record["reached"]:
            result = f"{target} reached after {record['seconds']:.0f} s of training (step {record['step']})"
        else:
            best = record["best"] or {"faithfulness": float("nan"), "seconds": float("nan"), "step": 0}
            result = (f"{target} not reached in {record['steps_trained']} steps; best "
                      f"{100 * best['faithfulness']:.1f}% after {best['seconds']:.0f} s (step {best['step']})")
        curve = ", ".join(f"{p['step']}: {100 * p['faithfulness']:.0f}% @ {p['seconds']:.0f}s" for p in record["curve"])
        lines += ["", f"Time to {target} faithfulness: quick profile ({record['summary']}; {record['backend']}, XLA "
                      f"{'on' if record['jit_compile'] else 'off'}), greedy captions of {record['val_scenes']} "
                      f"validation scenes every {record['every']} steps",
                  f"  {result}; data, model and first step {record['first_step_seconds'] or 0:.0f} s, "
                  f"evaluations {record['evaluation_seconds']:.0f} s (not counted)",
                  f"  curve (step: faithfulness @ training seconds): {curve}"]

    header = (f"{'figure':<15}{'config':<9}{'what':<15}{'batch':>6}{'xla':>5}{'s/step':>9}{'per s':>10}"
              f"{'MFU':>8}{'ratio':>8}")
    lines += ["", "minicap against the same model from stock Keras layers (MFU), and decoding", header]
    for r in records:
        if r["figure"] == "training":
            what, rate, ratio = r["model"], r["images_per_second"], r["minicap_over_stock"]
            xla, sec, mfu = "on" if r["jit_compile"] else "off", r["seconds_per_step"], f"{100 * r['mfu']:.1f}%"
        elif r["figure"] == "decoding":
            what = r["method"] + (f"-{r['beam_width']}" if r["method"] == "beam" else "") + (
                " cached" if r["cached"] else " naive")
            rate, ratio, xla, sec, mfu = r["captions_per_second"], r["cached_over_naive"], "fn", r["seconds"], ""
        else:
            continue
        ratio = "" if ratio is None else f"{ratio:.2f}x"
        lines.append(f"{r['figure']:<15}{r['config']:<9}{what:<15}{r['batch_size']:>6}{xla:>5}{sec:>9.4f}"
                     f"{rate:>10.1f}{mfu:>8}{ratio:>8}")
    lines += [f"{s['figure']:<15}{s['config']:<9}{s['reason']}" for s in report["skipped"]]
    return "\n".join(lines)
