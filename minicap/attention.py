"""Scaled dot-product attention, attention masks and multi-head attention (chapter 3).

Mask convention, everywhere in minicap: a mask is **boolean** and ``True`` means "this query
may attend to this key". Masks broadcast against attention scores of shape
``(batch, [heads,] query_length, key_length)``.

Reference: Vaswani et al., "Attention is all you need" (2017), section 3.2.
"""
import math

import keras
from keras import ops

__all__ = ["scaled_dot_product_attention", "causal_mask", "padding_mask", "MultiHeadAttention"]

# Masked scores are replaced (not offset) by this before the softmax. The softmax runs in
# float32 (see `scaled_dot_product_attention`), so the value is finite there; the seed's
# `scores += mask * -1e9` overflowed to -inf in float16 and turned fully masked rows into NaN.
MASKED_SCORE = -1e9


def causal_mask(query_length, key_length=None, offset=0):
    """Look-ahead mask: query ``i`` may attend to keys ``0 .. offset + i``.

    Args:
        query_length: number of queries (a Python int).
        key_length: number of keys; defaults to ``query_length + offset``.
        offset: absolute position of the first query (an int or a scalar tensor), used by
            cached decoding, where the queries are the newest tokens of a longer sequence.

    Returns:
        Boolean tensor of shape ``(query_length, key_length)``, True where attention is allowed.

    Example:
        >>> # row i: the keys that query i may attend to
        >>> keras.ops.convert_to_numpy(causal_mask(3)).astype(int).tolist()
        [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    """
    if key_length is None:
        key_length = query_length + offset
    rows = ops.expand_dims(ops.arange(query_length, dtype="int32") + offset, 1)  # (Tq, 1)
    cols = ops.expand_dims(ops.arange(key_length, dtype="int32"), 0)  # (1, Tk)
    return ops.greater_equal(rows, cols)


def padding_mask(tokens, pad_id=0):
    """Key mask that hides padding: ``(batch, length)`` tokens -> ``(batch, 1, length)`` booleans.

    The middle axis broadcasts over the queries, so every query ignores the padded keys.

    Example:
        >>> keras.ops.convert_to_numpy(padding_mask(np.array([[5, 7, 0]]))).astype(int)
        array([[[1, 1, 0]]])
    """
    if len(ops.shape(tokens)) != 2:
        raise ValueError(f"padding_mask expects tokens of shape (batch, length), got {ops.shape(tokens)}")
    return ops.expand_dims(ops.not_equal(tokens, pad_id), axis=-2)


def _check_mask(mask, key_length=None):
    """The mask as booleans, after checking that its last axis has one entry per key."""
    if mask is None:
        return None
    if not hasattr(mask, "dtype"):
        mask = ops.convert_to_tensor(mask)
    if str(keras.backend.standardize_dtype(mask.dtype)) != "bool":
        mask = ops.cast(mask, "bool")
    mask_keys = ops.shape(mask)[-1] if len(ops.shape(mask)) else None
    if (isinstance(key_length, int) and isinstance(mask_keys, int)
            and mask_keys not in (1, key_length)):
        raise ValueError(
            f"attention mask of shape {ops.shape(mask)} does not match {key_length} keys: "
            f"its last axis must have length {key_length} (or 1)"
        )
    return mask


def scaled_dot_product_attention(query, key, value, mask=None):
    """softmax(Q Kᵀ / √d_k) V, returning the output *and* the attention weights.

    Args:
        query: ``(..., query_length, depth)``.
        key: ``(..., key_length, depth)``.
        value: ``(..., key_length, value_depth)``.
        mask: optional boolean, broadcastable to ``(..., query_length, key_length)``;
            True = may attend.

    Returns:
        ``(output, weights)``: output ``(..., query_length, value_depth)`` in the dtype of
        ``value``; weights ``(..., query_length, key_length)``, each row summing to 1, or to 0
        for a query that may attend to nothing (its output is then 0, never NaN).

    Example:
        >>> query, key = keras.random.normal((2, 3, 8)), keras.random.normal((2, 4, 8))
        >>> value = keras.random.normal((2, 4, 16))
        >>> output, weights = scaled_dot_product_attention(query, key, value)
        >>> tuple(output.shape), tuple(weights.shape)
        ((2, 3, 16), (2, 3, 4))
    """
    depth = ops.shape(query)[-1]
    if ops.shape(key)[-1] != depth:
        raise ValueError(
            f"query depth {depth} and key depth {ops.shape(key)[-1]} differ: query and key must "
            f"have the same last dimension (query {ops.shape(query)}, key {ops.shape(key)})"
        )
    if ops.shape(key)[-2] != ops.shape(value)[-2]:
        raise ValueError(
            f"key length {ops.shape(key)[-2]} and value length {ops.shape(value)[-2]} differ: "
            f"each key needs one value (key {ops.shape(key)}, value {ops.shape(value)})"
        )
    mask = _check_mask(mask, ops.shape(key)[-2])
    # Scale the query before the product, as Keras does: float16 products then stay far
    # from their 65504 limit.
    # (ops.multiply, not *: a NumPy query times a PyTorch tensor is a TypeError.)
    query = ops.multiply(query, ops.cast(1.0 / math.sqrt(depth), query.dtype))
    scores = ops.matmul(query, ops.swapaxes(key, -1, -2))  # (..., Tq, Tk)
    # The softmax runs in float32: float16 scores lose the small weights.
    scores = ops.cast(scores, "float32")
    if mask is not None:
        scores = ops.where(mask, scores, MASKED_SCORE)
    weights = ops.softmax(scores, axis=-1)
    if mask is not None:
        # A fully masked row would otherwise spread its weight uniformly over masked keys.
        weights = ops.where(mask, weights, 0.0)
    weights = ops.cast(weights, value.dtype)
    return ops.matmul(weights, value), weights


@keras.saving.register_keras_serializable(package="minicap")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention with separate query, key, value and output projections.

    The model dimension is split into ``num_heads`` heads of ``model_dim // num_heads``
    values; each head attends on its own, and the heads are merged and projected back.

    Args:
        model_dim: width of the inputs and of the output, divisible by ``num_heads``.
        num_heads: number of heads.
        dropout: dropout rate on the attention weights (training only).
        use_bias: whether the four projections have biases.
        kernel_initializer: initializer of the projection kernels.

    Call arguments:
        query: ``(batch, query_length, model_dim)``.
        value: ``(batch, key_length, value_width)``, what is attended to.
        key: ``(batch, key_length, key_width)``; defaults to ``value``.
        attention_mask: boolean, broadcastable to ``(batch, query_length, key_length)``,
            True = may attend.
        return_attention_scores: also return the weights ``(batch, num_heads, query_length,
            key_length)``. Without it (and without dropout), the layer calls
            ``keras.ops.dot_product_attention``, which chooses a kernel per backend. TensorFlow:
            never a flash kernel (Keras does not support one there); the scores and the softmax
            are computed in full, only not returned. JAX: a fused kernel on a TPU, and cuDNN's
            flash attention on an NVIDIA GPU (Ampere or newer) for float16/bfloat16 inputs
            with a head width that is a multiple of 8; XLA's plain computation otherwise, e.g.
            in float32 or on a CPU. PyTorch: ``scaled_dot_product_attention``, whose flash
            kernel needs CUDA, float16/bfloat16 and no mask; with a mask it picks another
            kernel (memory-efficient on CUDA, the plain one on a CPU).
        training: enables dropout.

    Returns:
        ``(batch, query_length, model_dim)``, or ``(output, weights)``. A query that may
        attend to no key gets all-zero weights and a zero attention result (so the layer's
        output is the output projection's bias), never NaN, in float16 and bfloat16 too.

    Example:
        >>> attention = MultiHeadAttention(model_dim=64, num_heads=4)
        >>> words = keras.random.normal((2, 5, 64))
        >>> patches = keras.random.normal((2, 16, 64))
        >>> output, weights = attention(words, patches, return_attention_scores=True)
        >>> tuple(output.shape), tuple(weights.shape)
        ((2, 5, 64), (2, 4, 5, 16))
    """

    def __init__(self, model_dim, num_heads, dropout=0.0, use_bias=True,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if num_heads < 1:
            raise ValueError(f"num_heads must be at least 1, got {num_heads}")
        if model_dim < 1:
            raise ValueError(f"model_dim must be at least 1, got {model_dim}")
        if model_dim % num_heads:
            raise ValueError(
                f"model_dim {model_dim} is not divisible by num_heads {num_heads}: "
                f"each head needs model_dim // num_heads values"
            )
        self.model_dim = model_dim
        self.num_heads = num_heads
        self.head_dim = model_dim // num_heads
        self.dropout = dropout
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

        def projection(name):
            return keras.layers.Dense(
                model_dim, use_bias=use_bias, kernel_initializer=self.kernel_initializer,
                dtype=self.dtype_policy, name=name,
            )

        self.query_dense = projection("query")
        self.key_dense = projection("key")
        self.value_dense = projection("value")
        self.output_dense = projection("output")
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, query_shape, value_shape=None, key_shape=None):
        value_shape = query_shape if value_shape is None else value_shape
        key_shape = value_shape if key_shape is None else key_shape
        if query_shape[-1] is not None and query_shape[-1] != self.model_dim:
            raise ValueError(
                f"query width {query_shape[-1]} does not match model_dim {self.model_dim}: "
                f"the query of shape {tuple(query_shape)} must end in {self.model_dim}"
            )
        if len(query_shape) != 3 or len(value_shape) != 3 or len(key_shape) != 3:
            raise ValueError(
                "MultiHeadAttention expects (batch, length, width) inputs, got query "
                f"{tuple(query_shape)}, value {tuple(value_shape)}, key {tuple(key_shape)}"
            )
        # `project_key_value` and `attend` may have been called first and built some already.
        for dense, shape in [(self.query_dense, query_shape), (self.key_dense, key_shape),
                             (self.value_dense, value_shape),
                             (self.output_dense, tuple(query_shape[:-1]) + (self.model_dim,))]:
            if not dense.built:
                dense.build(shape)
        self.built = True

    def split_heads(self, x):
        """``(batch, length, model_dim)`` -> ``(batch, length, num_heads, head_dim)``."""
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        return ops.reshape(x, (batch, length, self.num_heads, self.head_dim))

    def merge_heads(self, x):
        """``(batch, length, num_heads, head_dim)`` -> ``(batch, length, model_dim)``."""
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        return ops.reshape(x, (batch, length, self.model_dim))

    def project_key_value(self, value, key=None):
        """Project and split what is attended to: two ``(batch, key_length, heads, head_dim)``.

        Cached decoding calls this once for the encoder output (cross-attention) and once
        per new token (self-attention), then reuses the result.
        """
        key = value if key is None else key
        return self.split_heads(self.key_dense(key)), self.split_heads(self.value_dense(value))

    def attend(self, query, key_heads, value_heads, attention_mask=None,
               return_attention_scores=False, training=None):
        """Attention of ``query`` (not yet projected) over already projected key/value heads.

        ``query`` is ``(batch, query_length, model_dim)``; ``key_heads`` and ``value_heads`` are
        ``(batch, key_length, num_heads, head_dim)``, as ``split_heads`` of the key and value projections returns
        them (the decoder's cache keeps them so). Returns the output ``(batch, query_length, model_dim)``, and with
        ``return_attention_scores`` also the weights ``(batch, num_heads, query_length, key_length)``.
        """
        query_heads = self.split_heads(self.query_dense(query))  # (B, Tq, H, Dh)
        mask = _check_mask(attention_mask, ops.shape(key_heads)[1])
        if mask is not None:
            while len(ops.shape(mask)) < 3:
                mask = ops.expand_dims(mask, axis=0)  # (1, Tq, Tk) for a (Tq, Tk) mask
            mask = ops.expand_dims(mask, axis=-3)  # (B, 1, Tq, Tk): the same for every head
        use_dropout = training and self.dropout > 0
        if return_attention_scores or use_dropout:
            value_heads = ops.transpose(value_heads, (0, 2, 1, 3))  # (B, H, Tk, Dh)
            output, weights = scaled_dot_product_attention(
                ops.transpose(query_heads, (0, 2, 1, 3)),  # (B, H, Tq, Dh)
                ops.transpose(key_heads, (0, 2, 1, 3)),  # (B, H, Tk, Dh)
                value_heads,
                mask,
            )
            if use_dropout:
                # The returned weights stay those before dropout, as in Keras, so that they
                # still sum to 1 and can be plotted.
                dropped = self.dropout_layer(weights, training=training)
                output = ops.matmul(dropped, value_heads)  # (B, H, Tq, Dh)
            output = ops.transpose(output, (0, 2, 1, 3))  # (B, Tq, H, Dh)
        else:
            weights = None
            output = ops.dot_product_attention(query_heads, key_heads, value_heads, mask=mask)
            if mask is not None:
                # The fused kernel averages the values of a fully masked row; make it zero.
                # `where`, not a product, so that even a NaN from a kernel becomes zero.
                any_key = ops.transpose(ops.any(mask, axis=-1), (0, 2, 1))  # (B, Tq, 1)
                output = ops.where(any_key[..., None], output, ops.zeros_like(output))
        output = self.output_dense(self.merge_heads(output))  # (B, Tq, D)
        return (output, weights) if return_attention_scores else output

    def call(self, query, value, key=None, attention_mask=None, return_attention_scores=False,
             training=None):
        key_length = ops.shape(value if key is None else key)[-2]
        if key is not None and key_length != ops.shape(value)[-2]:
            raise ValueError(
                f"key length {key_length} and value length {ops.shape(value)[-2]} differ: "
                f"each key needs one value (key {ops.shape(key)}, value {ops.shape(value)})"
            )
        key_heads, value_heads = self.project_key_value(value, key)
        return self.attend(query, key_heads, value_heads, attention_mask,
                           return_attention_scores, training)

    def compute_output_shape(self, query_shape, value_shape=None, key_shape=None):
        return tuple(query_shape[:-1]) + (self.model_dim,)

    def get_config(self):
        config = super().get_config()
        config.update({
            "model_dim": self.model_dim,
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        })
        return config
