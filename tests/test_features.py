"""Tests for the on-disk feature cache: values, reuse, keys, resuming after a kill, errors."""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from PIL import Image

from minicap.data.features import cached_features, fingerprint_variables, list_feature_caches
from minicap.data.images import load_images

SIZE = (12, 8)  # (height, width) of the test images; loaded at this size, so pixels are exact
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _images(folder, count=10):
    """``count`` PNG files whose top-left red value is ``20 * index`` (so a batch says which images it holds)."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for index in range(count):
        array = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
        array[0, 0, 0] = 20 * index
        paths.append(str(folder / f"{index}.png"))
        Image.fromarray(array).save(paths[-1])
    return paths


def patch_features(images):
    """A small frozen "backbone": 4 x 4 patches, each projected to 5 numbers, ``(B, N, 5)``."""
    batch, height, width = images.shape[0], images.shape[1], images.shape[2]
    rows, cols = height // 4, width // 4
    patches = keras.ops.reshape(images, (batch, rows, 4, cols, 4, 3))  # (B, rows, 4, cols, 4, 3)
    patches = keras.ops.transpose(patches, (0, 1, 3, 2, 4, 5))  # (B, rows, cols, 4, 4, 3)
    patches = keras.ops.reshape(patches, (batch, rows * cols, 48))  # (B, N, P*P*3)
    weights = np.linspace(-1.0, 1.0, 48 * 5, dtype=np.float32).reshape(48, 5)
    return keras.ops.matmul(patches, weights) * 10.0  # (B, N, 5), a backend tensor


class Recorder:
    """``patch_features`` that records which images (by index) it was called on."""

    def __init__(self, fail_at=None):
        self.seen, self.fail_at = [], fail_at

    def __call__(self, images):
        indices = np.rint(np.asarray(images)[:, 0, 0, 0] * 255 / 20).astype(int).tolist()
        if self.fail_at in indices:
            raise RuntimeError("interrupted")
        self.seen.extend(indices)
        return patch_features(images)


DESCRIBE = {"backbone": "patches-4", "weights": "linspace"}


def test_values_dtype_memmap_and_shape(tmp_path):
    paths = _images(tmp_path / "images")
    features = cached_features(Recorder(), paths, SIZE, tmp_path / "cache", DESCRIBE, batch_size=3, progress=False)
    assert isinstance(features, np.memmap) and not features.flags.writeable
    assert features.dtype == np.float16 and features.shape == (10, 6, 5)
    assert os.path.dirname(features.filename).startswith(str(tmp_path / "cache"))
    direct = keras.ops.convert_to_numpy(patch_features(load_images(paths, SIZE).astype(np.float32) / 255.0))
    assert np.abs(direct).max() > 10  # values beyond float16's fine steps, so the tolerance is a real bound
    np.testing.assert_allclose(np.asarray(features, np.float32), direct, rtol=1e-3, atol=1e-3)
    (cache,) = list_feature_caches(tmp_path / "cache")
    assert cache["complete"] and cache["done"] == 10 and cache["feature_shape"] == [6, 5]
    assert cache["describe"] == DESCRIBE and cache["image_size"] == list(SIZE)


def test_complete_cache_is_reused_without_extracting(tmp_path):
    paths = _images(tmp_path / "images", 4)
    first, second = Recorder(), Recorder()
    before = cached_features(first, paths, SIZE, tmp_path, DESCRIBE, batch_size=2, progress=False)
    again = cached_features(second, paths, SIZE, tmp_path, DESCRIBE, batch_size=2, progress=False)
    assert first.seen == [0, 1, 2, 3] and second.seen == []
    np.testing.assert_array_equal(again, before)
    # int and (height, width) spell the same size, so they share a cache.
    square = Recorder()
    cached_features(square, paths, 8, tmp_path, DESCRIBE, progress=False)
    cached_features(square, paths, (8, 8), tmp_path, DESCRIBE, progress=False)
    assert len(square.seen) == 4  # computed once (resizing blurs the index pixel, so count)


@pytest.mark.parametrize("change", ["paths", "image_size", "describe"])
def test_any_change_of_key_computes_anew(tmp_path, change):
    paths = _images(tmp_path / "images", 4)
    arguments = {"paths": paths, "image_size": SIZE, "describe": DESCRIBE}
    cached_features(Recorder(), **arguments, cache_dir=tmp_path / "cache", progress=False)
    changed = {
        "paths": paths[::-1],
        "image_size": (16, 8),
        "describe": {**DESCRIBE, "weights": "other"},
    }[change]
    recorder = Recorder()
    features = cached_features(recorder, **{**arguments, change: changed}, cache_dir=tmp_path / "cache", progress=False)
    assert len(recorder.seen) == 4
    assert len(list_feature_caches(tmp_path / "cache")) == 2
    if change == "paths":
        original = cached_features(Recorder(), **arguments, cache_dir=tmp_path / "cache", progress=False)
        np.testing.assert_array_equal(features[0], original[3])


def test_the_same_photos_unpacked_elsewhere_find_their_cache_and_other_files_do_not(tmp_path):
    # On Colab the cache is kept on Google Drive while each new runtime unpacks the photos onto its own disk.
    import shutil

    (tmp_path / "runtime-1").mkdir()
    paths = _images(tmp_path / "runtime-1" / "photos", 4)
    cached_features(Recorder(), paths, SIZE, tmp_path / "drive", DESCRIBE, progress=False)
    shutil.copytree(tmp_path / "runtime-1", tmp_path / "runtime-2")
    shutil.rmtree(tmp_path / "runtime-1")
    moved = [path.replace("runtime-1", "runtime-2") for path in paths]
    recorder = Recorder()
    cached_features(recorder, moved, SIZE, tmp_path / "drive", DESCRIBE, progress=False)
    assert recorder.seen == [] and len(list_feature_caches(tmp_path / "drive")) == 1
    # Another file under the same name (its size differs) is another image: computed anew.
    Image.fromarray(np.zeros((24, 16, 3), np.uint8)).save(moved[1])
    recorder = Recorder()
    cached_features(recorder, moved, SIZE, tmp_path / "drive", DESCRIBE, progress=False)
    assert len(recorder.seen) == 4 and len(list_feature_caches(tmp_path / "drive")) == 2


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {root!r})
from tests.test_features import DESCRIBE, Recorder
from minicap.data.features import cached_features

class KillAt(Recorder):
    def __call__(self, images):
        if {kill_at} in (images[:, 0, 0, 0] * 255 / 20).round().astype(int):
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: as if the machine stopped
        return super().__call__(images)

cached_features(KillAt(), {paths!r}, {size!r}, {cache!r}, DESCRIBE, batch_size=2, chunk_images=4, progress=False)
"""


def test_killed_run_resumes_from_its_last_chunk(tmp_path):
    paths = _images(tmp_path / "images")
    cache = str(tmp_path / "cache")
    # Chunks are images 0-3, 4-7, 8-9; the process dies on the batch of images 6-7, after 4-5 were written.
    script = KILL_SCRIPT.format(root=REPO, kill_at=6, paths=paths, size=SIZE, cache=cache)
    env = {**os.environ, "PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, timeout=300)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    (record,) = list_feature_caches(cache)
    assert record["done"] == 4 and not record["complete"]

    resumed = Recorder()
    features = cached_features(resumed, paths, SIZE, cache, DESCRIBE, batch_size=2, chunk_images=4, progress=False)
    assert resumed.seen == [4, 5, 6, 7, 8, 9]  # finished chunk 0-3 is not recomputed
    whole = cached_features(Recorder(), paths, SIZE, tmp_path / "uninterrupted", DESCRIBE, batch_size=2, progress=False)
    np.testing.assert_array_equal(features, whole)


def test_interrupted_first_chunk_starts_again(tmp_path):
    paths = _images(tmp_path / "images", 6)
    chunks = {"batch_size": 2, "chunk_images": 4, "progress": False}
    with pytest.raises(RuntimeError, match="interrupted"):
        cached_features(Recorder(fail_at=2), paths, SIZE, tmp_path, DESCRIBE, **chunks)
    assert list_feature_caches(tmp_path) == []  # no record: nothing reads as done
    first = Recorder(fail_at=5)
    with pytest.raises(RuntimeError, match="interrupted"):
        cached_features(first, paths, SIZE, tmp_path, DESCRIBE, **chunks)
    assert first.seen == [0, 1, 2, 3]  # started again from the first image
    recorder = Recorder()
    features = cached_features(recorder, paths, SIZE, tmp_path, DESCRIBE, **chunks)
    assert recorder.seen == [4, 5]
    whole = cached_features(Recorder(), paths, SIZE, tmp_path / "whole", DESCRIBE, batch_size=2, progress=False)
    np.testing.assert_array_equal(features, whole)


def test_progress_record_is_json_with_the_key(tmp_path):
    paths = _images(tmp_path / "images", 2)
    features = cached_features(Recorder(), paths, SIZE, tmp_path, DESCRIBE, progress=False)
    with open(os.path.join(os.path.dirname(features.filename), "progress.json")) as file:
        record = json.load(file)
    assert len(record["key"]) == 64 and os.path.basename(os.path.dirname(features.filename)) == record["key"][:16]
    assert record["num_images"] == 2 and record["done"] == 2 and record["complete"] is True


def test_fingerprint_changes_with_one_weight():
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    before = fingerprint_variables(layer.weights)
    assert before == fingerprint_variables(layer) and len(before) == 64
    assert fingerprint_variables([np.asarray(w) for w in layer.weights]) == before  # values, not variable names
    kernel = keras.ops.convert_to_numpy(layer.kernel).copy()
    kernel[2, 1] += 1e-3
    layer.kernel.assign(kernel)
    assert fingerprint_variables(layer.weights) != before
    # The same bytes in another shape are other weights.
    assert fingerprint_variables([np.zeros((2, 3))]) != fingerprint_variables([np.zeros((3, 2))])


def test_bad_image_names_its_index_and_file(tmp_path):
    paths = _images(tmp_path / "images", 4)
    with open(paths[2], "wb") as file:
        file.write(b"not a png")
    with pytest.raises(ValueError, match=r"paths\[2\].*2\.png"):
        cached_features(Recorder(), paths, SIZE, tmp_path / "cache", DESCRIBE, batch_size=2, chunk_images=2,
                        progress=False)
    (record,) = list_feature_caches(tmp_path / "cache")
    assert record["done"] == 2 and not record["complete"]


def test_extract_must_keep_one_row_per_image_and_one_shape(tmp_path):
    paths = _images(tmp_path / "images", 4)
    with pytest.raises(ValueError, match="one row per image"):
        cached_features(lambda x: np.zeros((1, 3)), paths, SIZE, tmp_path, DESCRIBE, batch_size=2, progress=False)
    shapes = iter([(2, 3), (2, 4)])
    with pytest.raises(ValueError, match=r"\(4,\).*\(3,\) before"):
        cached_features(lambda x: np.zeros(next(shapes)), paths, SIZE, tmp_path, {"other": 1}, batch_size=2,
                        chunk_images=2, progress=False)


def test_float16_overflow_is_an_error(tmp_path):
    paths = _images(tmp_path / "images", 2)
    with pytest.raises(ValueError, match="beyond float16"):
        cached_features(lambda x: x * 1e5, paths, SIZE, tmp_path, DESCRIBE, progress=False)
    with pytest.raises(ValueError, match="NaN or infinite"):
        cached_features(lambda x: x * np.nan, paths, SIZE, tmp_path, {"nan": True}, progress=False)
    assert list_feature_caches(tmp_path) == []


def test_bad_arguments(tmp_path):
    paths = _images(tmp_path / "images", 1)
    with pytest.raises(ValueError, match="paths is empty"):
        cached_features(Recorder(), [], SIZE, tmp_path, DESCRIBE)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        cached_features(Recorder(), paths, SIZE, tmp_path, DESCRIBE, batch_size=0)
    with pytest.raises(ValueError, match="describe must be a JSON-serialisable dict"):
        cached_features(Recorder(), paths, SIZE, tmp_path, {"weights": object()})
    with pytest.raises(ValueError, match="image_size must be"):
        cached_features(Recorder(), paths, None, tmp_path, DESCRIBE)
