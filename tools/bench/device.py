"""What every benchmark of ``python -m tools.bench`` names: the device it ran on, its dtype policy, and the peak
FLOP/s that MFU divides by.

The peak comes from ``--peak-tflops``, else from ``PEAK_TFLOPS`` by GPU name, else (a CPU) from a
float32 matmul measured on this machine, and the report says which.
"""
import math
import os
import platform
import time

import keras
from keras import ops

from minicap.distribute import mixed_precision_dtype

# Dense bfloat16 peak of common GPUs, in TFLOP/s (float16 for the T4, which has no fast bfloat16).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "T4": 65.0}


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
    if precision not in ("auto", "float32", "mixed"):
        raise ValueError(f"precision must be 'auto', 'float32' or 'mixed', got {precision!r}")
    if precision == "auto":
        precision = "mixed" if device["kind"] == "gpu" else "float32"
    return "mixed_" + mixed_precision_dtype() if precision == "mixed" else "float32"


def context_of_this_process(precision="auto"):
    """Backend, device and dtype policy of this process, as every record names them (sets the policy)."""
    device = device_info()
    policy = resolve_policy(precision, device)
    keras.mixed_precision.set_global_policy(policy)
    return {"backend": keras.backend.backend(), "device": device["name"], "device_kind": device["kind"],
            "dtype_policy": policy}


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
