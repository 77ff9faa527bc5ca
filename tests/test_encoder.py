"""Tests for minicap.encoder: feed-forward, encoder layer, scratch ViT encoder, vit-keras backbone."""
import sys

import keras
import numpy as np
import pytest
from keras import ops

from tests.support import require
from tests.support.layer_checks import check_layer
from minicap.encoder import EncoderLayer, FeedForward, VisionEncoder
from minicap.vit_keras import VIT_INSTALL_HINT, ViTBackbone
from tests.support.photo_stand_ins import official_key, write_vit_weights


def test_feed_forward_contract_and_shape(tmp_path):
    layer = FeedForward(model_dim=8, mlp_dim=16)
    output = check_layer(layer, [np.random.rand(2, 5, 8).astype("float32")], tmp_path)
    assert output.shape == (2, 5, 8)
    assert layer.hidden.kernel.shape == (8, 16)


def test_encoder_layer_contract_and_weights(tmp_path):
    layer = EncoderLayer(model_dim=16, num_heads=2, mlp_dim=32)
    x = np.random.rand(2, 9, 16).astype("float32")
    assert check_layer(layer, [x], tmp_path).shape == (2, 9, 16)
    _, weights = layer(x, return_attention_scores=True)
    assert tuple(weights.shape) == (2, 2, 9, 9)
    np.testing.assert_allclose(ops.convert_to_numpy(ops.sum(weights, axis=-1)), 1.0, atol=1e-5)


def test_encoder_layer_is_identity_when_both_branches_output_zero():
    # Pre-norm keeps the residual path an identity: with the attention's output projection and the
    # feed-forward's last projection zeroed, the layer returns its input unchanged.
    layer = EncoderLayer(model_dim=8, num_heads=2, mlp_dim=16)
    x = np.random.rand(1, 4, 8).astype("float32")
    layer(x)
    for dense in (layer.attention.output_dense, layer.feed_forward.projection):
        dense.set_weights([np.zeros_like(w) for w in dense.get_weights()])
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), x, atol=1e-6)


def test_encoder_layer_rejects_wrong_width():
    with pytest.raises(ValueError, match="model_dim 16 got inputs of width 8"):
        EncoderLayer(model_dim=16, num_heads=2, mlp_dim=32)(np.zeros((1, 4, 8), "float32"))


def test_vision_encoder_contract_and_shapes(tmp_path):
    encoder = VisionEncoder(image_size=32, patch_size=8, model_dim=16, num_layers=2, num_heads=2, mlp_dim=32)
    images = np.random.rand(2, 32, 32, 3).astype("float32")
    assert encoder.num_patches == 16
    assert check_layer(encoder, [images], tmp_path).shape == (2, 16, 16)
    output, weights = encoder(images, return_attention_scores=True)
    assert tuple(output.shape) == (2, 16, 16)
    assert [tuple(w.shape) for w in weights] == [(2, 2, 16, 16)] * 2


def test_vision_encoder_colour_shape_stem_and_output_positions(tmp_path):
    encoder = VisionEncoder(image_size=24, patch_size=8, model_dim=16, num_layers=1, num_heads=2, mlp_dim=32,
                            patch_stem="colour-shape", output_positions=True)
    images = np.random.default_rng(0).random((2, 24, 24, 3)).astype("float32")
    assert check_layer(encoder, [images], tmp_path, atol=1e-5).shape == (2, 9, 16)
    assert encoder.get_config()["patch_stem"] == "colour-shape" and encoder.get_config()["output_positions"]


def test_vision_encoder_output_positions_add_the_2d_encoding():
    from minicap.positional import sinusoidal_encoding_2d

    plain = VisionEncoder(image_size=16, patch_size=8, model_dim=8, num_layers=1, num_heads=2, mlp_dim=16)
    images = np.random.default_rng(1).random((1, 16, 16, 3)).astype("float32")
    expected = ops.convert_to_numpy(plain(images)) + ops.convert_to_numpy(sinusoidal_encoding_2d(2, 2, 8))[None]
    config = {**plain.get_config(), "output_positions": True}
    positioned = VisionEncoder.from_config(config)
    positioned.build(images.shape)
    positioned.set_weights(plain.get_weights())  # no new weights: the encoding is fixed
    np.testing.assert_allclose(ops.convert_to_numpy(positioned(images)), expected, atol=1e-5)
    with pytest.raises(ValueError, match="output_positions needs model_dim divisible by 4"):
        VisionEncoder(image_size=16, patch_size=8, model_dim=6, num_layers=1, num_heads=2, mlp_dim=16,
                      output_positions=True)
    with pytest.raises(ValueError, match="patch_stem must be one of"):
        VisionEncoder(image_size=16, patch_size=8, model_dim=8, num_layers=1, num_heads=2, mlp_dim=16,
                      patch_stem="convolution")


def test_vision_encoder_output_depends_on_patch_position():
    # Swapping two patches changes more than the order of the outputs: positions are encoded.
    encoder = VisionEncoder(image_size=16, patch_size=8, model_dim=8, num_layers=1, num_heads=2, mlp_dim=16)
    images = np.random.rand(1, 16, 16, 3).astype("float32")
    swapped = images.copy()
    swapped[:, :8, :8], swapped[:, :8, 8:] = images[:, :8, 8:], images[:, :8, :8]
    output, output_swapped = (ops.convert_to_numpy(encoder(x)) for x in (images, swapped))
    assert not np.allclose(output[:, [1, 0, 2, 3]], output_swapped, atol=1e-4)


def test_vision_encoder_rejects_bad_sizes():
    with pytest.raises(ValueError, match="not divisible by patch size 8"):
        VisionEncoder(image_size=36, patch_size=8, model_dim=16, num_layers=1, num_heads=2, mlp_dim=32)
    encoder = VisionEncoder(image_size=32, patch_size=8, model_dim=16, num_layers=1, num_heads=2, mlp_dim=32)
    with pytest.raises(ValueError, match="built for 32x32 images"):
        encoder(np.zeros((1, 64, 64, 3), "float32"))


def test_pretrained_backbone_without_vit_keras_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vit_keras", None)  # makes `import vit_keras` fail
    with pytest.raises(ImportError, match="--ignore-requires-python vit-keras==0.2.0") as error:
        ViTBackbone(image_size=32, variant="vit-b32")
    assert "opencv-python-headless validators" in str(error.value)
    assert "vit_implementation='minicap', the default" in str(error.value)  # the way without vit-keras
    assert "pip install --no-deps --ignore-requires-python" in VIT_INSTALL_HINT


def test_backbone_rejects_unknown_variant():
    with pytest.raises(ValueError, match="unknown ViT variant 'vit-h14'"):
        ViTBackbone(image_size=32, variant="vit-h14")


# A small ViT in vit-keras's architecture (ViT-B has the same structure, 12 layers of width 768).
SMALL_VIT = dict(variant=None, patch_size=8, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32)


def _write_official_weights(path, grid):
    """A stand-in official file for SMALL_VIT at ``grid x grid`` patches (see tests/photo_stand_ins.py)."""
    architecture = {key: value for key, value in SMALL_VIT.items() if key != "variant"}
    return write_vit_weights(path, grid=grid, **architecture)


def test_backbone_loads_official_weights_and_returns_patch_tokens(tmp_path):
    require("vit_keras", "vit-keras (the optional 'vit' extra) is not installed")
    backbone = ViTBackbone(image_size=32, **SMALL_VIT)
    path = tmp_path / "ViT-small.npz"
    arrays = _write_official_weights(path, grid=4)
    backbone.load_weights_from(str(path))
    for weight in backbone.vit.weights:  # every ViT weight comes from the file
        np.testing.assert_array_equal(ops.convert_to_numpy(weight),
                                      arrays[official_key(weight.path)].reshape(weight.shape))
    images = np.random.rand(2, 32, 32, 3).astype("float32")
    features = check_layer(backbone, [images], tmp_path, atol=1e-5)
    assert features.shape == (2, 16, 16)  # 4x4 patch tokens of width 16, the class token dropped
    tokens = ops.convert_to_numpy(backbone.vit(images * 2 - 1))  # vit-keras expects [-1, 1]
    assert tokens.shape == (2, 1 + 16, 16)
    np.testing.assert_allclose(features, tokens[:, 1:], atol=1e-5)
    # After the final layer norm: every token has mean ~ offset and spread ~ scale of encoder_norm.
    norm = backbone.vit.get_layer("Transformer_encoder_norm")
    gamma, beta = (ops.convert_to_numpy(w) for w in norm.weights)
    normalised = (features - beta) / gamma
    np.testing.assert_allclose(normalised.mean(-1), 0.0, atol=1e-4)


def test_backbone_freeze_leaves_nothing_trainable_in_the_vit():
    require("vit_keras", "vit-keras (the optional 'vit' extra) is not installed")
    frozen = ViTBackbone(image_size=16, freeze=True, name="frozen", **SMALL_VIT)
    trained = ViTBackbone(image_size=16, freeze=False, **SMALL_VIT)
    for backbone in (frozen, trained):
        backbone(np.zeros((1, 16, 16, 3), "float32"))
    assert frozen.trainable_weights == []
    assert len(trained.trainable_weights) == len(trained.vit.weights)


def test_backbone_weight_errors(tmp_path):
    require("vit_keras", "vit-keras (the optional 'vit' extra) is not installed")
    backbone = ViTBackbone(image_size=16, **SMALL_VIT)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        backbone.load_weights_from(str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="must be one of"):
        backbone.load_weights_from("imagenet")
    with pytest.raises(ValueError, match="got variant None: give the path of a .npz file"):
        backbone.load_weights_from("imagenet21k")
    path = tmp_path / "small.npz"
    _write_official_weights(path, grid=2)
    with pytest.raises(ValueError, match="checksum mismatch for .*small.npz"):
        backbone.load_weights_from(str(path), file_hash="sha256:" + "0" * 64)


def test_backbone_resizes_position_embeddings_to_its_image_size(tmp_path):
    # Pretrained files hold position embeddings for their own grid (ViT-B/16: 24x24 at 384 pixels);
    # loading into another image size interpolates the grid and keeps the class token's embedding.
    require("vit_keras", "vit-keras (the optional 'vit' extra) is not installed")
    path = tmp_path / "ViT-small.npz"
    arrays = _write_official_weights(path, grid=4)  # for 32-pixel images
    backbone = ViTBackbone(image_size=16, **SMALL_VIT)  # a 2x2 grid
    with pytest.warns(UserWarning, match="Resizing position embeddings from 4, 4 to 2, 2"):
        backbone.load_weights_from(str(path))
    table = ops.convert_to_numpy(backbone.vit.get_layer("Transformer_posembed_input").weights[0])
    assert table.shape == (1, 1 + 4, 16)
    np.testing.assert_array_equal(table[0, 0], arrays["Transformer/posembed_input/pos_embedding"][0, 0])
    assert tuple(backbone(np.zeros((1, 16, 16, 3), "float32")).shape) == (1, 4, 16)
