"""Positional encodings: sinusoidal (fixed) and learned, for token sequences and patch grids (chapter 2).

Attention is blind to order: permuting the keys permutes nothing in the output but the weights.
A position signal is added to each embedding so that the model can tell "first" from "last" and
"left" from "right".

Reference: Vaswani et al., "Attention is all you need" (2017), section 3.5.
"""
import math
import numbers

import keras
from keras import ops

__all__ = ["sinusoidal_encoding", "sinusoidal_encoding_2d", "SinusoidalPositionEncoding", "PositionEmbedding"]


def _check_dim(dim, multiple, what):
    if dim < multiple or dim % multiple:
        raise ValueError(
            f"{what} needs dim divisible by {multiple}, got dim={dim} "
            f"(e.g. {max(multiple, dim - dim % multiple)})"
        )


def sinusoidal_encoding(positions, dim, base=10000.0):
    """The fixed encoding of the paper: PE[p, 2i] = sin(p / base^(2i/dim)), PE[p, 2i+1] = cos(...).

    Args:
        positions: an int (meaning positions ``0 .. positions-1``) or a 1-D tensor of positions;
            a tensor lets cached decoding ask for the encoding of position ``t`` alone.
        dim: encoding width, even.
        base: the wavelength scale; wavelengths run from 2π to ``base``·2π.

    Returns:
        float32 tensor ``(length, dim)``.

    Example:
        >>> table = keras.ops.convert_to_numpy(sinusoidal_encoding(10, 16))  # (10, 16)
        >>> table.shape, table[0, :4].tolist()
        ((10, 16), [0.0, 1.0, 0.0, 1.0])
    """
    _check_dim(dim, 2, "sinusoidal_encoding")
    if isinstance(positions, numbers.Integral):
        if positions < 1:
            raise ValueError(f"positions must be at least 1 (or a 1-D tensor), got {positions}")
        positions = ops.arange(int(positions))
    positions = ops.cast(ops.convert_to_tensor(positions), "float32")[:, None]  # (T, 1)
    frequencies = ops.exp(
        ops.arange(0, dim, 2, dtype="float32") * (-math.log(base) / dim)
    )[None, :]  # (1, dim/2)
    angles = positions * frequencies  # (T, dim/2)
    # Interleave sin and cos so that column 2i is a sine and column 2i+1 its cosine.
    encoding = ops.stack([ops.sin(angles), ops.cos(angles)], axis=-1)  # (T, dim/2, 2)
    return ops.reshape(encoding, (-1, dim))


def sinusoidal_encoding_2d(height, width, dim, base=10000.0):
    """2-D sinusoidal encoding of a ``height`` × ``width`` patch grid, in row-major patch order.

    Half of the channels encode the row, the other half the column, so patches in the same
    row share the first half of their encoding.

    Returns:
        float32 tensor ``(height * width, dim)``; ``dim`` must be divisible by 4.

    Example:
        >>> tuple(sinusoidal_encoding_2d(4, 4, 16).shape)  # a row per patch of a 4 x 4 grid
        (16, 16)
    """
    _check_dim(dim, 4, "sinusoidal_encoding_2d")
    rows = sinusoidal_encoding(height, dim // 2, base)  # (H, dim/2)
    cols = sinusoidal_encoding(width, dim // 2, base)  # (W, dim/2)
    rows = ops.repeat(rows, width, axis=0)  # (H*W, dim/2): row r repeated for each column
    cols = ops.tile(cols, (height, 1))  # (H*W, dim/2)
    return ops.concatenate([rows, cols], axis=-1)


@keras.saving.register_keras_serializable(package="minicap")
class SinusoidalPositionEncoding(keras.layers.Layer):
    """Adds nothing, learns nothing: returns the sinusoidal encoding for its input's positions.

    Args:
        base: wavelength scale (10,000 in the paper).
        grid: ``None`` for 1-D positions (tokens), or ``(height, width)`` for a patch grid, in
            which case the input length must be ``height * width``.

    Call arguments:
        inputs: ``(batch, length, dim)``.
        start_index: position of the first input (cached decoding feeds one token at a time).

    Returns:
        The encoding broadcast to the input's shape, ``(batch, length, dim)``, in its dtype;
        add it to the embeddings.

    Example:
        >>> embeddings = keras.random.normal((2, 5, 16))
        >>> tuple((embeddings + SinusoidalPositionEncoding()(embeddings)).shape)
        (2, 5, 16)
    """

    def __init__(self, base=10000.0, grid=None, **kwargs):
        super().__init__(**kwargs)
        if grid is not None and (len(grid) != 2 or any(int(side) < 1 for side in grid)):
            raise ValueError(f"grid must be None or (height, width) of positive ints, got {grid}")
        self.base = base
        self.grid = tuple(int(side) for side in grid) if grid is not None else None

    def call(self, inputs, start_index=0):
        length, dim = ops.shape(inputs)[-2], ops.shape(inputs)[-1]
        if self.grid is not None:
            height, width = self.grid
            if length != height * width:
                raise ValueError(f"input length {length} does not match the grid {height}x{width}")
            encoding = sinusoidal_encoding_2d(height, width, dim, self.base)
        else:
            positions = ops.arange(length, dtype="int32") + start_index
            encoding = sinusoidal_encoding(positions, dim, self.base)
        return ops.broadcast_to(ops.cast(encoding, inputs.dtype), ops.shape(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"base": self.base, "grid": self.grid})
        return config


@keras.saving.register_keras_serializable(package="minicap")
class PositionEmbedding(keras.layers.Layer):
    """A learned position embedding: one trainable vector per position, up to ``sequence_length``.

    Args:
        sequence_length: the most positions the layer can encode.
        initializer: initializer of the ``(sequence_length, dim)`` table.

    Call arguments:
        inputs: ``(batch, length, dim)`` with ``length <= sequence_length``.
        start_index: position of the first input.

    Returns:
        The embeddings of positions ``start_index .. start_index + length - 1`` broadcast to
        ``(batch, length, dim)``; add them to the inputs.

    Example:
        >>> embeddings = keras.random.normal((2, 5, 16))
        >>> tuple((embeddings + PositionEmbedding(sequence_length=10)(embeddings)).shape)
        (2, 5, 16)
    """

    def __init__(self, sequence_length, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if sequence_length < 1:
            raise ValueError(f"sequence_length must be at least 1, got {sequence_length}")
        self.sequence_length = sequence_length
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, input_shape[-1]),
            initializer=self.initializer,
        )

    def call(self, inputs, start_index=0):
        length, dim = ops.shape(inputs)[-2], ops.shape(inputs)[-1]
        if (isinstance(length, int) and isinstance(start_index, numbers.Integral)
                and start_index + length > self.sequence_length):
            raise ValueError(
                f"positions {start_index} .. {start_index + length - 1} (input length {length}, "
                f"start_index {start_index}) exceed the {self.sequence_length} learned positions"
            )
        table = ops.convert_to_tensor(self.embeddings)
        embeddings = ops.slice(table, (start_index, 0), (length, dim))  # (T, dim)
        return ops.broadcast_to(ops.cast(embeddings, inputs.dtype), ops.shape(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "sequence_length": self.sequence_length,
            "initializer": keras.initializers.serialize(self.initializer),
        })
        return config
