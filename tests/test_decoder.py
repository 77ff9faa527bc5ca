"""Tests for minicap.decoder: decoder layer, decoder, and cached (incremental) decoding."""
import math

import keras
import numpy as np
import pytest
from keras import ops

from tests.support.layer_checks import check_layer
from minicap.decoder import Decoder, DecoderLayer
from minicap.positional import sinusoidal_encoding

VOCAB, LENGTH, DIM, PATCHES = 13, 7, 16, 9


def _tokens(batch=3, length=LENGTH, padded=True, seed=0):
    tokens = np.random.default_rng(seed).integers(1, VOCAB, (batch, length)).astype("int32")
    if padded:
        tokens[1, 4:] = 0  # a shorter caption, padded with pad_id 0
    return tokens


def _decoder(num_layers=2, dropout=0.0):
    return Decoder(VOCAB, LENGTH, DIM, num_layers, num_heads=2, mlp_dim=32, dropout=dropout)


def _patches(batch=3):
    return np.random.default_rng(1).normal(size=(batch, PATCHES, DIM)).astype("float32")


def test_decoder_layer_contract_and_weights(tmp_path):
    layer = DecoderLayer(model_dim=DIM, num_heads=2, mlp_dim=32)
    x = np.random.rand(2, 5, DIM).astype("float32")
    assert check_layer(layer, [x, _patches(2)], tmp_path).shape == (2, 5, DIM)
    _, self_weights, cross_weights = layer(x, _patches(2), return_attention_scores=True)
    assert tuple(self_weights.shape) == (2, 2, 5, 5)
    assert tuple(cross_weights.shape) == (2, 2, 5, PATCHES)


def test_decoder_contract(tmp_path):
    output = check_layer(_decoder(), [_tokens(), _patches()], tmp_path, atol=1e-5)
    assert output.shape == (3, LENGTH, DIM)


def test_embedding_is_scaled_by_sqrt_dim_plus_sinusoid():
    decoder = _decoder()
    tokens = _tokens()
    decoder(tokens, _patches())
    table = ops.convert_to_numpy(decoder.token_embedding.embeddings)
    expected = table[tokens] * math.sqrt(DIM) + ops.convert_to_numpy(sinusoidal_encoding(LENGTH, DIM))
    np.testing.assert_allclose(ops.convert_to_numpy(decoder.embed(tokens)), expected, atol=1e-5)
    shifted = ops.convert_to_numpy(decoder.embed(tokens[:, 3:5], start_index=3))
    np.testing.assert_allclose(shifted, expected[:, 3:5], atol=1e-5)


def test_decoder_is_causal():
    # Changing the token at position 4 changes no output before position 4.
    decoder = _decoder()
    tokens = _tokens(padded=False)
    changed = tokens.copy()
    changed[:, 4] = tokens[:, 4] % (VOCAB - 1) + 1
    output, output_changed = (ops.convert_to_numpy(decoder(t, _patches())) for t in (tokens, changed))
    np.testing.assert_allclose(output[:, :4], output_changed[:, :4], atol=1e-6)
    assert not np.allclose(output[:, 4:], output_changed[:, 4:], atol=1e-4)


def test_padding_is_hidden_from_self_attention():
    # Padding after a caption does not change the outputs at the caption's own positions, even
    # with the padded keys visible to the causal mask (here: the positions after the caption).
    decoder = _decoder()
    tokens = _tokens(padded=False)
    padded = tokens.copy()
    padded[:, 2] = 0  # a pad in the middle: positions after it must not attend to it
    _, scores = decoder(padded, _patches(), return_attention_scores=True)
    for weights in scores["self"]:
        np.testing.assert_array_equal(ops.convert_to_numpy(weights)[:, :, 3:, 2], 0.0)
    short = decoder(tokens[:, :3], _patches())
    np.testing.assert_allclose(ops.convert_to_numpy(decoder(tokens, _patches()))[:, :3],
                               ops.convert_to_numpy(short), atol=1e-5)


def test_attention_scores_of_every_layer():
    decoder = _decoder(num_layers=2)
    hidden, scores = decoder(_tokens(), _patches(), return_attention_scores=True)
    assert tuple(hidden.shape) == (3, LENGTH, DIM)
    assert [tuple(w.shape) for w in scores["self"]] == [(3, 2, LENGTH, LENGTH)] * 2
    assert [tuple(w.shape) for w in scores["cross"]] == [(3, 2, LENGTH, PATCHES)] * 2
    self_weights = ops.convert_to_numpy(scores["self"][0])
    assert np.all(np.triu(self_weights[0, 0], k=1) == 0.0)  # no attention to later positions
    np.testing.assert_allclose(ops.convert_to_numpy(scores["cross"][1]).sum(-1), 1.0, atol=1e-5)


def _cached_logits(decoder, tokens, patches, chunk=1, tensor_index=False, max_length=LENGTH):
    cache = decoder.init_cache(patches, max_length)
    outputs = []
    for index in range(0, tokens.shape[1], chunk):
        position = ops.convert_to_tensor(index, "int32") if tensor_index else index
        hidden, cache = decoder.step(tokens[:, index:index + chunk], cache, position)
        outputs.append(ops.convert_to_numpy(hidden))
    return np.concatenate(outputs, axis=1), cache


@pytest.mark.parametrize("chunk, tensor_index", [(1, False), (1, True), (2, False)])
def test_cached_steps_equal_the_full_pass(chunk, tensor_index):
    decoder = _decoder(num_layers=2, dropout=0.1)  # dropout is off at inference in both paths
    tokens, patches = _tokens(length=6), _patches()
    full = ops.convert_to_numpy(decoder(tokens, patches, training=False))
    cached, _ = _cached_logits(decoder, tokens, patches, chunk, tensor_index)
    np.testing.assert_allclose(cached, full, atol=1e-5)


def test_cache_shapes_are_static_and_batched():
    decoder = _decoder(num_layers=2)
    patches = _patches()
    cache = decoder.init_cache(patches, max_length=5)
    assert tuple(cache["tokens"].shape) == (3, 5)
    for layer_cache in cache["layers"]:
        assert tuple(layer_cache["self_key"].shape) == (3, 5, 2, DIM // 2)
        assert tuple(layer_cache["cross_value"].shape) == (3, PATCHES, 2, DIM // 2)
        np.testing.assert_array_equal(ops.convert_to_numpy(layer_cache["self_value"]), 0.0)
    _, new_cache = decoder.step(_tokens()[:, :1], cache, 0)
    shapes = keras.tree.map_structure(lambda leaf: tuple(leaf.shape), new_cache)
    assert shapes == keras.tree.map_structure(lambda leaf: tuple(leaf.shape), cache)
    key = ops.convert_to_numpy(new_cache["layers"][0]["self_key"])
    assert np.any(key[:, 0] != 0) and np.all(key[:, 1:] == 0)  # position 0 written, the rest untouched


def test_decoder_rejects_bad_tokens():
    decoder = _decoder()
    with pytest.raises(ValueError, match="token length 8 exceeds the decoder's max_length 7"):
        decoder(np.ones((1, 8), "int32"), _patches(1))
    with pytest.raises(ValueError, match=r"shape \(batch, length\)"):
        decoder(np.ones((1, 2, 3), "int32"), _patches(1))
    with pytest.raises(ValueError, match="cache max_length 9 exceeds"):
        decoder.init_cache(_patches(1), max_length=9)
    with pytest.raises(ValueError, match="vocab_size must be at least 1"):
        Decoder(0, LENGTH, DIM, 1, num_heads=2, mlp_dim=32)
