"""Models with known answers, for testing what a caption or an attention map *is*.

- :class:`TableModel` stands in for a ``CaptionModel`` in ``minicap.generate.Generator``: its
  next-token logits are read from a table, by the caption written so far (or by the position), so
  the likeliest caption, the sampling distribution and the greedy caption are known exactly.
- :func:`planted_attention_model` is a real ``CaptionModel`` whose weights are set so that the
  decoder's cross-attention at a position looks at a patch chosen by the token at that position.
"""
import types

import keras
import numpy as np
from keras import ops

from minicap.model import CaptionConfig, CaptionModel


def prefix_code(prefix, vocab_size):
    """The table row of a caption prefix (the words after [START]): 0 for the empty prefix, and
    ``code(prefix + [w]) = code(prefix) * vocab_size + w + 1`` (bijective base-``vocab_size``
    numbering, so distinct prefixes get distinct rows)."""
    code = 0
    for word in prefix:
        code = code * vocab_size + int(word) + 1
    return code


def prefix_rows(vocab_size, max_length):
    """How many table rows the prefixes of up to ``max_length - 1`` words need."""
    return prefix_code([vocab_size - 1] * (max_length - 1), vocab_size) + 1


class TableModel(keras.Model):
    """What ``Generator`` needs of a model (``config``, ``encode``, ``init_cache``, ``decode_step``
    and a full call), with logits read from ``tables``.

    Args:
        tables: float ``(images, rows, vocab)``: ``tables[i, r]`` are the logits after the prefix of
            row ``r`` for an image of kind ``i``.
        max_length: most tokens after [START].
        keyed_by: ``"prefix"``: row ``prefix_code(words so far)``, so every prefix has its own
            logits; ``"position"``: row = number of words so far, whatever they are.

    Images are ``(batch, 1, 1, 3)``; the kind of an image is ``round(10 * red value)``.
    """

    def __init__(self, tables, max_length, keyed_by="prefix", **kwargs):
        super().__init__(**kwargs)
        tables = np.asarray(tables, "float32")
        self.kinds, self.rows, vocab_size = tables.shape
        self.keyed_by = keyed_by
        self.config = types.SimpleNamespace(vocab_size=vocab_size, max_length=max_length, image_size=1)
        self.table = ops.convert_to_tensor(tables.reshape(-1, vocab_size))  # (kinds * rows, V)

    def _next_row(self, row, token, index):
        if self.keyed_by == "position":
            return row + ops.cast(index > 0, "int32")
        extended = ops.minimum(row * self.config.vocab_size + token + 1, self.rows - 1)  # padding past the end
        return ops.where(index > 0, extended, row)  # the token at position 0 is [START]

    def _logits(self, kind, row):
        return ops.take(self.table, kind * self.rows + row, axis=0)  # (..., V)

    def encode(self, images, training=False):
        return ops.cast(ops.round(images[:, 0, 0, 0] * 10.0), "int32")  # (B,) the kind of each image

    def init_cache(self, kind, max_length=None):
        return {"kind": kind, "row": ops.zeros_like(kind)}

    def decode_step(self, tokens, cache, index):
        row = self._next_row(cache["row"], ops.cast(tokens[:, 0], "int32"), index)
        return self._logits(cache["kind"], row)[:, None], {"kind": cache["kind"], "row": row}  # (B, 1, V)

    def call(self, inputs, training=None):
        images, tokens = inputs
        tokens = ops.cast(tokens, "int32")
        kind = self.encode(images)
        row, rows = ops.zeros_like(kind), []
        for index in range(tokens.shape[1]):
            row = self._next_row(row, tokens[:, index], index)
            rows.append(row)
        return self._logits(kind[:, None], ops.stack(rows, axis=1))  # (B, T, V)


def table_images(kinds):
    """Float images ``(len(kinds), 1, 1, 3)`` that a TableModel reads as the given kinds."""
    images = np.zeros((len(kinds), 1, 1, 3), "float32")
    images[:, 0, 0, 0] = np.asarray(kinds) / 10.0
    return images


def planted_attention_model(token_patches, vocab_size, max_length=8, image_size=32, patch_size=8):
    """A ``CaptionModel`` whose cross-attention at position ``t`` peaks on patch
    ``token_patches[tokens[t]]``, for any image.

    How: self-attention adds nothing (zero output projection), so the cross-attention query at
    position ``t`` is a large one-hot embedding of ``token_patches[tokens[t]]`` (the sinusoidal
    position, at most 1 per value, barely moves it); the encoder (no layers, zero pixel projection)
    returns a one-hot vector per patch from its position embedding; and the query and key
    projections are scaled identities. The score of patch ``p`` is then a constant plus about 17
    when ``p`` is the planted patch, so the planted patch takes nearly all the weight.
    """
    num_patches = (image_size // patch_size) ** 2
    config = CaptionConfig(vocab_size=vocab_size, max_length=max_length, image_size=image_size,
                           patch_size=patch_size, model_dim=num_patches, num_heads=1, encoder_layers=0,
                           decoder_layers=1, mlp_dim=num_patches, dropout=0.0)
    model = CaptionModel(config)
    dim = config.model_dim
    patch_encoder = model.encoder.patch_encoder
    patch_encoder.projection.kernel.assign(np.zeros(patch_encoder.projection.kernel.shape, "float32"))
    patch_encoder.projection.bias.assign(np.zeros(dim, "float32"))
    patch_encoder.position_embedding.embeddings.assign(np.eye(num_patches, dim, dtype="float32"))
    embeddings = np.zeros((vocab_size, dim), "float32")
    embeddings[np.arange(vocab_size), token_patches] = 10.0  # x √dim = 40, against positions in [-1, 1]
    model.decoder.token_embedding.embeddings.assign(embeddings)
    layer = model.decoder.decoder_layers[0]
    layer.self_attention.output_dense.kernel.assign(np.zeros((dim, dim), "float32"))
    layer.self_attention.output_dense.bias.assign(np.zeros(dim, "float32"))
    for dense in (layer.cross_attention.query_dense, layer.cross_attention.key_dense):
        dense.kernel.assign(2.0 * np.eye(dim, dtype="float32"))
        dense.bias.assign(np.zeros(dim, "float32"))
    return model
