"""``minicap bench``: how fast minicap trains and decodes, on this machine, in one command.

Every figure comes from timings taken here, written to one JSON report and printed as a table:

1. **The quick profile's training step** with XLA on and off, on TensorFlow and JAX (each backend
   in a process of its own), and the **input pipeline's share** of that step
   (:mod:`minicap.bench_train`); ``training.JIT_BY_BACKEND`` follows these numbers.
2. **The feature cache**: the photos profile's frozen ViT-B/32 run at every step against its
   features computed once (:mod:`minicap.bench_train`).
3. **minicap against stock Keras**: images per second and MFU of a training step, of the quick
   profile's model and of ViT-B/32 (:mod:`minicap.bench_stock`).
4. **Decoding**: captions per second, cached and naive greedy, beam search (:mod:`minicap.bench_stock`).
5. **Time to 95% faithfulness**: the quick profile trained by ``trainer.train`` until 95% of its
   greedy captions of 300 validation scenes are faithful (:mod:`minicap.bench_train`).

``--quick`` (the CI run) keeps every part small and leaves the ViT-B/32 ones out on a CPU. The peak
FLOP/s behind MFU comes from ``--peak-tflops``, else from ``PEAK_TFLOPS`` by GPU name, else (a CPU)
from a float32 matmul measured on this machine, and the JSON says which.
"""
import datetime
import math
import os
import platform
import time

import keras
import numpy as np
from keras import ops

from minicap.bench_stock import (VIT_B32_BATCH_SIZES, bench_decoding, bench_pipeline, bench_training, quick_config,
                                 vit_b32_config)
from minicap.training import resolve_jit_compile

# Dense bfloat16 peak of common GPUs, in TFLOP/s (float16 for the T4, which has no fast bfloat16).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "T4": 65.0}

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

    Returns:
        the report: what ran where (``backend``, ``backends``, ``device``, ``dtype_policy``, ``jit``, ...),
        ``training_step_ms`` (:func:`training_step_summary`: the step per backend and XLA setting measured),
        ``records`` (one dict per figure, each naming its ``backend`` and, for training, its ``jit_compile``)
        and ``skipped`` (the figures left out, and why).
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
            sizes = dict(batch_size=2, steps=1, image_steps=1, repeats=1) if quick else dict(steps=10, image_steps=1,
                                                                                              repeats=3)
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
        "training_step_ms": training_step_summary(records), "records": records, "skipped": skipped,
    }


def _rows(records, figure):
    return [record for record in records if record["figure"] == figure]


def training_step_summary(records):
    """The quick profile's median training step in milliseconds, for each backend and XLA setting that
    ``records`` measured: ``{"tensorflow": {"xla": 50.6, "no_xla": 66.1}, "jax": {"xla": 88.0}}``."""
    summary = {}
    for record in _rows(records, "training_step"):
        setting = "xla" if record["jit_compile"] else "no_xla"
        summary.setdefault(record["backend"], {})[setting] = 1000 * record["seconds_per_step"]
    return summary


def format_table(report):
    """The report as plain text: one section per question."""
    records = report["records"]
    lines = [f"{report['backend']} on {report['device']['name']} ({report['device']['kind']}), "
             f"{report['dtype_policy']}, peak {report['peak_flops'] / 1e12:.2f} TFLOP/s ({report['peak_source']}); "
             f"load average {', '.join(f'{x:.1f}' for x in report['load_average'] or [])}"]

    steps = _rows(records, "training_step")
    if steps:
        lines += ["", f"Quick profile's training step (model.fit over CaptionBatches, batch "
                      f"{steps[0]['batch_size']}, {steps[0]['dtype_policy']}; median and best of "
                      f"{steps[0]['repeats']} x {steps[0]['steps']} steps, the settings in alternation; "
                      f"* = jit_compile=\"auto\")",
                  f"{'backend':<12}{'xla':>5}{'':>2}{'ms/step':>10}{'best':>8}{'images/s':>10}{'vs default':>12}"]
        for record in steps:
            default = next((r for r in steps if r["backend"] == record["backend"] and r["default"]), record)
            lines.append(f"{record['backend']:<12}{'on' if record['jit_compile'] else 'off':>5}"
                         f"{'*' if record['default'] else '':>2}{1000 * record['seconds_per_step']:>10.1f}"
                         f"{1000 * record['seconds_per_step_best']:>8.1f}{record['images_per_second']:>10.0f}"
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
                  f"(median of {record['repeats']} x {record['steps']} steps)",
                  f"  step on images (ViT runs) {record['seconds_per_step_images']:8.3f} s  "
                  f"(median of {record['repeats']} x {record['image_steps']})   ratio "
                  f"{record['images_over_cached']:.1f}x "
                  f"(matmul FLOPs: {record['flops_images_over_cached']:.1f}x = ViT forward "
                  f"{record['backbone_flops_per_image'] / 1e9:.2f} + decoder training "
                  f"{record['decoder_training_flops_per_image'] / 1e9:.2f} GFLOPs per image over the latter)",
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
