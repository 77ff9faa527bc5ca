"""The whole benchmark: how fast minicap trains and decodes, on this machine, in one command (in a clone of
the repository, from its root)::

    python -m tools.bench --quick

Every figure comes from timings taken here, written to one JSON report and printed as a table
(:mod:`tools.bench.report`):

1. **The quick profile's training step** with XLA on and off, on TensorFlow and JAX (each backend
   in a process of its own), and the **input pipeline's share** of that step
   (:mod:`tools.bench.training`); ``minicap.training.JIT_BY_BACKEND`` follows these numbers.
2. **The feature cache**: the photos profile's frozen ViT-B/32 run at every step against its
   features computed once (:mod:`tools.bench.training`).
3. **minicap against stock Keras**: images per second and MFU of a training step, of the quick
   profile's model and of ViT-B/32 (:mod:`tools.bench.stock`).
4. **Decoding**: captions per second, cached and naive greedy, beam search (:mod:`tools.bench.decoding`).
5. **Time to 95% faithfulness**: the quick profile trained by ``minicap.train.train`` until 95% of its
   greedy captions of 300 validation scenes are faithful (:mod:`tools.bench.faithfulness`).

``--quick`` (the CI run) keeps every part small and leaves the ViT-B/32 ones out on a CPU. The peak
FLOP/s behind MFU comes from ``--peak-tflops``, else from a table by GPU name, else (a CPU) from a
float32 matmul measured on this machine (:mod:`tools.bench.device`), and the JSON says which.
"""
import argparse
import datetime
import importlib.util
import json
import os
import sys

import keras
import numpy as np

from minicap.config import parse_overrides, profile
from minicap.data.shapes import make_shapes
from minicap.text import Tokenizer
from minicap.training import resolve_jit_compile
from tools.bench import faithfulness, training
from tools.bench.decoding import bench_decoding
from tools.bench.device import device_info, peak_flops, resolve_policy
from tools.bench.flops import quick_config, vit_b32_config
from tools.bench.pipeline import bench_pipeline
from tools.bench.report import format_table, training_step_summary
from tools.bench.stock import VIT_B32_BATCH_SIZES, bench_training

# ---------------------------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------------------------

def run(quick=False, precision="auto", jit="auto", peak_tflops=None, batch_sizes=None, vit_batch_sizes=None,
        steps=None, repeats=None, decode_batch=None, skip_vit=None, backends=None, overrides=None,
        skip_feature_cache=None, skip_faithfulness=False, faithfulness_every=None, faithfulness_budget=None,
        log=print):
    """Run every benchmark; return the report (a JSON-ready dict, see ``python -m tools.bench --help``).

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
        overrides: settings of the quick profile, as ``minicap.config.profile("quick", **overrides)`` takes them.
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
    unknown = [b for b in backends if b not in training.JIT_SETTINGS]
    if unknown or not backends:
        raise ValueError(f"backends must name some of {sorted(training.JIT_SETTINGS)}, got {backends!r}")
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
                records += training.in_subprocess(backend, "training_step",
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
            records += training.bench_training_step(settings, **step_options)
        records = [{**record, "peak_flops": peak} for record in records]  # the subprocesses' too
        if skip_feature_cache is None:
            skip_feature_cache = quick and device["kind"] == "cpu"
        if skip_feature_cache:
            skipped.append(_skipped("feature_cache", "photos",
                                    "two ViT-B/32 models (88M parameters) to build and compile"))
        else:
            sizes = dict(batch_size=2, steps=1, image_steps=1, repeats=1) if quick else dict(steps=10, image_steps=1,
                                                                                              repeats=3)
            log(f"feature cache: photos profile on cached features and on images, {sizes}")
            records.append({**training.bench_feature_cache(profile("photos"), jit=jit, precision=precision,
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
            skipped.append(_skipped("training", "vit-b32", "113M parameters take seconds per step on a CPU"))
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
            records.append({**faithfulness.time_to_faithfulness(log=log, **target), "device": device["name"],
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


# ---------------------------------------------------------------------------------------------
# The command line: python -m tools.bench
# ---------------------------------------------------------------------------------------------

def _skipped(figure, config, why):
    """The record of a figure left out, and why (what a full run on a GPU would measure)."""
    return {"figure": figure, "config": config,
            "reason": f"skipped: {why} (run python -m tools.bench without --quick, or on a GPU)"}


def _batch_sizes(text):
    """``(8, 16)`` of ``"8,16"``; None for None."""
    if text is None:
        return None
    try:
        values = tuple(int(item) for item in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ValueError(f"batch sizes must be positive integers separated by commas, got {text!r}")
    return values


def build_parser(prog="python -m tools.bench"):
    parser = argparse.ArgumentParser(
        prog=prog, description="Time training (XLA on/off per backend, input pipeline, feature cache, time to 95% "
                               "faithfulness, vs stock Keras, MFU) and decoding; write JSON.")
    parser.add_argument("--quick", action="store_true",
                        help="the CI run: few steps, small batches, this backend and the default XLA setting only, "
                             "two steps towards 95%% faithfulness; on a CPU no ViT-B/32 and no feature-cache "
                             "comparison")
    parser.add_argument("--output", "-o", default="bench.json", help="JSON file of the results (default: bench.json)")
    parser.add_argument("--precision", choices=["auto", "float32", "mixed"], default="auto",
                        help="auto: mixed bfloat16 on a GPU (float16 before Ampere), float32 on a CPU")
    parser.add_argument("--jit", choices=["auto", "on", "off"], default="auto",
                        help="XLA for the stock-Keras comparison and the feature cache (auto: on for TensorFlow and "
                             "JAX, off for PyTorch); the quick profile's step is timed with XLA on and off")
    parser.add_argument("--backends", metavar="NAME,NAME",
                        help="backends of the quick profile's step timings, others than KERAS_BACKEND in a "
                             "subprocess each (default: tensorflow,jax; --quick: the current one)")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE",
                        help="override a setting of the quick profile, as minicap train --set (repeatable)")
    parser.add_argument("--skip-feature-cache", action="store_true",
                        help="leave out the photos profile on cached features vs images (about two minutes on a "
                             "CPU; left out by --quick on a CPU)")
    parser.add_argument("--skip-faithfulness", action="store_true",
                        help="leave out the time to 95%% faithfulness (trains the quick profile: minutes)")
    parser.add_argument("--faithfulness-every", type=int, metavar="STEPS",
                        help="steps between faithfulness evaluations (default: 250; --quick: 1)")
    parser.add_argument("--faithfulness-budget", type=float, metavar="SECONDS",
                        help="most training seconds spent reaching 95%% faithfulness (default: 900)")
    parser.add_argument("--peak-tflops", type=float, metavar="TFLOPS",
                        help="the device's peak for MFU (default: table of GPUs, or a measured CPU matmul)")
    parser.add_argument("--batch-sizes", metavar="N,N", help="quick-profile training batch sizes (default: 64)")
    parser.add_argument("--vit-batch-sizes", metavar="N,N",
                        help="ViT-B/32 training batch sizes (default: 64,128,256 on a GPU, 4 on a CPU)")
    parser.add_argument("--steps", type=int, help="timed steps per repeat (default: 10; --quick 3)")
    parser.add_argument("--repeats", type=int, help="alternating repeats; medians are reported (default: 3)")
    parser.add_argument("--decode-batch", type=int, help="captions per decoding run (default: 256; --quick 64)")
    parser.add_argument("--skip-vit", action="store_true", help="leave out the ViT-B/32 configuration")
    return parser


def main(argv=None, prog="python -m tools.bench"):
    """Run the benchmarks that ``argv`` asks for, print the table, write the JSON; 2 for a bad setting."""
    args = build_parser(prog).parse_args(argv)
    try:
        backends = [name.strip() for name in args.backends.split(",")] if args.backends else None
        report = run(quick=args.quick, precision=args.precision, jit=args.jit, peak_tflops=args.peak_tflops,
                     batch_sizes=_batch_sizes(args.batch_sizes), vit_batch_sizes=_batch_sizes(args.vit_batch_sizes),
                     steps=args.steps, repeats=args.repeats, decode_batch=args.decode_batch,
                     skip_vit=True if args.skip_vit else None, backends=backends,
                     overrides=parse_overrides(args.set),
                     skip_feature_cache=True if args.skip_feature_cache else None,
                     skip_faithfulness=args.skip_faithfulness, faithfulness_every=args.faithfulness_every,
                     faithfulness_budget=args.faithfulness_budget, log=lambda line: print(line, file=sys.stderr))
        print(format_table(report))
        with open(args.output, "w", encoding="utf-8") as file:
            json.dump(report, file, indent=1)
            file.write("\n")
    except (ValueError, FileNotFoundError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    print(f"results written to {args.output}", file=sys.stderr)
    return 0

