"""The image encoder: a Vision Transformer built from scratch, or a pretrained ViT-B backbone (chapter 4).

Both turn images ``(batch, height, width, 3)`` with values in [0, 1] into one vector per patch,
``(batch, num_patches, model_dim)``: the sequence the caption decoder attends to.

The layers are **pre-norm** (layer norm *before* attention and feed-forward, inside the residual
branch, plus one final layer norm), as in ViT: the residual path stays an identity, so training is
far less sensitive to the learning-rate warm-up that post-norm depends on (Xiong et al., 2020). A
short warm-up still helps Adam's first steps, whose second-moment estimates rest on a few noisy
gradients; chapter 5 keeps the paper's warm-up schedule.

References: Dosovitskiy et al., "An image is worth 16x16 words" (2020); Vaswani et al.,
"Attention is all you need" (2017); Xiong et al., "On layer normalization in the Transformer
architecture" (2020).
"""
import importlib

import keras
from keras import ops

from minicap.attention import MultiHeadAttention
from minicap.config import PATCH_STEMS
from minicap.patches import Patches, check_image_shape
from minicap.positional import sinusoidal_encoding_2d

__all__ = ["FeedForward", "EncoderLayer", "VisionEncoder", "make_patch_stem", "patch_stem_class", "NORM_EPSILON"]

#: Layer norm epsilon of ViT (and of vit-keras), in every layer norm of the encoder and decoder.
NORM_EPSILON = 1e-6

@keras.saving.register_keras_serializable(package="minicap")
class FeedForward(keras.layers.Layer):
    """The position-wise feed-forward block: Dense(mlp_dim, GELU) -> dropout -> Dense(model_dim).

    Args:
        model_dim: input and output width.
        mlp_dim: hidden width (usually 4 × ``model_dim``).
        dropout: dropout rate after the hidden layer (training only).

    Call arguments:
        inputs: ``(batch, length, model_dim)``.

    Example:
        >>> block = FeedForward(model_dim=32, mlp_dim=128)
        >>> tuple(block(keras.random.normal((2, 16, 32))).shape)
        (2, 16, 32)
    """

    def __init__(self, model_dim, mlp_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.model_dim = model_dim
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.hidden = keras.layers.Dense(mlp_dim, activation="gelu", dtype=self.dtype_policy, name="hidden")
        self.hidden_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        self.projection = keras.layers.Dense(model_dim, dtype=self.dtype_policy, name="projection")

    def build(self, input_shape):
        self.hidden.build(input_shape)
        self.projection.build(tuple(input_shape[:-1]) + (self.mlp_dim,))

    def call(self, inputs, training=None):
        return self.projection(self.hidden_dropout(self.hidden(inputs), training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.model_dim,)

    def get_config(self):
        config = super().get_config()
        config.update({"model_dim": self.model_dim, "mlp_dim": self.mlp_dim, "dropout": self.dropout})
        return config


@keras.saving.register_keras_serializable(package="minicap")
class EncoderLayer(keras.layers.Layer):
    """One pre-norm Transformer encoder layer: self-attention, then feed-forward, each residual.

    ``x = x + dropout(attention(norm(x)))``, then ``x = x + dropout(feed_forward(norm(x)))``.

    Args:
        model_dim: width ``d`` of the patch vectors.
        num_heads: attention heads (``model_dim`` must be divisible by it).
        mlp_dim: hidden width of the feed-forward block.
        dropout: dropout rate on attention weights and on both residual branches.

    Call arguments:
        inputs: ``(batch, patches, model_dim)``.
        attention_mask: optional boolean ``(batch, patches, patches)``, True = may attend.
        return_attention_scores: also return the weights ``(batch, heads, patches, patches)``.
        training: enables dropout.

    Returns:
        ``(batch, patches, model_dim)``, or ``(output, weights)``.

    Example:
        >>> layer = EncoderLayer(model_dim=32, num_heads=4, mlp_dim=128)
        >>> tuple(layer(keras.random.normal((2, 16, 32))).shape)
        (2, 16, 32)
    """

    def __init__(self, model_dim, num_heads, mlp_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.model_dim = model_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        policy = self.dtype_policy
        self.attention_norm = keras.layers.LayerNormalization(epsilon=NORM_EPSILON, dtype=policy, name="attention_norm")
        self.attention = MultiHeadAttention(model_dim, num_heads, dropout=dropout, dtype=policy, name="attention")
        self.feed_forward_norm = keras.layers.LayerNormalization(
            epsilon=NORM_EPSILON, dtype=policy, name="feed_forward_norm")
        self.feed_forward = FeedForward(model_dim, mlp_dim, dropout, dtype=policy, name="feed_forward")
        self.residual_dropout = keras.layers.Dropout(dropout, dtype=policy)

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.model_dim:
            raise ValueError(
                f"EncoderLayer with model_dim {self.model_dim} got inputs of width {input_shape[-1]} "
                f"(shape {tuple(input_shape)}); the last axis must be {self.model_dim}"
            )
        for sublayer in (self.attention_norm, self.feed_forward_norm, self.feed_forward):
            sublayer.build(input_shape)
        self.attention.build(input_shape, input_shape)

    def call(self, inputs, attention_mask=None, return_attention_scores=False, training=None):
        normed = self.attention_norm(inputs)
        attended = self.attention(normed, normed, attention_mask=attention_mask,
                                  return_attention_scores=return_attention_scores, training=training)
        attended, weights = attended if return_attention_scores else (attended, None)
        x = inputs + self.residual_dropout(attended, training=training)
        x = x + self.residual_dropout(self.feed_forward(self.feed_forward_norm(x), training=training),
                                      training=training)
        return (x, weights) if return_attention_scores else x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"model_dim": self.model_dim, "num_heads": self.num_heads,
                       "mlp_dim": self.mlp_dim, "dropout": self.dropout})
        return config


def patch_stem_class(stem):
    """The layer class of the patch stem named ``stem`` (a key of ``minicap.config.PATCH_STEMS``), imported from
    the module that defines it: chapter 1's ``PatchEncoder`` and ``ConvPatchEncoder``, or the appendix's
    ``ColourShapePatchEncoder``, which this module does not import otherwise. Each stem class says what it reads
    (``reads_patches``: the flattened patches, or the whole image) and how (``centred``: pixels in [-1, 1])."""
    if stem not in PATCH_STEMS:
        raise ValueError(f"patch_stem must be one of {list(PATCH_STEMS)}, got {stem!r}")
    module, name = PATCH_STEMS[stem]
    return getattr(importlib.import_module(module), name)


def make_patch_stem(stem, image_size, patch_size, model_dim, hidden_dim=0, **kwargs):
    """The patch-embedding layer ``stem`` (a key of ``PATCH_STEMS``) for ``image_size`` images cut into
    ``patch_size`` patches, of width ``model_dim``; ``hidden_dim`` is the conv stem's ``channels`` or the
    colour-shape stem's ``hidden_dim`` (unused by the linear one); ``kwargs`` go to the layer (name, dtype)."""
    return patch_stem_class(stem).from_settings(image_size, patch_size, model_dim, hidden_dim, **kwargs)


@keras.saving.register_keras_serializable(package="minicap")
class VisionEncoder(keras.layers.Layer):
    """A Vision Transformer from scratch: patches -> patch encoder (+ positions) -> N encoder layers.

    Unlike an image classifier it keeps no class token: the caption decoder attends to every
    patch vector, so the output is the whole sequence.

    Args:
        image_size: side of the square input images, divisible by ``patch_size``.
        patch_size: side of a square patch, in pixels.
        model_dim: width ``d`` of the patch vectors.
        num_layers: number of encoder layers (the depth).
        num_heads: attention heads per layer.
        mlp_dim: hidden width of the feed-forward blocks.
        dropout: dropout rate inside the layers and on the patch embeddings.
        patch_stem: a key of ``PATCH_STEMS``: ``"linear"`` (ViT's ``PatchEncoder``: a Dense projection of the
            raw pixels), ``"conv"`` (``ConvPatchEncoder``: a convolutional stem) or ``"colour-shape"``
            (``ColourShapePatchEncoder``: a shape vector plus a colour vector, the appendix's).
        output_positions: add the patch grid's 2-D sinusoidal encoding to the output too, where the
            decoder's cross-attention reads it. Positions added only to the input fade through the
            layers (the content grows, the position does not); relations such as "left of" need
            them. DETR (Carion et al., 2020) adds them at its decoder's cross-attention likewise.
            ``model_dim`` must then be divisible by 4.
        stem_hidden_dim: the conv stem's ``channels`` or the colour-shape stem's ``hidden_dim`` (0: their default).

    Call arguments:
        images: ``(batch, image_size, image_size, 3)`` floats in [0, 1] (rescaled to [-1, 1] inside
            for the linear stem).
        return_attention_scores: also return the list of each layer's weights
            ``(batch, heads, patches, patches)``.
        training: enables dropout.

    Returns:
        ``(batch, num_patches, model_dim)`` with ``num_patches = (image_size / patch_size)²``.

    Example:
        >>> encoder = VisionEncoder(image_size=64, patch_size=16, model_dim=32,
        ...                         num_layers=2, num_heads=4, mlp_dim=64)
        >>> tuple(encoder(keras.random.uniform((2, 64, 64, 3))).shape)  # 4 x 4 patches
        (2, 16, 32)
    """

    def __init__(self, image_size, patch_size, model_dim, num_layers, num_heads, mlp_dim, dropout=0.0,
                 patch_stem="linear", output_positions=False, stem_hidden_dim=0, **kwargs):
        super().__init__(**kwargs)
        if num_layers < 0:
            raise ValueError(f"num_layers must be 0 or more, got {num_layers}")
        grid = check_image_shape((None, image_size, image_size, 3), patch_size)
        self.image_size = image_size
        self.patch_size = patch_size
        self.model_dim = model_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.patch_stem = patch_stem
        self.output_positions = bool(output_positions)
        self.stem_hidden_dim = stem_hidden_dim
        if self.output_positions and model_dim % 4:
            raise ValueError(f"output_positions needs model_dim divisible by 4 (2-D sinusoidal encoding), got {model_dim}")
        self.num_patches = grid[0] * grid[1]
        policy = self.dtype_policy
        self.patches = Patches(patch_size, dtype=policy, name="patches")
        self.patch_encoder = make_patch_stem(patch_stem, image_size, patch_size, model_dim, stem_hidden_dim,
                                             dtype=policy, name="patch_encoder")
        self.embedding_dropout = keras.layers.Dropout(dropout, dtype=policy)
        self.encoder_layers = [
            EncoderLayer(model_dim, num_heads, mlp_dim, dropout, dtype=policy, name=f"encoder_layer_{i}")
            for i in range(num_layers)
        ]
        self.final_norm = keras.layers.LayerNormalization(epsilon=NORM_EPSILON, dtype=policy, name="final_norm")

    def build(self, input_shape):
        self._check_images(input_shape)
        sequence_shape = (input_shape[0], self.num_patches, self.model_dim)
        reads_patches = type(self.patch_encoder).reads_patches
        stem_input = self.patches.compute_output_shape(input_shape) if reads_patches else input_shape
        sublayers = [(self.patch_encoder, stem_input)]
        sublayers += [(layer, sequence_shape) for layer in self.encoder_layers + [self.final_norm]]
        for sublayer, shape in sublayers:
            if not sublayer.built:  # a part may have been called on its own already
                sublayer.build(shape)

    def _check_images(self, shape):
        if len(shape) != 4 or tuple(shape[1:3]) != (self.image_size, self.image_size):
            raise ValueError(
                f"VisionEncoder built for {self.image_size}x{self.image_size} images got input of shape "
                f"{tuple(shape)}; expected (batch, {self.image_size}, {self.image_size}, 3)"
            )

    def call(self, images, return_attention_scores=False, training=None):
        self._check_images(ops.shape(images))
        images = ops.cast(images, self.compute_dtype)
        stem = type(self.patch_encoder)
        x = images * 2.0 - 1.0 if stem.centred else images  # [0, 1] -> [-1, 1] for the stems that want it
        x = self.patch_encoder(self.patches(x) if stem.reads_patches else x)  # (B, N, d)
        x = self.embedding_dropout(x, training=training)
        all_weights = []
        for layer in self.encoder_layers:
            if return_attention_scores:
                x, weights = layer(x, return_attention_scores=True, training=training)
                all_weights.append(weights)
            else:
                x = layer(x, training=training)
        x = self.final_norm(x)
        if self.output_positions:
            grid = self.image_size // self.patch_size
            x = x + ops.cast(sinusoidal_encoding_2d(grid, grid, self.model_dim), x.dtype)[None]  # (B, N, d)
        return (x, all_weights) if return_attention_scores else x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_patches, self.model_dim)

    def get_config(self):
        config = super().get_config()
        config.update({
            "image_size": self.image_size, "patch_size": self.patch_size, "model_dim": self.model_dim,
            "num_layers": self.num_layers, "num_heads": self.num_heads, "mlp_dim": self.mlp_dim,
            "dropout": self.dropout, "patch_stem": self.patch_stem, "output_positions": self.output_positions,
            "stem_hidden_dim": self.stem_hidden_dim,
        })
        return config
