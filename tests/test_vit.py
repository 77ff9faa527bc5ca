"""Tests for minicap.vit: the pretrained ViT-B in minicap's layers and its loader of the official weights.

The official files cannot be downloaded here, so the tests write stand-ins in their format
(tests/photo_stand_ins.py: the official key names and shapes, random values) and check the loaded ViT
against two references: a forward pass written with numpy straight from the file's arrays, and
vit-keras's model loaded from the same file (the article's implementation).
"""
import math
import sys

import keras
import numpy as np
import pytest
from keras import ops

from tests.support import require
from tests.support.layer_checks import check_layer
from minicap.vit_keras import ViTBackbone
from minicap.vit import (PretrainedViT, load_official_weights, official_layout, pretrained_vit,
                         resize_position_embeddings)
from tests.support.photo_stand_ins import official_shapes, write_vit_weights

# A small ViT in the official architecture (ViT-B has the same structure: 12 layers of width 768).
SMALL = dict(patch_size=8, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32)


def small_file(path, grid=4, scale=0.3, seed=1, pre_logits=False):
    """A stand-in official file for SMALL at ``grid x grid`` patches; return its arrays."""
    return write_vit_weights(path, grid=grid, scale=scale, seed=seed, pre_logits=pre_logits, **SMALL)


def images(count=2, size=32, seed=0):
    return np.random.default_rng(seed).random((count, size, size, 3)).astype("float32")


def reference_forward(arrays, pixels, num_heads):
    """ViT's forward pass in numpy (float64) from the official arrays: ``(batch, 1 + patches, width)``."""
    arrays = {key: value.astype("float64") for key, value in arrays.items()}
    x = pixels.astype("float64") * 2.0 - 1.0
    kernel = arrays["embedding/kernel"]  # (P, P, 3, D): a convolution with stride P
    size, width = kernel.shape[0], kernel.shape[-1]
    grid = x.shape[1] // size
    blocks = x.reshape(len(x), grid, size, grid, size, 3)
    tokens = np.einsum("brpcqk,pqkd->brcd", blocks, kernel).reshape(len(x), grid * grid, width)
    tokens = tokens + arrays["embedding/bias"]
    cls = np.broadcast_to(arrays["cls"], (len(x), 1, width))
    x = np.concatenate([cls, tokens], axis=1) + arrays["Transformer/posembed_input/pos_embedding"]

    def norm(x, prefix):
        mean, variance = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(variance + 1e-6) * arrays[f"{prefix}/scale"] + arrays[f"{prefix}/bias"]

    erf = np.vectorize(math.erf)
    layers = len({key.split("/")[1] for key in arrays if "encoderblock_" in key})
    for index in range(layers):
        block = f"Transformer/encoderblock_{index}"
        attention = f"{block}/MultiHeadDotProductAttention_1"
        h = norm(x, f"{block}/LayerNorm_0")
        q, k, v = (np.einsum("btd,dhk->bhtk", h, arrays[f"{attention}/{name}/kernel"])
                   + arrays[f"{attention}/{name}/bias"][None, :, None, :] for name in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(width // num_heads)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        x = x + np.einsum("bhtk,hkd->btd", weights @ v, arrays[f"{attention}/out/kernel"])
        x = x + arrays[f"{attention}/out/bias"]
        h = norm(x, f"{block}/LayerNorm_2") @ arrays[f"{block}/MlpBlock_3/Dense_0/kernel"]
        h = h + arrays[f"{block}/MlpBlock_3/Dense_0/bias"]
        h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))  # the exact GELU
        x = x + h @ arrays[f"{block}/MlpBlock_3/Dense_1/kernel"] + arrays[f"{block}/MlpBlock_3/Dense_1/bias"]
    return norm(x, "Transformer/encoder_norm")


def test_pretrained_vit_contract_and_shapes(tmp_path):
    vit = PretrainedViT(32, variant=None, **SMALL)
    assert check_layer(vit, [images()], tmp_path, atol=1e-5).shape == (2, 16, 16)  # 4 x 4 patch tokens
    sequence = ops.convert_to_numpy(vit.sequence(images()))
    assert sequence.shape == (2, 1 + 16, 16)
    np.testing.assert_allclose(ops.convert_to_numpy(vit(images())), sequence[:, 1:], atol=1e-6)
    with pytest.raises(ValueError, match="built for 32x32 images"):
        vit(np.zeros((1, 64, 64, 3), "float32"))


def test_official_weights_give_vits_forward_pass(tmp_path):
    arrays = small_file(tmp_path / "small.npz", pre_logits=True)  # an ImageNet-21k file: pre_logits too
    vit = PretrainedViT(32, variant=None, **SMALL)
    vit.load_weights_from(str(tmp_path / "small.npz"))
    for key, _, variable in official_layout(vit):  # every weight comes from the file
        np.testing.assert_array_equal(ops.convert_to_numpy(variable), arrays[key].reshape(variable.shape))
    pixels = images(seed=3)
    expected = reference_forward(arrays, pixels, num_heads=2)
    sequence = ops.convert_to_numpy(vit.sequence(pixels))
    assert np.abs(sequence - expected).max() <= 1e-4
    assert np.abs(expected).max() > 1.0  # a real signal, not near zero


def test_native_vit_equals_vit_keras_on_the_same_weights(tmp_path):
    require("vit_keras", "vit-keras (the optional 'vit' extra) is not installed")
    small_file(tmp_path / "small.npz")
    native, article = PretrainedViT(32, variant=None, **SMALL), ViTBackbone(32, variant=None, **SMALL)
    for vit in (native, article):
        vit.load_weights_from(str(tmp_path / "small.npz"))
    pixels = images(count=3, seed=5)
    difference = np.abs(ops.convert_to_numpy(native(pixels)) - ops.convert_to_numpy(article(pixels))).max()
    assert difference <= 1e-4
    # A file made for another image size: both resize the position embeddings the same way.
    small_file(tmp_path / "grid8.npz", grid=8, seed=2)
    native, article = PretrainedViT(32, variant=None, **SMALL), ViTBackbone(32, variant=None, **SMALL)
    for vit in (native, article):
        with pytest.warns(UserWarning, match="[Rr]esizing position embeddings"):
            vit.load_weights_from(str(tmp_path / "grid8.npz"))
    np.testing.assert_allclose(ops.convert_to_numpy(native.position_embedding.embeddings),
                               ops.convert_to_numpy(article.vit.get_layer("Transformer_posembed_input").pe)[0],
                               atol=1e-6)
    assert np.abs(ops.convert_to_numpy(native(pixels)) - ops.convert_to_numpy(article(pixels))).max() <= 1e-4


def test_resize_position_embeddings_interpolates_the_grid_and_keeps_the_class_token():
    cells = np.array([[0.0, 2.0], [4.0, 6.0]])  # a 2 x 2 grid, width 1
    table = np.concatenate([[[9.0]], cells.reshape(4, 1)])[None]  # (1, 5, 1): the class token first
    resized = resize_position_embeddings(table, 3)
    assert resized.shape == (1, 1 + 9, 1) and resized[0, 0, 0] == 9.0
    expected = np.array([[0, 1, 2], [2, 3, 4], [4, 5, 6]], "float64")  # corners kept, midpoints averaged
    np.testing.assert_allclose(resized[0, 1:, 0].reshape(3, 3), expected)
    np.testing.assert_allclose(resize_position_embeddings(resized, 2), table)  # and back
    with pytest.raises(ValueError, match="square grid"):
        resize_position_embeddings(np.zeros((1, 1 + 6, 1)), 2)


def test_loader_names_the_key_and_both_shapes_and_assigns_nothing_on_error(tmp_path):
    arrays = small_file(tmp_path / "good.npz")
    vit = PretrainedViT(32, variant=None, **SMALL)
    vit(images())
    before = [ops.convert_to_numpy(w).copy() for w in vit.weights]
    key = "Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel"
    np.savez(tmp_path / "wide.npz", **{**arrays, key: np.zeros((16, 64), "float32")})
    with pytest.raises(ValueError, match=r"wide.npz: array '.*Dense_0/kernel' has shape \(16, 64\); "
                                         r"this ViT needs \(16, 32\)"):
        load_official_weights(vit, str(tmp_path / "wide.npz"))
    np.savez(tmp_path / "missing.npz", **{k: v for k, v in arrays.items() if k != "cls"})
    with pytest.raises(ValueError, match="has no array 'cls'"):
        load_official_weights(vit, str(tmp_path / "missing.npz"))
    deeper = PretrainedViT(32, variant=None, **{**SMALL, "num_layers": 3})
    with pytest.raises(ValueError, match="holds 2 encoder blocks; this ViT has 3"):
        deeper.load_weights_from(str(tmp_path / "good.npz"))
    assert all(np.array_equal(a, ops.convert_to_numpy(b)) for a, b in zip(before, vit.weights))
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        vit.load_weights_from(str(tmp_path / "nowhere.npz"))


def test_vit_b32_architecture_matches_the_official_layout():
    vit = pretrained_vit(224, "vit-b32")
    assert isinstance(vit, PretrainedViT)
    vit.build((None, 224, 224, 3))
    layout = {key: shape for key, shape, _ in official_layout(vit)}
    official = official_shapes(32, 768, 12, 12, 3072, grid=7)
    assert layout == {key: shape for key, shape in official.items() if not key.startswith("head/")}
    assert vit.count_params() == 87_455_232  # ViT-B/32 without its classifier head
    assert tuple(vit.compute_output_shape((2, 224, 224, 3))) == (2, 49, 768)


def test_freeze_leaves_nothing_trainable_and_turns_dropout_off():
    frozen = PretrainedViT(16, variant=None, dropout=0.5, **SMALL)
    trained = PretrainedViT(16, variant=None, freeze=False, dropout=0.5, **SMALL)
    pixels = images(size=16)
    for vit in (frozen, trained):
        vit(pixels)
    assert frozen.trainable_weights == [] and len(trained.trainable_weights) == len(trained.weights)
    np.testing.assert_array_equal(ops.convert_to_numpy(frozen(pixels, training=True)),
                                  ops.convert_to_numpy(frozen(pixels, training=False)))
    assert not np.allclose(ops.convert_to_numpy(trained(pixels, training=True)),
                           ops.convert_to_numpy(trained(pixels, training=False)))


def test_mixed_precision_computes_in_half_and_keeps_float32_weights(tmp_path):
    small_file(tmp_path / "small.npz")
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    vit = PretrainedViT(32, variant=None, **SMALL)
    vit.load_weights_from(str(tmp_path / "small.npz"))
    output = vit(images())
    assert keras.backend.standardize_dtype(output.dtype) == "bfloat16"
    assert {keras.backend.standardize_dtype(w.dtype) for w in vit.weights} == {"float32"}


def test_the_native_vit_needs_no_vit_keras(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vit_keras", None)  # makes `import vit_keras` fail
    small_file(tmp_path / "small.npz")
    vit = pretrained_vit(32, None, "minicap", **SMALL)
    vit.load_weights_from(str(tmp_path / "small.npz"))
    assert tuple(vit(images()).shape) == (2, 16, 16)
    with pytest.raises(ImportError, match="vit_implementation='minicap', the default"):
        pretrained_vit(32, None, "vit-keras", **SMALL)


def test_factory_rejects_unknown_implementations():
    with pytest.raises(ValueError, match=r"ViT implementation 'keras-hub' is not one of \['minicap', 'vit-keras'\]"):
        pretrained_vit(224, "vit-b32", "keras-hub")
    with pytest.raises(ValueError, match="unknown ViT variant 'vit-h14'"):
        pretrained_vit(224, "vit-h14")
    with pytest.raises(ValueError, match="variant=None needs patch_size"):
        PretrainedViT(32, variant=None)


def _damaged(kind, path, good):
    """A weights file at ``path`` that is wrong in one way (``good``: an official small file to start from)."""
    data = good.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not a zip":
        path.write_text("<html>404: not found</html>")
    elif kind == "one array (.npy)":
        with open(path, "wb") as file:
            np.save(file, np.zeros(3))
    elif kind == "pickled objects":
        np.savez(path, **{"embedding/kernel": np.array([{"code": "runs when unpickled"}], dtype=object)})
    elif kind == "other arrays":
        np.savez(path, weights=np.zeros((3, 3)))
    return path


DAMAGED = {"empty": "it is empty", "truncated": "not an .npz archive", "not a zip": "not an .npz archive",
           "one array (.npy)": "single NumPy array", "pickled objects": "holds Python objects",
           "other arrays": "encoder blocks"}


@pytest.mark.parametrize("kind", DAMAGED)
@pytest.mark.parametrize("implementation", ["minicap", "vit-keras"])
def test_every_damaged_weights_file_gets_one_clear_line(tmp_path, kind, implementation):
    if implementation == "vit-keras":
        require("vit_keras", "vit-keras (the optional 'vit' extra) is not installed")
    small_file(tmp_path / "good.npz")
    path = _damaged(kind, tmp_path / f"{kind}.npz", tmp_path / "good.npz")
    vit = pretrained_vit(32, variant=None, implementation=implementation, **SMALL)
    with pytest.raises(ValueError) as raised:
        vit.load_weights_from(str(path))
    message = str(raised.value)
    assert "\n" not in message and str(path) in message and DAMAGED[kind] in message
    assert "allow_pickle" not in message and "pickle.load" not in message  # numpy's advice never reaches a user
    assert path.exists()  # a file of the user's is left alone


def test_a_damaged_download_in_the_cache_is_deleted_so_the_next_run_downloads_it(tmp_path, monkeypatch):
    from minicap.model import CaptionModel
    from minicap.config import CaptionConfig

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cached = tmp_path / "weights" / "ViT-B_32_imagenet21k+imagenet2012.npz"
    cached.parent.mkdir()
    cached.write_bytes(b"")  # a download that stopped at its first byte
    config = CaptionConfig(vocab_size=10, backbone="vit-b32", image_size=64, model_dim=32, num_heads=2, mlp_dim=32)
    with pytest.raises(ValueError, match=r"ViT-B_32_imagenet21k\+imagenet2012.npz is not usable ViT weights: it is "
                                         r"empty .*deleted from the weights cache: the next run downloads it again"):
        CaptionModel(config)
    assert not cached.exists()
