"""The caption decoder: masked self-attention, cross-attention to the patches, feed-forward (chapter 4).

The decoder reads the caption so far and, at every position, attends to the image's patch vectors
to predict the next word. It runs in two ways that compute the same numbers:

* the **full pass** (training, teacher forcing): all ``T`` positions at once, a causal mask
  stopping each position from seeing the words after it;
* the **cached step** (generation, chapter 6): only the newest position(s). Each layer keeps a
  cache with the keys and values of the earlier positions (self-attention), preallocated to
  ``max_length`` and filled in place, and the keys and values of the patches (cross-attention),
  projected once per image. A step costs O(T) instead of re-running the O(T²) full pass.

Both use the same ``MultiHeadAttention.project_key_value`` / ``attend`` code, so they agree to
float rounding (tested to 1e-5).

Layers are pre-norm, like the encoder's (see ``minicap.encoder``).

Reference: Vaswani et al., "Attention is all you need" (2017), section 3.
"""
import math

import keras
from keras import ops

from minicap.attention import MultiHeadAttention, causal_mask, padding_mask
from minicap.encoder import NORM_EPSILON, FeedForward
from minicap.positional import SinusoidalPositionEncoding

__all__ = ["DecoderLayer", "Decoder"]


def _slice_update_positions(cache, new, index):
    """Write ``new`` ``(B, t, ...)`` into ``cache`` ``(B, L, ...)`` at position ``index`` along axis 1."""
    start = [0, index] + [0] * (len(cache.shape) - 2)
    return ops.slice_update(cache, start, ops.cast(new, cache.dtype))


@keras.saving.register_keras_serializable(package="minicap")
class DecoderLayer(keras.layers.Layer):
    """One pre-norm Transformer decoder layer.

    ``x = x + dropout(self_attention(norm(x)))`` with a causal (and padding) mask, then
    ``x = x + dropout(cross_attention(norm(x), patches))``, then
    ``x = x + dropout(feed_forward(norm(x)))``.

    Args:
        model_dim: width ``d``.
        num_heads: attention heads.
        mlp_dim: hidden width of the feed-forward block.
        dropout: dropout rate on attention weights and on the residual branches.

    Call arguments:
        inputs: ``(batch, length, model_dim)``, the embedded caption.
        encoder_output: ``(batch, patches, model_dim)``.
        self_attention_mask: boolean, broadcastable to ``(batch, length, length)``, True = may attend
            (``Decoder`` passes causal AND not-padding).
        return_attention_scores: also return the self- and cross-attention weights,
            ``(batch, heads, length, length)`` and ``(batch, heads, length, patches)``.
        training: enables dropout.

    Returns:
        ``(batch, length, model_dim)``, or ``(output, self_weights, cross_weights)``.

    For generation, ``init_cache`` and ``step`` run the same layer one position at a time.

    Example:
        >>> layer = DecoderLayer(model_dim=32, num_heads=4, mlp_dim=64)
        >>> words = keras.random.normal((2, 6, 32))
        >>> patches = keras.random.normal((2, 16, 32))
        >>> tuple(layer(words, patches).shape)
        (2, 6, 32)
    """

    def __init__(self, model_dim, num_heads, mlp_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.model_dim = model_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        policy = self.dtype_policy

        def norm(name):
            return keras.layers.LayerNormalization(epsilon=NORM_EPSILON, dtype=policy, name=name)

        self.self_attention_norm = norm("self_attention_norm")
        self.self_attention = MultiHeadAttention(model_dim, num_heads, dropout, dtype=policy, name="self_attention")
        self.cross_attention_norm = norm("cross_attention_norm")
        self.cross_attention = MultiHeadAttention(model_dim, num_heads, dropout, dtype=policy, name="cross_attention")
        self.feed_forward_norm = norm("feed_forward_norm")
        self.feed_forward = FeedForward(model_dim, mlp_dim, dropout, dtype=policy, name="feed_forward")
        self.residual_dropout = keras.layers.Dropout(dropout, dtype=policy)

    def build(self, inputs_shape, encoder_output_shape=None):
        if inputs_shape[-1] is not None and inputs_shape[-1] != self.model_dim:
            raise ValueError(
                f"DecoderLayer with model_dim {self.model_dim} got inputs of width {inputs_shape[-1]} "
                f"(shape {tuple(inputs_shape)}); the last axis must be {self.model_dim}"
            )
        encoder_output_shape = encoder_output_shape or (inputs_shape[0], None, self.model_dim)
        for sublayer in (self.self_attention_norm, self.cross_attention_norm, self.feed_forward_norm,
                         self.feed_forward):
            sublayer.build(inputs_shape)
        self.self_attention.build(inputs_shape, inputs_shape)
        self.cross_attention.build(inputs_shape, encoder_output_shape)

    def _after_self_attention(self, inputs, attended, cross_key, cross_value, return_attention_scores, training):
        """The rest of the layer once self-attention is done: residual, cross-attention, feed-forward."""
        x = inputs + self.residual_dropout(attended, training=training)
        crossed = self.cross_attention.attend(
            self.cross_attention_norm(x), cross_key, cross_value,
            return_attention_scores=return_attention_scores, training=training)
        crossed, cross_weights = crossed if return_attention_scores else (crossed, None)
        x = x + self.residual_dropout(crossed, training=training)
        x = x + self.residual_dropout(self.feed_forward(self.feed_forward_norm(x), training=training),
                                      training=training)
        return x, cross_weights

    def call(self, inputs, encoder_output, self_attention_mask=None, return_attention_scores=False, training=None):
        normed = self.self_attention_norm(inputs)
        key, value = self.self_attention.project_key_value(normed)  # (B, T, H, Dh) each
        attended = self.self_attention.attend(normed, key, value, self_attention_mask,
                                              return_attention_scores, training)
        attended, self_weights = attended if return_attention_scores else (attended, None)
        cross_key, cross_value = self.cross_attention.project_key_value(encoder_output)  # (B, N, H, Dh)
        x, cross_weights = self._after_self_attention(inputs, attended, cross_key, cross_value,
                                                      return_attention_scores, training)
        return (x, self_weights, cross_weights) if return_attention_scores else x

    def init_cache(self, encoder_output, max_length):
        """This layer's cache for generating up to ``max_length`` positions from ``encoder_output``.

        Returns a dict of four ``(batch, length, heads, head_dim)`` tensors: ``self_key`` and
        ``self_value`` (zeros, length ``max_length``, filled by ``step``) and ``cross_key`` and
        ``cross_value`` (the patches, projected once here, length ``patches``).
        """
        cross_key, cross_value = self.cross_attention.project_key_value(encoder_output)  # (B, N, H, Dh)
        batch = ops.shape(encoder_output)[0]
        head_dim = self.model_dim // self.num_heads
        zeros = ops.zeros((batch, max_length, self.num_heads, head_dim), dtype=cross_key.dtype)  # (B, L, H, Dh)
        return {"self_key": zeros, "self_value": zeros, "cross_key": cross_key, "cross_value": cross_value}

    def step(self, inputs, cache, index, key_mask=None, return_attention_scores=False):
        """Run the layer on the newest ``t`` positions ``index .. index+t-1`` (inference, no dropout).

        Args:
            inputs: ``(batch, t, model_dim)``.
            cache: this layer's cache (``init_cache``), holding positions ``< index``.
            index: position of ``inputs[:, 0]``, an int or a scalar int32 tensor.
            key_mask: optional boolean ``(batch, 1, max_length)``: False hides a cached position
                (padding); ``Decoder.step`` passes it.
            return_attention_scores: also return the weights over the cache's ``max_length``
                positions and over the patches.

        Returns:
            ``(output, new_cache)`` or ``(output, new_cache, self_weights, cross_weights)``; output
            is ``(batch, t, model_dim)``.
        """
        # [start-decoder-step-cache]
        normed = self.self_attention_norm(inputs)
        new_key, new_value = self.self_attention.project_key_value(normed)  # (B, t, H, Dh)
        self_key = _slice_update_positions(cache["self_key"], new_key, index)  # (B, L, H, Dh)
        self_value = _slice_update_positions(cache["self_value"], new_value, index)
        length, max_length = ops.shape(inputs)[1], ops.shape(self_key)[1]
        mask = causal_mask(length, max_length, offset=index)[None]  # (1, t, L): earlier positions and itself
        if key_mask is not None:
            mask = ops.logical_and(mask, key_mask)  # (B, t, L)
        # [end-decoder-step-cache]
        attended = self.self_attention.attend(normed, self_key, self_value, mask, return_attention_scores,
                                              training=False)
        attended, self_weights = attended if return_attention_scores else (attended, None)
        x, cross_weights = self._after_self_attention(inputs, attended, cache["cross_key"], cache["cross_value"],
                                                      return_attention_scores, training=False)
        new_cache = {**cache, "self_key": self_key, "self_value": self_value}
        if return_attention_scores:
            return x, new_cache, self_weights, cross_weights
        return x, new_cache

    def compute_output_shape(self, inputs_shape, encoder_output_shape=None):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"model_dim": self.model_dim, "num_heads": self.num_heads,
                       "mlp_dim": self.mlp_dim, "dropout": self.dropout})
        return config


@keras.saving.register_keras_serializable(package="minicap")
class Decoder(keras.layers.Layer):
    """Token embedding · √d + sinusoidal positions, then ``num_layers`` decoder layers and a final norm.

    The output is the hidden state of every position; ``CaptionModel`` turns it into vocabulary
    logits. Padding tokens (``pad_id``) are hidden as keys from self-attention.

    Args:
        vocab_size: number of token ids.
        max_length: the most positions a caption may have (cached generation preallocates this many).
        model_dim: width ``d``.
        num_layers: number of decoder layers.
        num_heads: attention heads per layer.
        mlp_dim: hidden width of the feed-forward blocks.
        dropout: dropout rate on the embeddings and inside the layers.
        pad_id: the padding token id.

    Call arguments:
        tokens: int ``(batch, length)``, ``length <= max_length``.
        encoder_output: ``(batch, patches, model_dim)``.
        return_attention_scores: also return ``{"self": [per layer (batch, heads, length, length)],
            "cross": [per layer (batch, heads, length, patches)]}``.
        training: enables dropout.

    Returns:
        ``(batch, length, model_dim)``, or ``(hidden, attention_scores)``.

    Example:
        >>> decoder = Decoder(vocab_size=30, max_length=6, model_dim=32, num_layers=2,
        ...                   num_heads=4, mlp_dim=64)
        >>> tokens = np.array([[1, 5, 7, 2, 0, 0], [1, 9, 2, 0, 0, 0]])
        >>> tuple(decoder(tokens, keras.random.normal((2, 16, 32))).shape)
        (2, 6, 32)
    """

    def __init__(self, vocab_size, max_length, model_dim, num_layers, num_heads, mlp_dim, dropout=0.0, pad_id=0,
                 **kwargs):
        super().__init__(**kwargs)
        for name, value in (("vocab_size", vocab_size), ("max_length", max_length), ("model_dim", model_dim)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.model_dim = model_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.pad_id = pad_id
        policy = self.dtype_policy
        self.token_embedding = keras.layers.Embedding(vocab_size, model_dim, dtype=policy, name="token_embedding")
        self.position_encoding = SinusoidalPositionEncoding(dtype=policy, name="position_encoding")
        self.embedding_dropout = keras.layers.Dropout(dropout, dtype=policy)
        self.decoder_layers = [
            DecoderLayer(model_dim, num_heads, mlp_dim, dropout, dtype=policy, name=f"decoder_layer_{i}")
            for i in range(num_layers)
        ]
        self.final_norm = keras.layers.LayerNormalization(epsilon=NORM_EPSILON, dtype=policy, name="final_norm")

    def build(self, tokens_shape, encoder_output_shape=None):
        self.token_embedding.build(tokens_shape)
        hidden_shape = (tokens_shape[0], tokens_shape[1], self.model_dim)
        for layer in self.decoder_layers:
            layer.build(hidden_shape, encoder_output_shape)
        self.final_norm.build(hidden_shape)

    def embed(self, tokens, start_index=0):
        """Token embeddings scaled by √d, plus the positions ``start_index ..``: ``(batch, length, model_dim)``.

        The scale keeps the embeddings (initialised small) from being drowned by the positional
        encoding, whose values lie in [-1, 1] (Vaswani et al., section 3.4).
        """
        x = self.token_embedding(tokens) * ops.cast(math.sqrt(self.model_dim), self.compute_dtype)
        return x + self.position_encoding(x, start_index=start_index)

    def _check_tokens(self, tokens):
        shape = ops.shape(tokens)
        if len(shape) != 2:
            raise ValueError(f"Decoder expects tokens of shape (batch, length), got shape {tuple(shape)}")
        if isinstance(shape[1], int) and shape[1] > self.max_length:
            raise ValueError(f"token length {shape[1]} exceeds the decoder's max_length {self.max_length}")

    def call(self, tokens, encoder_output, return_attention_scores=False, training=None):
        self._check_tokens(tokens)
        length = ops.shape(tokens)[1]
        mask = ops.logical_and(causal_mask(length)[None], padding_mask(tokens, self.pad_id))  # (B, T, T)
        x = self.embedding_dropout(self.embed(tokens), training=training)
        scores = {"self": [], "cross": []}
        for layer in self.decoder_layers:
            if return_attention_scores:
                x, self_weights, cross_weights = layer(x, encoder_output, self_attention_mask=mask,
                                                               return_attention_scores=True, training=training)
                scores["self"].append(self_weights)
                scores["cross"].append(cross_weights)
            else:
                x = layer(x, encoder_output, self_attention_mask=mask, training=training)
        x = self.final_norm(x)
        return (x, scores) if return_attention_scores else x

    def init_cache(self, encoder_output, max_length=None):
        """The generation cache: ``{"tokens": (batch, max_length) int32 (pad_id until written),
        "layers": [one DecoderLayer.init_cache dict per layer]}``; every leaf has a batch axis."""
        max_length = self.max_length if max_length is None else max_length
        if max_length > self.max_length:
            raise ValueError(f"cache max_length {max_length} exceeds the decoder's max_length {self.max_length}")
        batch = ops.shape(encoder_output)[0]
        return {
            "tokens": ops.full((batch, max_length), self.pad_id, dtype="int32"),
            "layers": [layer.init_cache(encoder_output, max_length) for layer in self.decoder_layers],
        }

    def step(self, tokens, cache, index, return_attention_scores=False):
        """Decode ``tokens`` ``(batch, t)`` at positions ``index .. index+t-1`` with the cache.

        Returns ``(hidden (batch, t, model_dim), new_cache)``, plus the attention scores (as in
        ``call``, over the cache's ``max_length`` positions) when asked. Equal to
        ``call(all_tokens)[:, index:index+t]`` when the cache holds the earlier positions.
        """
        self._check_tokens(tokens)
        if not isinstance(index, int):
            index = ops.cast(index, "int32")
        tokens = ops.cast(tokens, "int32")
        cached_tokens = _slice_update_positions(cache["tokens"], tokens, index)  # (B, L)
        key_mask = padding_mask(cached_tokens, self.pad_id)  # (B, 1, L)
        x = self.embed(tokens, start_index=index)
        new_layers, scores = [], {"self": [], "cross": []}
        for layer, layer_cache in zip(self.decoder_layers, cache["layers"]):
            outputs = layer.step(x, layer_cache, index, key_mask, return_attention_scores)
            x, layer_cache = outputs[:2]
            if return_attention_scores:
                scores["self"].append(outputs[2])
                scores["cross"].append(outputs[3])
            new_layers.append(layer_cache)
        x = self.final_norm(x)
        new_cache = {"tokens": cached_tokens, "layers": new_layers}
        return (x, new_cache, scores) if return_attention_scores else (x, new_cache)

    def compute_output_shape(self, tokens_shape, encoder_output_shape=None):
        return (tokens_shape[0], tokens_shape[1], self.model_dim)

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocab_size": self.vocab_size, "max_length": self.max_length, "model_dim": self.model_dim,
            "num_layers": self.num_layers, "num_heads": self.num_heads, "mlp_dim": self.mlp_dim,
            "dropout": self.dropout, "pad_id": self.pad_id,
        })
        return config
