"""Data-parallel training: a copy of the model on every device, each batch split between them (chapter 5); and
which 16-bit type the device computes fast, for mixed precision (:func:`mixed_precision_dtype`).

Every device holds the same weights and takes an equal slice of each batch; the slices' gradients are
summed and every copy applies the same update. N devices thus train the model one device would, on
the same global batch (the profile's ``batch_size``), with each device computing 1/N of every step.
Keras does the work: a ``keras.distribution.DataParallel`` distribution on JAX, a
``tf.distribute.MirroredStrategy`` on TensorFlow. :func:`data_parallel` picks the devices and returns
a :class:`Placement`, whose ``scope()`` is the ``with`` block in which the model is created,
compiled and trained::

    placement = data_parallel(devices=0, batch_size=64)   # every local GPU/TPU, else one device
    with placement.scope():
        model = CaptionModel(config)
        compile_model(model)
        model.fit(placement.batches(train_batches), validation_data=placement.batches(val_batches))

What one step computes: on JAX the step is one program over the whole batch, which XLA splits across
the devices, so the loss is the global batch's mean over its words, as on one device. On TensorFlow
each device computes the mean over its own slice's words and Keras averages the slices' gradients,
which equals the global mean when the slices hold as many words and is close otherwise; Keras also
clips (``clipnorm``) each device's share of the gradient before the sum, not the sum.

Only the devices of this machine are used; several machines (a TPU pod, a GPU cluster) need
``keras.distribution.initialize`` and a launcher: see https://keras.io/guides/distribution/.
"""
import contextlib

import keras
import numpy as np


def accelerators():
    """This machine's GPUs (and TPUs on JAX) as Keras names, ``["gpu:0", "gpu:1"]``; CPUs are not
    accelerators. (TensorFlow's MirroredStrategy runs on GPUs only; TPUs need JAX here.)"""
    backend = keras.backend.backend()
    if backend not in ("jax", "tensorflow"):
        return []
    names = [name for name in keras.distribution.list_devices() if not name.startswith("cpu")]
    return [name for name in names if backend == "jax" or name.startswith("gpu")]


def data_parallel(devices=0, batch_size=None):
    """The devices to train on, as a :class:`Placement`.

    Args:
        devices: how many: 0 for every local accelerator when there are several, else one device
            (today's single-GPU or CPU training); N for the first N accelerators, or, on a machine
            without them, N CPU devices where the backend has that many (JAX with
            ``XLA_FLAGS=--xla_force_host_platform_device_count=N``, TensorFlow with N logical CPUs).
        batch_size: the global batch, split evenly across the devices (None: not checked).

    Raises:
        ValueError: ``devices`` is not a count, there are fewer devices than asked for, the backend
            cannot train data-parallel, or ``batch_size`` is not divisible by the number of devices.
    """
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 0:
        raise ValueError(f"devices must be 0 (every local accelerator, else one device) or a number of "
                         f"devices, got {devices!r}")
    found = accelerators()
    count = devices or max(len(found), 1)
    backend = keras.backend.backend()
    if backend not in ("jax", "tensorflow"):
        if count > 1:
            raise ValueError(f"devices={count}: data-parallel training needs the JAX or TensorFlow backend, "
                             f"not {backend}")
        return Placement([f"the {backend} backend's device"])
    names = found or keras.distribution.list_devices("cpu")
    if batch_size is not None and batch_size % count:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {count} devices it is split across; "
                         f"choose a batch_size that is a multiple of {count}, or another number of devices")
    if count > len(names):
        plural = "s" if len(names) > 1 else ""
        kind = f"{len(found)} accelerator{plural} ({', '.join(found)})" if found else \
            f"no GPU or TPU and {len(names)} CPU device{plural}"
        raise ValueError(f"devices={count} but this machine has {kind}; ask for at most {len(names)}")
    return Placement(names[:count])


class Placement:
    """Where a model trains: one device, or several in data parallel.

    Args:
        devices: Keras device names, e.g. ``["gpu:0", "gpu:1"]``.
    """

    def __init__(self, devices):
        self.devices = list(devices)
        self._engine = None  # made once: the model, its optimizer and fit must share it
        if len(self.devices) > 1 and keras.backend.backend() == "jax":
            self._engine = keras.distribution.DataParallel(devices=self.devices)
        elif len(self.devices) > 1:
            import tensorflow as tf

            self._engine = tf.distribute.MirroredStrategy([f"/{name}" for name in self.devices])

    def __len__(self):
        return len(self.devices)

    def __str__(self):
        if len(self) == 1:
            return f"1 device ({self.devices[0]})"
        return f"{len(self)} devices (data parallel): {', '.join(self.devices)}"

    def scope(self):
        """The ``with`` block for creating, compiling, restoring and training the model (and for
        :func:`predictor`); nothing on one device."""
        if self._engine is None:
            return contextlib.nullcontext()
        return self._engine.scope()

    def batches(self, dataset, pad_id=0):
        """``dataset`` (a ``PyDataset`` of ``(inputs, targets)``) with every batch a multiple of the
        number of devices, which JAX needs to split it: see :class:`EvenBatches`. Unchanged on one device."""
        return dataset if len(self) == 1 else EvenBatches(dataset, len(self), pad_id)


def replicas():
    """How many devices the current ``Placement.scope()`` splits a batch across (1 outside one)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.distribute.get_strategy().num_replicas_in_sync
    distribution = keras.distribution.distribution()
    if distribution is None:
        return 1
    if hasattr(distribution, "num_model_replicas"):  # Keras 3.14 and later
        return distribution.num_model_replicas
    mesh = distribution.device_mesh  # Keras 3.13 (Colab's): the size of the mesh's batch axis
    return mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)]


def predictor(model):
    """``model.predict_on_batch``, with each batch split across the devices of the current scope.

    (``predict_on_batch`` itself would run the whole batch on every device.) A batch whose size is not a
    multiple of the devices is padded with copies of its last row, whose outputs are dropped.
    """
    count = replicas()
    if count == 1:
        return model.predict_on_batch

    def predict(batch):
        rows = len(batch)
        padded = _pad_rows(np.asarray(batch), count, mode="edge")
        return model.predict(padded, batch_size=len(padded), verbose=0)[:rows]

    return predict


def _pad_rows(array, multiple, **pad):
    """``array`` with rows appended (``np.pad`` options ``pad``) up to a multiple of ``multiple`` rows."""
    missing = -len(array) % multiple
    return np.pad(array, [(0, missing)] + [(0, 0)] * (array.ndim - 1), **pad) if missing else array


class EvenBatches(keras.utils.PyDataset):
    """The batches of ``dataset``, a short one padded to a multiple of ``multiple`` rows.

    The added rows copy the batch's last inputs and have only padding targets (``pad_id``), which
    the masked loss and accuracy ignore: the step's loss and gradients are those of the real rows.
    (Keras' running mean of the epoch's loss weighs each batch by its rows, padding included, so the
    logged mean moves a little: one batch per epoch, and only if it is short.)
    """

    def __init__(self, dataset, multiple, pad_id=0):
        super().__init__()
        self.dataset, self.multiple, self.pad_id = dataset, multiple, pad_id

    def __len__(self):
        return len(self.dataset)

    def on_epoch_end(self):
        self.dataset.on_epoch_end()

    def __getitem__(self, index):
        inputs, targets = self.dataset[index]
        inputs = tuple(_pad_rows(np.asarray(x), self.multiple, mode="edge") for x in inputs)
        targets = _pad_rows(np.asarray(targets), self.multiple, mode="constant", constant_values=self.pad_id)
        return inputs, targets


def mixed_precision_dtype():
    """"bfloat16" unless the GPU is older than Ampere (compute capability < 8, e.g. Colab's T4),
    which has fast float16 but no fast bfloat16. CPUs and TPUs get bfloat16."""
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            capability = getattr(jax.devices()[0], "compute_capability", None)
            return "float16" if capability and float(capability) < 8 else "bfloat16"
        if backend == "tensorflow":
            import tensorflow as tf

            for gpu in tf.config.list_physical_devices("GPU"):
                if tf.config.experimental.get_device_details(gpu).get("compute_capability", (8, 0)) < (8, 0):
                    return "float16"
    except (RuntimeError, ValueError):  # no usable accelerator: CPU
        pass
    return "bfloat16"
