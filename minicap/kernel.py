"""The ``minicap-gpu`` Jupyter kernel that the training chapter runs on.

``minicap kernel install`` registers a kernel named ``minicap-gpu`` that starts this Python with
settings suited to a GPU, and harmless on a CPU (CI registers and uses it too):

- ``TF_FORCE_GPU_ALLOW_GROWTH=true``: TensorFlow takes GPU memory as it needs it, instead of all
  of it at start-up, so the chapter can share the GPU with another notebook.
- ``XLA_PYTHON_CLIENT_PREALLOCATE=false``: the same for JAX.
- ``TF_CPP_MIN_LOG_LEVEL=3``: TensorFlow's C++ start-up logs stay out of the rendered page.
- ``KERAS_BACKEND``: the backend of the shell that installed the kernel (TensorFlow by default),
  so the kernel runs the backend you chose.
"""
import json
import os
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "minicap-gpu"


def kernel_spec(python=None, backend=None):
    """The kernel.json content of the minicap-gpu kernel (a dict)."""
    return {
        "argv": [python or sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "minicap (GPU)",
        "language": "python",
        "env": {
            "TF_FORCE_GPU_ALLOW_GROWTH": "true",
            "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "KERAS_BACKEND": backend or os.environ.get("KERAS_BACKEND", "tensorflow"),
        },
        "metadata": {"debugger": False},
    }


def install(name=KERNEL_NAME, user=False, prefix=None):
    """Register the kernel with Jupyter; returns the directory it was installed to.

    Args:
        name: kernel name (notebooks refer to it in their metadata).
        user: install for the current user instead of the active environment.
        prefix: install under this prefix (default: ``sys.prefix``, the active environment).
    """
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as source:
        (Path(source) / "kernel.json").write_text(json.dumps(kernel_spec(), indent=1))
        return KernelSpecManager().install_kernel_spec(
            source, kernel_name=name, user=user, prefix=None if user else (prefix or sys.prefix)
        )
