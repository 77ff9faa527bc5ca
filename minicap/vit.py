"""A pretrained ViT-B in minicap's own layers, loading the official ViT weights (chapter 4).

:class:`PretrainedViT` is the Vision Transformer of Dosovitskiy et al. (2020) as the official weights
define it, built from the layers of chapters 1-4: a linear patch embedding (``Patches`` and a Dense layer,
which is the official strided convolution), a learned class token prepended to the patches, learned
position embeddings for the ``1 + patches`` positions, pre-norm ``EncoderLayer``s (layer norm epsilon
1e-6, the exact erf GELU) and a final layer norm. :func:`load_official_weights` maps the arrays of an
official ``.npz`` file onto it, checking every shape; a file made for another image size gets its position
embeddings resized, as vit-keras does. Given the same file, it computes what vit-keras's model computes
(the tests compare both on TensorFlow and JAX), with ``keras.ops`` only, so it runs on every backend and
needs no package beyond Keras.

:func:`pretrained_vit` is the one place that chooses between this implementation (``"minicap"``) and
vit-keras's (``"vit-keras"``, :class:`minicap.vit_keras.ViTBackbone`, the article's library).

Reference: Dosovitskiy et al., "An image is worth 16x16 words: Transformers for image recognition at
scale" (2020).
"""
import math
import warnings

import keras
import numpy as np
from keras import ops

from minicap.config import VIT_IMPLEMENTATIONS
from minicap.encoder import NORM_EPSILON, EncoderLayer
from minicap.patches import Patches, check_image_shape
from minicap.positional import PositionEmbedding
from minicap.vit_keras import ViTBackbone
from minicap.vit_weights import check_official_keys, read_weights_file, vit_architecture, weights_file

__all__ = ["PretrainedViT", "pretrained_vit", "load_official_weights", "official_layout", "resize_position_embeddings"]

# The implementations of the pretrained backbone: minicap's own layers, or vit-keras's model.


@keras.saving.register_keras_serializable(package="minicap")
class PretrainedViT(keras.layers.Layer):
    """ViT-B in minicap's layers, for the official pretrained weights; returns every patch token.

    The layer's config holds the architecture only: constructing it never downloads anything. Call
    ``load_weights_from(weights)`` to load pretrained weights (``CaptionModel`` does so when it is created
    from a ``CaptionConfig``); a saved ``.keras`` model restores them from the file.

    Args:
        image_size: side of the square input images, divisible by the patch size.
        variant: ``"vit-b16"`` or ``"vit-b32"``, or ``None`` to give the architecture below.
        freeze: keep the weights fixed, and run without dropout.
        patch_size, hidden_size, num_layers, num_heads, mlp_dim: the architecture when ``variant`` is
            None (small configurations for tests and experiments); each overrides the variant's.
        dropout: dropout rate inside the encoder layers when the ViT is trained.

    Call arguments:
        images: ``(batch, image_size, image_size, 3)`` floats in [0, 1] (mapped to [-1, 1] inside, the
            range the official weights were trained on).
        training: enables dropout (only when not frozen).

    Returns:
        ``(batch, num_patches, hidden_size)``: the patch tokens after the final layer norm, without the
        class token. ``sequence(images)`` returns them with the class token first.

    Example:
        >>> vit = PretrainedViT(64, variant=None, patch_size=16, hidden_size=32,
        ...                     num_layers=2, num_heads=4, mlp_dim=64)  # small, random
        >>> tuple(vit(keras.random.uniform((2, 64, 64, 3))).shape)
        (2, 16, 32)
    """

    def __init__(self, image_size, variant="vit-b32", freeze=True, patch_size=None, hidden_size=None,
                 num_layers=None, num_heads=None, mlp_dim=None, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.architecture = vit_architecture(variant, patch_size=patch_size, hidden_size=hidden_size,
                                             num_layers=num_layers, num_heads=num_heads, mlp_dim=mlp_dim)
        self.image_size = image_size
        self.variant = variant
        self.freeze = freeze
        self.patch_size, self.hidden_size = patch_size, hidden_size
        self.num_layers, self.num_heads, self.mlp_dim = num_layers, num_heads, mlp_dim
        self.dropout = dropout
        arch = self.architecture
        grid = check_image_shape((None, image_size, image_size, 3), arch["patch_size"])
        self.grid = grid[0]
        self.num_patches = grid[0] * grid[1]
        self.output_dim = arch["hidden_size"]
        policy = self.dtype_policy
        self.patches = Patches(arch["patch_size"], dtype=policy, name="patches")
        self.patch_embedding = keras.layers.Dense(arch["hidden_size"], dtype=policy, name="patch_embedding")
        self.position_embedding = PositionEmbedding(
            1 + self.num_patches, initializer=keras.initializers.RandomNormal(stddev=0.02), dtype=policy,
            name="position_embedding")
        self.encoder_layers = [
            EncoderLayer(arch["hidden_size"], arch["num_heads"], arch["mlp_dim"], dropout, dtype=policy,
                         name=f"encoder_layer_{i}")
            for i in range(arch["num_layers"])
        ]
        self.final_norm = keras.layers.LayerNormalization(epsilon=NORM_EPSILON, dtype=policy, name="final_norm")
        self.trainable = not freeze

    def build(self, input_shape):
        width = self.output_dim
        sequence_shape = (input_shape[0], 1 + self.num_patches, width)
        self.patch_embedding.build(self.patches.compute_output_shape(input_shape))
        self.class_token = self.add_weight(name="class_token", shape=(1, 1, width), initializer="zeros")
        self.position_embedding.build(sequence_shape)
        for layer in self.encoder_layers + [self.final_norm]:
            layer.build(sequence_shape)

    def _check_images(self, shape):
        if len(shape) != 4 or tuple(shape[1:3]) != (self.image_size, self.image_size):
            raise ValueError(f"PretrainedViT built for {self.image_size}x{self.image_size} images got input of "
                             f"shape {tuple(shape)}; expected (batch, {self.image_size}, {self.image_size}, 3)")

    def sequence(self, images, training=None):
        """The whole output sequence, ``(batch, 1 + num_patches, hidden_size)``: the class token, then the
        patch tokens, after the final layer norm."""
        self._check_images(ops.shape(images))
        training = False if self.freeze else training
        pixels = ops.cast(images, self.compute_dtype) * 2.0 - 1.0  # [0, 1] -> [-1, 1]
        x = self.patch_embedding(self.patches(pixels))  # (B, N, D)
        batch = ops.shape(x)[0]
        token = ops.broadcast_to(ops.cast(self.class_token, x.dtype), (batch, 1, self.output_dim))  # (B, 1, D)
        x = ops.concatenate([token, x], axis=1)  # (B, 1 + N, D)
        x = x + self.position_embedding(x)
        for layer in self.encoder_layers:
            x = layer(x, training=training)
        return self.final_norm(x)

    def call(self, images, training=None):
        return self.sequence(images, training=training)[:, 1:]  # (B, N, D): the class token dropped

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_patches, self.output_dim)

    def load_weights_from(self, weights="imagenet21k+imagenet2012", file_hash=None):
        """Load pretrained weights: a name in ``VIT_WEIGHTS`` (found or downloaded by
        ``minicap.vit_weights.weights_file``, checked against ``file_hash`` when given) or the path of a
        local ``.npz`` file in the official format."""
        load_official_weights(self, weights_file(weights, self.variant, file_hash=file_hash))

    def get_config(self):
        config = super().get_config()
        config.update({
            "image_size": self.image_size, "variant": self.variant, "freeze": self.freeze,
            "patch_size": self.patch_size, "hidden_size": self.hidden_size, "num_layers": self.num_layers,
            "num_heads": self.num_heads, "mlp_dim": self.mlp_dim, "dropout": self.dropout,
        })
        return config


def official_layout(vit):
    """``[(key, official shape, variable)]`` for every weight of a built ``PretrainedViT``: the arrays
    of an official ``.npz`` file it needs, their shapes there, and where each one goes."""
    arch = vit.architecture
    size, width, heads, mlp = arch["patch_size"], arch["hidden_size"], arch["num_heads"], arch["mlp_dim"]
    head_width = width // heads

    def norm(prefix, layer):
        return [(f"{prefix}/scale", (width,), layer.gamma), (f"{prefix}/bias", (width,), layer.beta)]

    def dense(prefix, layer, kernel_shape, bias_shape):
        return [(f"{prefix}/kernel", kernel_shape, layer.kernel), (f"{prefix}/bias", bias_shape, layer.bias)]

    layout = dense("embedding", vit.patch_embedding, (size, size, 3, width), (width,))  # a Conv2D kernel
    layout += [("cls", (1, 1, width), vit.class_token),
               ("Transformer/posembed_input/pos_embedding", (1, 1 + vit.num_patches, width),
                vit.position_embedding.embeddings)]
    for index, layer in enumerate(vit.encoder_layers):
        block = f"Transformer/encoderblock_{index}"
        attention = f"{block}/MultiHeadDotProductAttention_1"
        layout += norm(f"{block}/LayerNorm_0", layer.attention_norm)
        for name, projection in (("query", layer.attention.query_dense), ("key", layer.attention.key_dense),
                                 ("value", layer.attention.value_dense)):
            layout += dense(f"{attention}/{name}", projection, (width, heads, head_width), (heads, head_width))
        layout += dense(f"{attention}/out", layer.attention.output_dense, (heads, head_width, width), (width,))
        layout += norm(f"{block}/LayerNorm_2", layer.feed_forward_norm)
        layout += dense(f"{block}/MlpBlock_3/Dense_0", layer.feed_forward.hidden, (width, mlp), (mlp,))
        layout += dense(f"{block}/MlpBlock_3/Dense_1", layer.feed_forward.projection, (mlp, width), (width,))
    return layout + norm("Transformer/encoder_norm", vit.final_norm)


def resize_position_embeddings(table, grid):
    """Resize an official position table ``(1, 1 + g*g, width)`` to ``(1, 1 + grid*grid, width)``.

    The class token's row is kept; the ``g x g`` grid of patch positions is resized by linear
    interpolation with the corners aligned (what vit-keras does with ``scipy.ndimage.zoom(order=1)``).

    Example:
        >>> table = np.zeros((1, 1 + 7 * 7, 768), "float32")  # ViT-B/32, 224 pixels
        >>> resize_position_embeddings(table, grid=12).shape   # at 384 pixels: 12 x 12
        (1, 145, 768)
    """
    token, cells = table[:, :1], table[0, 1:]
    old = math.isqrt(cells.shape[0])
    if old * old != cells.shape[0]:
        raise ValueError(f"position table of shape {table.shape} does not hold a square grid of patches")

    def interpolation(new):  # (new, old): each new position as a mix of its two old neighbours
        positions = np.linspace(0.0, old - 1.0, new) if new > 1 else np.zeros(1)
        low = np.floor(positions).astype(int)
        high = np.minimum(low + 1, old - 1)
        matrix = np.zeros((new, old))
        np.add.at(matrix, (np.arange(new), low), 1.0 - (positions - low))
        np.add.at(matrix, (np.arange(new), high), positions - low)
        return matrix

    weights = interpolation(grid)
    cells = np.einsum("ia,jb,abw->ijw", weights, weights, cells.reshape(old, old, -1))  # (grid, grid, width)
    return np.concatenate([token, cells.reshape(1, grid * grid, -1).astype(table.dtype)], axis=1)


def load_official_weights(vit, path):
    """Load an official ViT ``.npz`` file into a ``PretrainedViT``; every array is checked first.

    Raises a ValueError naming the file, the key and both shapes when an array is missing or has
    another shape, or when the file has another number of encoder blocks; nothing is assigned then.
    The classifier's arrays (``head/*``, ``pre_logits/*``) are not used: the backbone ends before them.
    """
    if not vit.built:
        vit.build((None, vit.image_size, vit.image_size, 3))
    arrays = read_weights_file(path)
    check_official_keys(arrays, vit.architecture, path)
    values = []
    for key, shape, variable in official_layout(vit):
        if key not in arrays:
            raise ValueError(f"{path} has no array {key!r}: not an official ViT weights file for this "
                             f"architecture ({vit.architecture})")
        array = arrays[key]
        if key.endswith("pos_embedding") and array.shape != shape and array.shape[::2] == shape[::2]:
            warnings.warn(f"resizing position embeddings of {path} from {array.shape[1] - 1} to "
                          f"{shape[1] - 1} patches (another image size than the file's)", UserWarning)
            array = resize_position_embeddings(array, vit.grid)
        if array.shape != shape:
            raise ValueError(f"{path}: array {key!r} has shape {array.shape}; this ViT needs {shape} "
                             f"(architecture {vit.architecture}, image size {vit.image_size})")
        values.append((variable, array.reshape(tuple(variable.shape))))
    for variable, value in values:
        variable.assign(value.astype(variable.dtype))


def pretrained_vit(image_size, variant="vit-b32", implementation="minicap", freeze=True, **kwargs):
    """The pretrained ViT backbone of ``implementation``, with random weights until ``load_weights_from``.

    Args:
        image_size, variant, freeze: as ``PretrainedViT`` and ``ViTBackbone`` take them.
        implementation: ``"minicap"`` (:class:`PretrainedViT`, minicap's layers, needs nothing but Keras)
            or ``"vit-keras"`` (:class:`minicap.vit_keras.ViTBackbone`, the article's library, installed
            with the ``vit`` extra). Both load the same official weights and compute the same features.
        **kwargs: passed on to the layer (``dtype``, ``name``, the architecture of ``variant=None``).

    Returns:
        A layer mapping images ``(batch, image_size, image_size, 3)`` in [0, 1] to its patch tokens
        ``(batch, num_patches, hidden_size)``, as :class:`PretrainedViT` does.
    """
    layers = {"minicap": PretrainedViT, "vit-keras": ViTBackbone}
    if implementation not in layers:
        raise ValueError(f"ViT implementation {implementation!r} is not one of {list(VIT_IMPLEMENTATIONS)}")
    return layers[implementation](image_size, variant=variant, freeze=freeze, **kwargs)
