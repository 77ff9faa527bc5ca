"""Tests for minicap.model: CaptionConfig and CaptionModel (training, saving, cached decoding)."""
import json
import sys

import keras
import numpy as np
import pytest
from keras import ops

from tests.support import require
from minicap.model import CaptionConfig, CaptionModel

VOCAB = 11


def _config(**overrides):
    values = dict(vocab_size=VOCAB, max_length=6, image_size=32, patch_size=8, model_dim=32, num_heads=2,
                  encoder_layers=1, decoder_layers=2, mlp_dim=64, dropout=0.1)
    return CaptionConfig(**{**values, **overrides})


def _batch(batch=3, length=6, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((batch, 32, 32, 3)).astype("float32")
    tokens = rng.integers(1, VOCAB, (batch, length)).astype("int32")
    tokens[1, 4:] = 0  # padding
    return images, tokens


def test_config_json_round_trip(tmp_path):
    config = _config(backbone_weights=None)
    assert CaptionConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["model_dim"] == 32
    config.save(tmp_path / "config.json")
    assert CaptionConfig.load(tmp_path / "config.json") == config
    assert config.num_patches == 16 and config.encoder_patch_size == 8
    assert _config(backbone="vit-b32").encoder_patch_size == 32
    scratch = _config(backbone_weights="imagenet21k")  # kept as given, but the scratch encoder loads nothing
    assert scratch.backbone_weights == "imagenet21k" and scratch.encoder_spec().weights is None
    assert CaptionConfig.from_json(scratch.to_json()) == scratch


@pytest.mark.parametrize("overrides, message", [
    (dict(model_dim=30, num_heads=4), "model_dim 30 is not divisible by num_heads 4"),
    (dict(image_size=36), "image_size 36 is not divisible by the scratch encoder's patch size 8"),
    (dict(backbone="resnet"), "backbone 'resnet' is not one of"),
    (dict(vocab_size=0), "vocab_size must be a positive integer, got 0"),
    (dict(dropout=1.5), r"dropout must be in \[0, 1\)"),
    (dict(pad_id=11), "pad_id 11 is not a token id below vocab_size 11"),
    (dict(backbone="vit-b16", backbone_weights="imagenet"), "backbone_weights must be one of"),
    (dict(patch_stem="cnn"), r"patch_stem must be one of \['linear', 'colour-shape', 'conv'\]"),
    (dict(backbone="vit-b16", patch_stem="colour-shape"), "need the scratch encoder"),
    (dict(backbone="vit-b16", output_positions=True), "need the scratch encoder"),
    (dict(model_dim=18, num_heads=2, output_positions=True), "output_positions needs an encoder width divisible by 4"),
    (dict(backbone="vit-b32", vit_implementation="keras-hub"),
     r"vit_implementation 'keras-hub' is not one of \['minicap', 'vit-keras'\]"),
    (dict(backbone="vit-b32", backbone_weights_hash="sha1:abc"), "backbone_weights_hash: file_hash must be"),
])
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(**overrides)


def test_config_rejects_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown CaptionConfig fields \['width'\]"):
        CaptionConfig.from_dict({"vocab_size": 5, "width": 3})


def test_logits_shape_and_dtype_and_dict_config():
    model = CaptionModel(_config().to_dict())
    logits = model(_batch())
    assert tuple(logits.shape) == (3, 6, VOCAB)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert model.count_params() > 0 and model.built


def test_logits_are_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = CaptionModel(_config())
    assert keras.backend.standardize_dtype(model.encode(_batch()[0]).dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(model(_batch()).dtype) == "float32"


def test_save_and_load_give_identical_outputs(tmp_path):
    model = CaptionModel(_config())
    inputs = _batch()
    expected = ops.convert_to_numpy(model(inputs))
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    assert isinstance(loaded, CaptionModel) and loaded.config == model.config
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded(inputs)), expected)


def test_fit_reduces_the_loss_and_the_trained_model_reloads(tmp_path):
    model = CaptionModel(_config(dropout=0.0))
    images, tokens = _batch(batch=4, length=6)
    targets = np.roll(tokens, -1, axis=1)
    targets[:, -1] = 0
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0))
    history = model.fit((images, tokens), targets, batch_size=4, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 8 and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.1
    model.save(tmp_path / "trained.keras")
    loaded = keras.models.load_model(tmp_path / "trained.keras", safe_mode=True)
    np.testing.assert_allclose(ops.convert_to_numpy(loaded((images, tokens))),
                               ops.convert_to_numpy(model((images, tokens))), atol=1e-6)


def test_decode_step_equals_the_full_pass():
    model = CaptionModel(_config())
    images, tokens = _batch()
    full = ops.convert_to_numpy(model((images, tokens), training=False))
    cache = model.init_cache(model.encode(images, training=False), max_length=6)
    steps = []
    for index in range(6):
        logits, cache = model.decode_step(tokens[:, index:index + 1], cache, ops.convert_to_tensor(index, "int32"))
        assert tuple(logits.shape) == (3, 1, VOCAB)
        steps.append(ops.convert_to_numpy(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_attention_scores():
    model = CaptionModel(_config())
    images, tokens = _batch()
    scores = model.attention_scores(images, tokens)
    assert [tuple(w.shape) for w in scores["self"]] == [(3, 2, 6, 6)] * 2
    assert [tuple(w.shape) for w in scores["cross"]] == [(3, 2, 6, 16)] * 2
    np.testing.assert_allclose(ops.convert_to_numpy(scores["cross"][0]).sum(-1), 1.0, atol=1e-5)


def test_model_rejects_bad_inputs():
    model = CaptionModel(_config())
    with pytest.raises(ValueError, match=r"expects inputs \(images, tokens\)"):
        model(_batch()[0])
    with pytest.raises(ValueError, match="built for 32x32 images"):
        model((np.zeros((1, 64, 64, 3), "float32"), np.ones((1, 3), "int32")))
    with pytest.raises(ValueError, match="config must be a CaptionConfig or a dict"):
        CaptionModel("config.json")


def test_the_default_vit_is_minicaps_and_vit_keras_is_one_setting_away(monkeypatch):
    from minicap.vit_keras import ViTBackbone
    from minicap.vit import PretrainedViT

    monkeypatch.setitem(sys.modules, "vit_keras", None)  # makes `import vit_keras` fail
    config = _config(backbone="vit-b32", backbone_weights=None)
    assert config.vit_implementation == "minicap"
    assert isinstance(CaptionModel(config).encoder, PretrainedViT)  # needs no vit-keras
    with pytest.raises(ImportError, match="pip install --no-deps --ignore-requires-python vit-keras==0.2.0"):
        CaptionModel(_config(backbone="vit-b32", backbone_weights=None, vit_implementation="vit-keras"))
    monkeypatch.delitem(sys.modules, "vit_keras")
    require("vit_keras", "vit-keras (the optional 'vit' extra) is not installed")
    model = CaptionModel(_config(backbone="vit-b32", backbone_weights=None, vit_implementation="vit-keras"))
    assert isinstance(model.encoder, ViTBackbone)


@pytest.mark.slow
@pytest.mark.parametrize("implementation", ["minicap", "vit-keras"])
def test_pretrained_weights_load_on_creation_but_not_from_config(tmp_path, implementation):
    # A new model loads `backbone_weights`; one rebuilt from its config (as load_model does) does not,
    # so that loading a saved model never downloads: its weights come from the .keras file.
    if implementation == "vit-keras":
        require("vit_keras", "vit-keras (the optional 'vit' extra) is not installed")
    config = _config(backbone="vit-b32", backbone_weights=str(tmp_path / "ViT-B_32.npz"),
                     vit_implementation=implementation)
    rebuilt = CaptionModel.from_config({"config": config.to_dict(), "name": "rebuilt", "trainable": True})
    assert rebuilt.config == config and rebuilt.encoder.num_patches == 1  # 32x32 images, 32x32 patches
    assert len(rebuilt.trainable_weights) == len(rebuilt.weights) - len(rebuilt.encoder.weights)  # frozen
    with pytest.raises(FileNotFoundError, match="ViT-B_32.npz"):
        CaptionModel(config)


@pytest.mark.slow
def test_a_model_saved_before_the_native_vit_loads_with_vit_keras(tmp_path):
    # Models saved before CaptionConfig.vit_implementation existed hold vit-keras's ViT, and their config
    # has no such field: they load as vit-keras models, with their weights.
    require("vit_keras", "vit-keras (the optional 'vit' extra) is not installed")
    import zipfile

    from minicap.vit_keras import ViTBackbone

    model = CaptionModel(_config(backbone="vit-b32", backbone_weights=None, vit_implementation="vit-keras"))
    model.save(tmp_path / "new.keras")
    with zipfile.ZipFile(tmp_path / "new.keras") as new, zipfile.ZipFile(tmp_path / "old.keras", "w") as old:
        for item in new.infolist():
            data = new.read(item)
            if item.filename == "config.json":
                saved = json.loads(data)
                del saved["config"]["config"]["vit_implementation"]
                del saved["config"]["config"]["backbone_weights_hash"]
                data = json.dumps(saved).encode()
            old.writestr(item, data)
    loaded = keras.models.load_model(tmp_path / "old.keras", safe_mode=True)
    assert isinstance(loaded.encoder, ViTBackbone) and loaded.config.vit_implementation == "vit-keras"
    images, tokens = _batch(batch=2)
    np.testing.assert_allclose(ops.convert_to_numpy(loaded((images, tokens))),
                               ops.convert_to_numpy(model((images, tokens))), atol=1e-5)


def test_encoder_sizes_default_to_the_decoders_and_old_configs_still_load():
    config = _config()
    assert (config.encoder_dim, config.encoder_heads, config.encoder_mlp_dim) == (None, None, None)
    old = {key: value for key, value in config.to_dict().items() if not key.startswith("encoder_") or
           key == "encoder_layers"}  # a config saved before the encoder sizes existed
    assert CaptionConfig.from_dict(old) == config
    model = CaptionModel(config)
    encoder = model.encoder  # None: the decoder's sizes
    assert (encoder.model_dim, encoder.num_heads, encoder.mlp_dim) == (32, 2, 64)
    assert model.encoder_projection is None and config.feature_dim == 32


def test_wider_encoder_is_projected_to_the_decoder_width(tmp_path):
    config = _config(encoder_dim=48, encoder_heads=3, encoder_mlp_dim=96, dropout=0.0)
    assert CaptionConfig.from_json(config.to_json()) == config
    model = CaptionModel(config)
    encoder = model.encoder
    assert (encoder.model_dim, encoder.num_heads, encoder.mlp_dim) == (48, 3, 96)
    images, tokens = _batch()
    assert tuple(model.encode(images).shape) == (3, 16, 32)
    assert tuple(model((images, tokens)).shape) == (3, 6, VOCAB)
    # Parameters: the narrow model's, with the encoder at width 48 and a 48 -> 32 projection.
    d, e, f, patch_values = 32, 48, 96, 8 * 8 * 3
    encoder_params = (patch_values * e + e + 16 * e  # patch projection and positions
                      + 4 * (e * e + e) + 2 * 2 * e + (e * f + f) + (f * e + e)  # one layer
                      + 2 * e)  # final norm
    assert sum(int(np.prod(w.shape)) for w in model.encoder.weights) == encoder_params
    assert sum(int(np.prod(w.shape)) for w in model.encoder_projection.weights) == e * d + d
    # Cached decoding still equals the full pass.
    full = ops.convert_to_numpy(model((images, tokens), training=False))
    cache = model.init_cache(model.encode(images, training=False), max_length=6)
    steps = []
    for index in range(6):
        logits, cache = model.decode_step(tokens[:, index:index + 1], cache, ops.convert_to_tensor(index, "int32"))
        steps.append(ops.convert_to_numpy(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)
    model.save(tmp_path / "wide.keras")
    loaded = keras.models.load_model(tmp_path / "wide.keras", safe_mode=True)
    assert loaded.config == config
    np.testing.assert_allclose(ops.convert_to_numpy(loaded((images, tokens), training=False)), full, atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (dict(encoder_dim=50, encoder_heads=3), "encoder_dim 50 is not divisible by encoder_heads 3"),
    (dict(encoder_dim=33), "encoder_dim 33 is not divisible by encoder_heads 2"),
    (dict(encoder_mlp_dim=0), "encoder_mlp_dim must be a positive integer or None, got 0"),
    (dict(encoder_heads=2.5), "encoder_heads must be a positive integer or None, got 2.5"),
])
def test_config_rejects_bad_encoder_sizes(overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(**overrides)


def test_colour_shape_model_with_output_positions_saves_and_loads(tmp_path):
    model = CaptionModel(_config(patch_stem="colour-shape", output_positions=True))
    images, tokens = _batch()
    expected = keras.ops.convert_to_numpy(model((images, tokens)))
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    assert loaded.config.patch_stem == "colour-shape" and loaded.config.output_positions
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded((images, tokens))), expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("implementation", ["minicap", "vit-keras"])
def test_pretrained_backbone_trains_on_cached_features_and_saves_with_the_backbone(tmp_path, implementation):
    """A frozen ViT-B/32's features, computed once, stand in for the images: same logits; a fit step on
    features trains the projection and decoder and leaves the ViT alone; the saved model captions images."""
    if implementation == "vit-keras":
        require("vit_keras", "vit-keras (the optional 'vit' extra) is not installed")
    config = _config(backbone="vit-b32", image_size=64, backbone_weights=None, dropout=0.0,
                     vit_implementation=implementation)
    assert (config.num_patches, config.feature_dim) == (4, 768)
    model = CaptionModel(config)
    assert model.encoder_projection is not None  # 768 -> 32, the article's Dense projection
    images, tokens = _batch(batch=2)
    images = np.random.default_rng(0).random((2, 64, 64, 3)).astype("float32")
    features = ops.convert_to_numpy(model.backbone_features(images))
    assert features.shape == (2, 4, 768)
    from_images = ops.convert_to_numpy(model((images, tokens)))
    from_features = ops.convert_to_numpy(model((features.astype("float16"), tokens)))
    np.testing.assert_allclose(from_features, from_images, atol=2e-2)  # float16 storage of the features
    np.testing.assert_allclose(ops.convert_to_numpy(model((features, tokens))), from_images, atol=1e-4)
    vit_before = [ops.convert_to_numpy(w).copy() for w in model.encoder.weights]
    projection_before = ops.convert_to_numpy(model.encoder_projection.kernel).copy()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit((features, tokens), tokens, epochs=1, batch_size=2, verbose=0)
    assert all(np.array_equal(a, ops.convert_to_numpy(b)) for a, b in zip(vit_before, model.encoder.weights))
    assert not np.allclose(projection_before, ops.convert_to_numpy(model.encoder_projection.kernel))
    model.save(tmp_path / "photos.keras")
    loaded = keras.models.load_model(tmp_path / "photos.keras", safe_mode=True)
    assert type(loaded.encoder) is type(model.encoder) and loaded.config == config
    np.testing.assert_allclose(ops.convert_to_numpy(loaded((images, tokens))),
                               ops.convert_to_numpy(model((images, tokens))), atol=1e-4)
    with pytest.raises(ValueError, match=r"features of shape \(batch, 4, 768\)"):
        model((features[:, :, :100], tokens))


def test_scratch_model_takes_no_features():
    model = CaptionModel(_config())
    _, tokens = _batch()
    with pytest.raises(ValueError, match="takes images of shape .* and no features"):
        model((np.zeros((3, 16, 32), "float32"), tokens))


def test_a_config_without_vocabulary_size_builds_no_model():
    config = _config(vocab_size=None)  # a training profile's model settings, before the tokenizer exists
    with pytest.raises(ValueError, match="vocab_size is None"):
        CaptionModel(config)


@pytest.mark.parametrize("implementation", ["minicap", "vit-keras"])
def test_a_pinned_digest_of_the_vit_weights_is_checked_when_the_model_loads_them(tmp_path, monkeypatch,
                                                                                implementation):
    # backbone_weights_hash is the user's only protection of a weights file from elsewhere: the model must hand it
    # to the loader, whichever ViT runs it. (A ViT of the official architecture, small, stands in for ViT-B/32.)
    import hashlib

    from minicap.config import VIT_VARIANTS
    from tests.support.photo_stand_ins import write_vit_weights

    if implementation == "vit-keras":
        require("vit_keras", "vit-keras (the optional 'vit' extra) is not installed")
    small = dict(patch_size=8, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32)
    monkeypatch.setitem(VIT_VARIANTS, "vit-b32", small)
    arrays = write_vit_weights(tmp_path / "vit.npz", grid=4, scale=0.3, **small)
    digest = "sha256:" + hashlib.sha256((tmp_path / "vit.npz").read_bytes()).hexdigest()
    settings = dict(backbone="vit-b32", backbone_weights=str(tmp_path / "vit.npz"), vit_implementation=implementation)
    with pytest.raises(ValueError, match=r"checksum mismatch for .*vit.npz: expected sha256 0{64}"):
        CaptionModel(_config(**settings, backbone_weights_hash="sha256:" + "0" * 64))
    model = CaptionModel(_config(**settings, backbone_weights_hash=digest))
    tokens = ops.convert_to_numpy(model.backbone_features(np.zeros((1, 32, 32, 3), "float32")))
    assert tokens.shape == (1, 16, 16)
    cls = [w for w in model.encoder.weights if tuple(w.shape) == (1, 1, 16)]
    np.testing.assert_allclose(ops.convert_to_numpy(cls[0]), arrays["cls"], rtol=1e-6)  # the file's weights
