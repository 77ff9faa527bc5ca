"""Positional encodings: known values, relative-position structure, 2-D grids, learned table, saving."""
import math

import keras
import numpy as np
import pytest
from keras import ops

from tests.support.layer_checks import check_layer
from minicap.positional import (
    PositionEmbedding, SinusoidalPositionEncoding, sinusoidal_encoding, sinusoidal_encoding_2d,
)


def numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def test_sinusoidal_known_values():
    encoding = numpy(sinusoidal_encoding(3, 4))
    assert encoding.shape == (3, 4) and encoding.dtype == np.float32
    # dim 4: frequencies 1 and 1/100; columns sin(p), cos(p), sin(p/100), cos(p/100).
    expected = [[0.0, 1.0, 0.0, 1.0],
                [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)],
                [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)]]
    np.testing.assert_allclose(encoding, expected, atol=1e-6)


def test_sinusoidal_matches_the_paper_formula():
    dim, positions = 16, np.arange(50)
    encoding = numpy(sinusoidal_encoding(50, dim))
    i = np.arange(dim // 2)
    angles = positions[:, None] / 10000.0 ** (2 * i / dim)
    np.testing.assert_allclose(encoding[:, 0::2], np.sin(angles), atol=1e-4)
    np.testing.assert_allclose(encoding[:, 1::2], np.cos(angles), atol=1e-4)


def test_sinusoidal_positions_tensor_selects_rows():
    full = numpy(sinusoidal_encoding(10, 8))
    np.testing.assert_allclose(numpy(sinusoidal_encoding(np.array([7, 2]), 8)), full[[7, 2]], atol=1e-6)


def test_dot_product_depends_only_on_the_offset():
    encoding = numpy(sinusoidal_encoding(200, 64)).astype("float64")
    for offset in (0, 1, 5, 20):
        dots = [encoding[p] @ encoding[p + offset] for p in (0, 17, 60, 150)]
        np.testing.assert_allclose(dots, dots[0], atol=1e-3)
    # Each pair (sin, cos) contributes cos(w k): the dot product is sum_i cos(w_i k) and peaks at k = 0.
    assert encoding[50] @ encoding[50] == pytest.approx(32.0, abs=1e-3)
    assert encoding[50] @ encoding[51] < encoding[50] @ encoding[50]


@pytest.mark.parametrize("dim, match", [(7, "needs dim divisible by 2, got dim=7"),
                                        (0, "needs dim divisible by 2, got dim=0")])
def test_sinusoidal_rejects_odd_dim(dim, match):
    with pytest.raises(ValueError, match=match):
        sinusoidal_encoding(5, dim)


def test_sinusoidal_rejects_empty_positions():
    with pytest.raises(ValueError, match="positions must be at least 1"):
        sinusoidal_encoding(0, 8)


def test_2d_encoding_shares_row_and_column_halves():
    height, width, dim = 3, 4, 8
    encoding = numpy(sinusoidal_encoding_2d(height, width, dim))
    assert encoding.shape == (height * width, dim)
    rows, cols = numpy(sinusoidal_encoding(height, dim // 2)), numpy(sinusoidal_encoding(width, dim // 2))
    for patch in range(height * width):
        row, col = divmod(patch, width)  # row-major patch order
        np.testing.assert_allclose(encoding[patch], np.concatenate([rows[row], cols[col]]), atol=1e-6)


def test_2d_encoding_rejects_dim_not_divisible_by_4():
    with pytest.raises(ValueError, match="needs dim divisible by 4, got dim=6"):
        sinusoidal_encoding_2d(2, 2, 6)


def test_sinusoidal_layer_start_index_and_dtype():
    keras.mixed_precision.set_global_policy("mixed_float16")  # conftest restores float32
    layer = SinusoidalPositionEncoding()
    inputs = np.zeros((2, 3, 8), "float32")
    output = numpy(layer(inputs, start_index=4))
    assert output.shape == (2, 3, 8) and output.dtype == np.float16
    np.testing.assert_allclose(output[1], numpy(sinusoidal_encoding(10, 8))[4:7], atol=1e-3)


def test_sinusoidal_layer_grid_and_errors():
    layer = SinusoidalPositionEncoding(grid=(2, 3))
    np.testing.assert_allclose(numpy(layer(np.zeros((1, 6, 8), "float32")))[0],
                               numpy(sinusoidal_encoding_2d(2, 3, 8)), atol=1e-6)
    with pytest.raises(ValueError, match="input length 5 does not match the grid 2x3"):
        layer(np.zeros((1, 5, 8), "float32"))
    with pytest.raises(ValueError, match=r"grid must be None or \(height, width\)"):
        SinusoidalPositionEncoding(grid=(2, 0))


@pytest.mark.parametrize("grid", [None, (2, 4)])
def test_sinusoidal_layer_config_and_saving(tmp_path, grid):
    layer = SinusoidalPositionEncoding(grid=grid, base=500.0)
    output = check_layer(layer, [np.zeros((2, 8, 12), "float32")], tmp_path)
    expected = sinusoidal_encoding(8, 12, 500.0) if grid is None else sinusoidal_encoding_2d(2, 4, 12, 500.0)
    np.testing.assert_allclose(output[0], numpy(expected), atol=1e-6)


def test_position_embedding_slices_its_table():
    layer = PositionEmbedding(sequence_length=10)
    output = numpy(layer(np.zeros((2, 4, 6), "float32"), start_index=3))
    table = numpy(layer.embeddings)
    assert table.shape == (10, 6)
    np.testing.assert_array_equal(output[0], table[3:7])
    np.testing.assert_array_equal(output[1], table[3:7])


def test_position_embedding_rejects_too_many_positions():
    layer = PositionEmbedding(sequence_length=5)
    with pytest.raises(ValueError, match=r"positions 0 \.\. 5 .*exceed the 5 learned positions"):
        layer(np.zeros((1, 6, 4), "float32"))
    with pytest.raises(ValueError, match=r"start_index 3\) exceed the 5 learned positions"):
        layer(np.zeros((1, 3, 4), "float32"), start_index=3)
    with pytest.raises(ValueError, match="sequence_length must be at least 1, got 0"):
        PositionEmbedding(sequence_length=0)


def test_position_embedding_config_and_saving(tmp_path):
    layer = PositionEmbedding(sequence_length=12, initializer="random_normal")
    output = check_layer(layer, [np.zeros((2, 12, 8), "float32")], tmp_path)
    np.testing.assert_array_equal(output[0], numpy(layer.embeddings))
    assert layer.get_config()["sequence_length"] == 12
