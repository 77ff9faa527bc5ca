"""A frozen backbone's features, computed once per image and kept on disk (chapter 5).

When the pretrained ViT is frozen, its patch tokens for an image never change, so they are
computed once and training runs only the projection and the decoder. For COCO's 123,287 images a
ViT-B/32 at 224 px gives ``(123287, 49, 768)`` float16, about 9 GB: more than a Colab machine's
memory. :func:`cached_features` therefore writes them into a memory-mapped ``.npy`` file chunk by
chunk and returns it memory-mapped, so only the rows a batch reads are ever in memory.

A cache lives in ``cache_dir/<key>/``, where ``key`` hashes the image list (each file's path relative to
the folder of them all, and its size), the image size and a description of the backbone and its weights
(:func:`fingerprint_variables`): another image list, size, backbone or set of weights never reads a stale
cache, and the same photos unpacked into another folder find theirs. Inside::

    features.npy    float16 (num_images, *feature_shape), created whole at the start
    progress.json   {"done": images written, "complete": ..., "describe": ..., ...}

``progress.json`` is replaced atomically, and only after the rows it counts are flushed to disk,
so a process killed at any instant loses at most the chunk it was writing, and the next call
resumes from the last finished chunk.
"""
import concurrent.futures
import hashlib
import json
import os
import warnings

import keras
import numpy as np
from tqdm.auto import tqdm

from minicap.checkpoint import write_json_atomic
from minicap.data.images import size_pair, load_image

__all__ = ["cached_features", "fingerprint_variables", "list_feature_caches", "cache_key"]

FEATURES_FILE = "features.npy"
PROGRESS_FILE = "progress.json"
KEY_LENGTH = 16  # hex digits of the SHA-256 that name a cache folder (64 bits)
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


def fingerprint_variables(variables):
    """The SHA-256 (hex) of some Keras variables' values, to tell one set of weights from another.

    Each variable contributes its dtype, its shape and its bytes, in order; names are left out
    (Keras numbers them per session, ``dense_3``), so the same weights give the same fingerprint in
    every process. Hashing ViT-B/32's 88 M float32 parameters (350 MB) takes a few seconds.

    Args:
        variables: a list of Keras variables (or arrays), e.g. ``backbone.weights``; a layer or
            model stands for its ``weights``.

    Returns:
        a 64-digit hex string.
    """
    if isinstance(variables, keras.layers.Layer):
        variables = variables.weights
    digest = hashlib.sha256()
    for variable in variables:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        digest.update(f"{value.dtype.str}{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def cache_key(paths, image_size, describe):
    """The SHA-256 (hex) that names the cache of these images, this size and this backbone.

    An image counts by its path relative to the folder that holds them all, and by its size in bytes: the same
    photos unpacked into another folder (a new Colab runtime's disk, while the cache is kept on Google Drive) find
    their cache, and another list, order or file does not."""
    try:
        text = json.dumps({"images": _image_list(paths), "image_size": list(image_size), "describe": describe},
                          sort_keys=True)
    except (TypeError, ValueError) as error:
        raise ValueError(f"describe must be a JSON-serialisable dict, got {describe!r} ({error})") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _image_list(paths):
    """``[[relative path, bytes], ...]`` of ``paths`` (bytes None for a missing file, which reading reports)."""
    absolute = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    return [[os.path.relpath(p, root).replace(os.sep, "/"), os.path.getsize(p) if os.path.isfile(p) else None]
            for p in absolute]


def _load_batch(paths, start, stop, image_size):
    """Images ``paths[start:stop]`` as float32 ``(B, H, W, 3)`` in [0, 1]."""
    batch = np.empty((stop - start, *image_size, 3), np.float32)
    for index in range(start, stop):
        try:
            batch[index - start] = load_image(paths[index], image_size)
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"paths[{index}]: {error}") from None
    return batch / np.float32(255.0)


def _read_progress(folder, key, num_images):
    """The progress record and the open ``features.npy`` of a usable cache, else ``(None, None)``."""
    try:
        with open(os.path.join(folder, PROGRESS_FILE), encoding="utf-8") as file:
            progress = json.load(file)
    except FileNotFoundError:
        return None, None
    except (OSError, json.JSONDecodeError):
        progress = {}
    shape = (num_images, *progress.get("feature_shape", ()))
    try:
        mode = "r" if progress.get("complete") else "r+"
        features = np.lib.format.open_memmap(os.path.join(folder, FEATURES_FILE), mode=mode)
    except (OSError, ValueError):
        features = None
    if progress.get("key") != key or features is None or features.shape != shape or features.dtype != np.float16:
        warnings.warn(f"feature cache {folder!r} does not match its progress record; computing it afresh", stacklevel=3)
        return None, None
    return progress, features


def cached_features(extract, paths, image_size, cache_dir, describe, batch_size=32, progress=True, chunk_images=None):
    """Compute ``extract`` once per image and keep the features on disk as float16.

    Args:
        extract: a function (or frozen Keras model) mapping a float32 batch ``(B, H, W, 3)`` in
            [0, 1] to features ``(B, *feature_shape)``, numpy or a backend tensor, e.g. a ViT-B/32
            backbone's patch tokens ``(B, 49, 768)``.
        paths: the image files, read with :func:`~minicap.data.images.load_image`.
        image_size: an int or ``(height, width)`` the images are resized to.
        cache_dir: the folder of caches; this one is ``cache_dir/<key>``.
        describe: a JSON-serialisable dict saying what ``extract`` is, e.g. ``{"backbone":
            "vit-b32", "weights": fingerprint_variables(backbone.weights)}``. It is part of the
            key, so describe everything that changes the features.
        batch_size: images per call of ``extract``.
        progress: show a progress bar.
        chunk_images: images written between two progress records (rounded up to a multiple of
            ``batch_size``; default: 32 batches). A killed run loses at most one chunk.

    Returns:
        the features, a read-only ``np.memmap`` float16 ``(len(paths), *feature_shape)``. A
        complete cache is returned at once, without calling ``extract``; an incomplete one is
        resumed from its last finished chunk (batches start at the same multiples of
        ``batch_size`` as in a run never interrupted, so the values are the same). One process
        at a time should write a given cache.

    Raises:
        ValueError: an image cannot be read (the message names its index and file), ``extract``
            returns another number of rows than images or a shape unlike its first batch's, or
            features are not finite. Non-finite features raise rather than warn: float16 ends at
            65504, and a cached ``inf`` would turn every loss it reaches into NaN, hours later and
            far from the cause; ViT tokens after the final layer norm are far below that, so an
            overflow means ``extract`` is not what was meant (raw pixels in [0, 255]?). That
            chunk is not recorded; a changed ``extract`` needs a changed ``describe``, or the
            chunks recorded before are kept.
    """
    paths = [os.fspath(p) for p in paths]
    size = size_pair(image_size)
    if size is None:
        raise ValueError("image_size must be a positive int or a (height, width) pair, got None")
    if not paths:
        raise ValueError("paths is empty: there are no images to compute features for")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if chunk_images is None:
        chunk_images = 32 * batch_size
    if not isinstance(chunk_images, (int, np.integer)) or chunk_images < 1:
        raise ValueError(f"chunk_images must be an int >= 1 or None, got {chunk_images!r}")
    # Records fall on batch ends, so a resumed run calls `extract` on the same batches.
    chunk_images = -(-int(chunk_images) // batch_size) * batch_size
    if not isinstance(describe, dict):
        raise ValueError(f"describe must be a JSON-serialisable dict, got {describe!r}")
    key = cache_key(paths, size, describe)
    folder = os.path.join(os.fspath(cache_dir), key[:KEY_LENGTH])
    features_path = os.path.join(folder, FEATURES_FILE)
    record, features = _read_progress(folder, key, len(paths))
    if record is not None and record["complete"]:
        return features
    done = record["done"] if record is not None else 0
    record = record or {"key": key, "describe": describe, "image_size": list(size), "num_images": len(paths)}
    name = describe.get("backbone", "backbone")
    bar = tqdm(total=len(paths), initial=done, unit="image", desc=f"{name} features", disable=not progress)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        # The next batch is decoded in a thread while `extract` runs on this one.
        starts = range(done, len(paths), batch_size)
        pending = pool.submit(_load_batch, paths, done, min(done + batch_size, len(paths)), size)
        try:
            for start in starts:
                stop = min(start + batch_size, len(paths))
                batch = pending.result()
                if stop < len(paths):
                    pending = pool.submit(_load_batch, paths, stop, min(stop + batch_size, len(paths)), size)
                output = _check_output(extract(batch), start, stop, paths, features)
                if features is None:
                    # The whole file, final shape, at once (sparse on disk until written).
                    os.makedirs(folder, exist_ok=True)
                    features = np.lib.format.open_memmap(
                        features_path, mode="w+", dtype=np.float16, shape=(len(paths), *output.shape[1:])
                    )
                    record["feature_shape"] = list(output.shape[1:])
                features[start:stop] = output  # (B, *feature_shape)
                bar.update(stop - start)
                if stop - done >= chunk_images or stop == len(paths):
                    features.flush()  # the rows reach the disk before the record counts them
                    write_json_atomic(os.path.join(folder, PROGRESS_FILE),
                                      {**record, "done": stop, "complete": stop == len(paths)})
                    done = stop
        finally:
            bar.close()
            pending.cancel()
    del features  # close the writable map before reopening read-only
    return np.lib.format.open_memmap(features_path, mode="r")


def _check_output(output, start, stop, paths, features):
    """``extract``'s output for ``paths[start:stop]`` as float16, after checking it."""
    output = np.asarray(keras.ops.convert_to_numpy(output))
    where = f"paths[{start}:{stop}] ({paths[start]!r} ...)"
    if output.ndim < 1 or output.shape[0] != stop - start:
        raise ValueError(f"extract returned shape {output.shape} for a batch of {stop - start} images {where}; "
                         f"it must return one row per image, (batch, *feature_shape)")
    if features is not None and output.shape[1:] != features.shape[1:]:
        raise ValueError(f"extract returned features of shape {output.shape[1:]} for {where}, "
                         f"but {features.shape[1:]} before; every batch must give the same feature shape")
    if not np.all(np.isfinite(output)):
        raise ValueError(f"extract returned NaN or infinite features for {where}")
    with np.errstate(over="ignore"):
        half = output.astype(np.float16)
    if not np.all(np.isfinite(half)):
        largest = float(np.max(np.abs(output)))
        raise ValueError(f"extract returned features up to {largest:.4g} for {where}, beyond float16's "
                         f"{FLOAT16_MAX:.0f}; scale them down (are the images in [0, 1]?)")
    return half


def list_feature_caches(cache_dir):
    """What ``cache_dir`` holds: one dict per cache, with its ``folder``, ``describe``,
    ``image_size``, ``num_images``, ``feature_shape``, ``done``, ``complete`` and ``bytes`` on disk
    (which can be less than the array's size while an incomplete cache is sparse)."""
    caches = []
    if not os.path.isdir(cache_dir):
        return caches
    for entry in sorted(os.scandir(cache_dir), key=lambda e: e.name):
        record_path = os.path.join(entry.path, PROGRESS_FILE)
        if not entry.is_dir() or not os.path.isfile(record_path):
            continue
        try:
            with open(record_path, encoding="utf-8") as file:
                record = json.load(file)
        except (OSError, json.JSONDecodeError):
            continue
        features_path = os.path.join(entry.path, FEATURES_FILE)
        used = os.stat(features_path).st_blocks * 512 if os.path.exists(features_path) else 0
        caches.append({"folder": entry.path, **{k: v for k, v in record.items() if k != "key"}, "bytes": used})
    return caches
