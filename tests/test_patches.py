import numpy as np
import pytest
import keras

from minicap.composition import ColourShapePatchEncoder
from minicap.patches import ConvPatchEncoder, PatchEncoder, Patches
from tests.support.layer_checks import check_layer


def test_patches_known_values():
    # A 4x4 image with 2 channels: pixel (y, x, c) = 100*y + 10*x + c, cut into 2x2 patches.
    y, x, c = np.meshgrid(np.arange(4), np.arange(4), np.arange(2), indexing="ij")
    image = (100 * y + 10 * x + c).astype("float32")[None]
    patches = keras.ops.convert_to_numpy(Patches(2)(image))
    assert patches.shape == (1, 4, 8)
    # Patch 1 is the top-right square: rows 0-1, columns 2-3, flattened row by row, channels innermost.
    np.testing.assert_array_equal(patches[0, 1], [20, 21, 30, 31, 120, 121, 130, 131])
    # Patch 2 is the bottom-left square.
    np.testing.assert_array_equal(patches[0, 2], [200, 201, 210, 211, 300, 301, 310, 311])


def test_patches_match_slicing_on_the_seed_example():
    images = np.random.default_rng(0).random((2, 128, 128, 3)).astype("float32")
    patches = keras.ops.convert_to_numpy(Patches(16)(images))
    assert patches.shape == (2, 64, 768)
    row, col = divmod(13, 8)
    np.testing.assert_array_equal(patches[1, 13], images[1, row * 16:(row + 1) * 16, col * 16:(col + 1) * 16].reshape(-1))


def test_non_square_images():
    images = np.zeros((1, 32, 48, 3), "float32")
    assert tuple(Patches(16)(images).shape) == (1, 6, 768)


def test_patch_encoder_shape_and_positions():
    patches = np.zeros((2, 64, 768), "float32")
    encoded = keras.ops.convert_to_numpy(PatchEncoder(64, 512)(patches))
    assert encoded.shape == (2, 64, 512)
    # Zero patches project to the bias (zero), so what remains is the position embedding: distinct per patch.
    assert np.abs(encoded[0, 0] - encoded[0, 1]).max() > 0
    np.testing.assert_allclose(encoded[0], encoded[1])


def test_patches_round_trip(tmp_path):
    check_layer(Patches(4, name="patches"), [np.random.rand(2, 8, 8, 3).astype("float32")], tmp_path)


def test_patch_encoder_round_trip(tmp_path):
    check_layer(PatchEncoder(4, 8, name="encoder"), [np.random.rand(2, 4, 48).astype("float32")], tmp_path)


def test_model_with_both_layers_saves_and_loads(tmp_path):
    inputs = keras.Input((32, 32, 3))
    outputs = PatchEncoder(16, 24)(Patches(8)(inputs))
    model = keras.Model(inputs, outputs)
    images = np.random.rand(3, 32, 32, 3).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(images)), keras.ops.convert_to_numpy(model(images)))


def test_image_size_not_divisible_by_patch_size():
    with pytest.raises(ValueError, match="image height 100 is not divisible by patch size 16"):
        Patches(16)(np.zeros((1, 100, 96, 3), "float32"))
    with pytest.raises(ValueError, match="image width 100 is not divisible by patch size 16"):
        Patches(16)(np.zeros((1, 96, 100, 3), "float32"))


def test_input_must_be_4d():
    with pytest.raises(ValueError, match=r"3-D input of shape \(128, 128, 3\).*image\[None\]"):
        Patches(16)(np.zeros((128, 128, 3), "float32"))


@pytest.mark.parametrize("size", [0, -3, 2.5])
def test_bad_patch_size(size):
    with pytest.raises(ValueError, match="patch_size must be a positive integer"):
        Patches(size)


def test_patch_encoder_wrong_number_of_patches():
    with pytest.raises(ValueError, match="built for 64 patches, got 16"):
        PatchEncoder(64, 32)(np.zeros((1, 16, 48), "float32"))


def _scene(shape_mask, colour, background=(0.4, 0.38, 0.42)):
    """A 24x24 image: ``colour`` where ``shape_mask`` is True, ``background`` elsewhere."""
    image = np.empty((24, 24, 3), "float32")
    image[:] = background
    image[shape_mask] = colour
    return image


def _masks():
    yy, xx = np.mgrid[0:24, 0:24] + 0.5
    circle = (xx - 6) ** 2 + (yy - 6) ** 2 <= 16
    square = (np.abs(xx - 6) <= 3.5) & (np.abs(yy - 6) <= 3.5)  # in the same patch as the circle
    return circle, square


@pytest.mark.parametrize("hidden_dim", [0, 16])
def test_colour_shape_encoder_separates_colour_from_shape(hidden_dim):
    circle, square = _masks()
    red, yellow = (0.84, 0.18, 0.16), (0.92, 0.8, 0.16)
    images = np.stack([_scene(circle, red), _scene(circle, yellow), _scene(square, red), _scene(square, yellow)])
    layer = ColourShapePatchEncoder(24, 12, 8, hidden_dim=hidden_dim)
    encoded = keras.ops.convert_to_numpy(layer(images))
    assert encoded.shape == (4, 4, 8)
    foreground = keras.ops.convert_to_numpy(layer.foreground(images))[..., 0]
    # The foreground map is the outline, whatever the colour: ~1 on the object, ~0 on the background.
    np.testing.assert_allclose(foreground[0][circle], 1.0, atol=1e-3)
    np.testing.assert_allclose(foreground[0][~circle], 0.0, atol=1e-3)
    np.testing.assert_allclose(foreground[0], foreground[1], atol=1e-3)
    # So recolouring changes the patch vector by the same amount whatever the shape (colour term
    # only), and reshaping changes it by the same amount whatever the colour (shape term only).
    np.testing.assert_allclose(encoded[1] - encoded[0], encoded[3] - encoded[2], atol=1e-2)
    np.testing.assert_allclose(encoded[2] - encoded[0], encoded[3] - encoded[1], atol=1e-2)
    assert np.abs(encoded[1] - encoded[0]).max() > 1e-2 and np.abs(encoded[2] - encoded[0]).max() > 1e-2


def test_colour_shape_encoder_empty_patches_and_background():
    circle, _ = _masks()
    layer = ColourShapePatchEncoder(24, 12, 8)
    # Patch 0 holds the circle; the other patches are background of two different tints.
    first = keras.ops.convert_to_numpy(layer(_scene(circle, (0.2, 0.3, 0.9))[None]))
    second = keras.ops.convert_to_numpy(layer(_scene(circle, (0.2, 0.3, 0.9), background=(0.3, 0.3, 0.3))[None]))
    np.testing.assert_allclose(first[0, 1:], second[0, 1:], atol=1e-2)  # empty patches ignore the tint
    np.testing.assert_allclose(first[0, 0], second[0, 0], atol=1e-2)  # and so does the object's patch


@pytest.mark.parametrize("hidden_dim", [0, 16])
def test_colour_shape_encoder_round_trip(tmp_path, hidden_dim):
    layer = ColourShapePatchEncoder(24, 12, 8, threshold=0.2, sharpness=30.0, hidden_dim=hidden_dim, name="stem")
    check_layer(layer, [np.random.default_rng(0).random((2, 24, 24, 3)).astype("float32")], tmp_path, atol=1e-5)


def test_colour_shape_encoder_bad_arguments():
    with pytest.raises(ValueError, match="image height 30 is not divisible by patch size 8"):
        ColourShapePatchEncoder(30, 8, 16)
    with pytest.raises(ValueError, match="threshold must be in"):
        ColourShapePatchEncoder(24, 8, 16, threshold=2.0)
    with pytest.raises(ValueError, match="sharpness must be positive"):
        ColourShapePatchEncoder(24, 8, 16, sharpness=0)
    with pytest.raises(ValueError, match="hidden_dim must be an int >= 0"):
        ColourShapePatchEncoder(24, 8, 16, hidden_dim=-1)
    with pytest.raises(ValueError, match=r"built for 24x24 RGB images got input of shape \(1, 32, 32, 3\)"):
        ColourShapePatchEncoder(24, 8, 16)(np.zeros((1, 32, 32, 3), "float32"))


@pytest.mark.parametrize("patch_size, strides", [(8, [2, 2, 2]), (12, [2, 2, 3])])
def test_conv_stem_strides_multiply_to_the_patch_size(patch_size, strides):
    layer = ConvPatchEncoder(48, patch_size, 32)
    assert [conv.strides[0] for conv in layer.convolutions] == strides
    assert [conv.filters for conv in layer.convolutions] == [8, 16, 32]  # doubling up to the model width
    output = layer(np.zeros((2, 48, 48, 3), "float32"))
    assert tuple(output.shape) == (2, (48 // patch_size) ** 2, 32)


def test_conv_stem_patch_order_is_row_major():
    """A pixel seen by one output vector only changes that vector: patch (row 1, column 2) is number 5.

    With "same" padding, an output of three stride-2 3x3 convolutions sees input pixels 8r .. 8r + 14,
    so only pixel 7 of a patch (in each axis) is seen by that patch alone."""
    layer = ConvPatchEncoder(24, 8, 8)
    images = np.zeros((1, 24, 24, 3), "float32")
    changed = images.copy()
    changed[0, 8 + 7, 16 + 7] = 1.0
    difference = np.abs(keras.ops.convert_to_numpy(layer(changed) - layer(images))).sum(-1)[0]
    assert difference.argmax() == 5 and np.count_nonzero(difference > 1e-7) == 1


def test_conv_stem_round_trip(tmp_path):
    layer = ConvPatchEncoder(24, 12, 8, name="conv_stem")
    check_layer(layer, [np.random.default_rng(0).random((2, 24, 24, 3)).astype("float32")], tmp_path, atol=1e-5)


@pytest.mark.parametrize("patch_size", [5, 9, 18])
def test_conv_stem_bad_patch_size(patch_size):
    with pytest.raises(ValueError, match=f"product of 2s and at most one 3.*got {patch_size}"):
        ConvPatchEncoder(90, patch_size, 8)
