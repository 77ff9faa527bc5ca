"""Attention: known values, equality with Keras' own attention, masks, mixed precision, saving."""
import numpy as np
import keras
import pytest
from keras import ops

from tests.support.layer_checks import check_layer
from minicap.attention import (
    MultiHeadAttention, causal_mask, padding_mask, scaled_dot_product_attention,
)

BATCH, QUERIES, KEYS, DIM, HEADS = 2, 5, 7, 16, 4


def numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def random(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def random_mask(*shape, seed=1):
    """A random boolean mask in which every query may attend to at least its first key."""
    mask = np.random.default_rng(seed).random(shape) < 0.6
    mask[..., 0] = True
    return mask


# ---- masks -------------------------------------------------------------------------------

def test_causal_mask_known_values():
    np.testing.assert_array_equal(numpy(causal_mask(3)), np.tril(np.ones((3, 3), bool)))
    # Two new queries at positions 3 and 4 of a five-token sequence.
    np.testing.assert_array_equal(
        numpy(causal_mask(2, offset=3)), [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    )


def test_padding_mask_hides_pad_tokens_for_every_query():
    mask = numpy(padding_mask(np.array([[5, 6, 0, 0], [7, 0, 0, 0]])))
    assert mask.shape == (2, 1, 4)
    np.testing.assert_array_equal(mask[:, 0], [[1, 1, 0, 0], [1, 0, 0, 0]])


def test_padding_mask_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"padding_mask expects tokens of shape \(batch, length\)"):
        padding_mask(np.zeros((2, 3, 4), "int32"))


# ---- scaled dot-product attention --------------------------------------------------------

def test_known_values_one_query():
    # Two keys; the query matches the first one with score 2/sqrt(4) = 1 vs 0.
    query = np.array([[[1.0, 1.0, 0.0, 0.0]]], "float32")
    key = np.array([[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]]], "float32")
    value = np.array([[[10.0], [20.0]]], "float32")
    output, weights = scaled_dot_product_attention(query, key, value)
    expected = np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum()
    np.testing.assert_allclose(numpy(weights)[0, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(numpy(output)[0, 0], [expected @ [10.0, 20.0]], rtol=1e-6)


@pytest.mark.parametrize("mask_kind", ["none", "causal", "random"])
def test_equals_keras_dot_product_attention(mask_kind):
    # keras.ops.dot_product_attention takes (batch, length, heads, depth).
    query, key, value = random(BATCH, KEYS, HEADS, 8, seed=1), random(BATCH, KEYS, HEADS, 8, seed=2), \
        random(BATCH, KEYS, HEADS, 8, seed=3)
    mask = {"none": None, "causal": numpy(causal_mask(KEYS))[None, None],
            "random": random_mask(BATCH, 1, KEYS, KEYS)}[mask_kind]
    expected = numpy(ops.dot_product_attention(query, key, value, mask=mask))
    heads_first = lambda x: np.transpose(x, (0, 2, 1, 3))  # noqa: E731  (B, H, T, D)
    output, weights = scaled_dot_product_attention(
        heads_first(query), heads_first(key), heads_first(value), mask
    )
    np.testing.assert_allclose(heads_first(numpy(output)), expected, atol=1e-5)
    np.testing.assert_allclose(numpy(weights).sum(-1), 1.0, atol=1e-5)


def test_changing_a_masked_key_or_value_never_changes_the_output():
    query, key, value = random(BATCH, QUERIES, 8, seed=1), random(BATCH, KEYS, 8, seed=2), \
        random(BATCH, KEYS, 8, seed=3)
    mask = random_mask(BATCH, QUERIES, KEYS)
    output, weights = scaled_dot_product_attention(query, key, value, mask)
    assert np.all(numpy(weights)[~mask] == 0.0)
    # Key 6 is masked for some queries only; give it huge values and compare those queries.
    changed_key, changed_value = key.copy(), value.copy()
    changed_key[:, 6] = 1e4
    changed_value[:, 6] = -1e4
    changed, _ = scaled_dot_product_attention(query, changed_key, changed_value, mask)
    blind = ~mask[:, :, 6]
    assert blind.any() and (~blind).any()
    np.testing.assert_array_equal(numpy(changed)[blind], numpy(output)[blind])
    assert not np.allclose(numpy(changed)[~blind], numpy(output)[~blind])


def test_causal_mask_blocks_the_future():
    query, key, value = random(1, 4, 8, seed=1), random(1, 4, 8, seed=2), random(1, 4, 8, seed=3)
    output, weights = scaled_dot_product_attention(query, key, value, causal_mask(4))
    assert np.all(np.triu(numpy(weights)[0], k=1) == 0.0)
    future = value.copy()
    future[:, 3] += 100.0  # only the last query may see the last token
    changed, _ = scaled_dot_product_attention(query, key, future, causal_mask(4))
    np.testing.assert_array_equal(numpy(changed)[:, :3], numpy(output)[:, :3])


def test_fully_masked_row_gives_zero_weights_and_output():
    query, key, value = random(1, 3, 8, seed=1), random(1, 4, 8, seed=2), random(1, 4, 8, seed=3)
    mask = np.ones((1, 3, 4), bool)
    mask[0, 1] = False
    output, weights = scaled_dot_product_attention(query, key, value, mask)
    np.testing.assert_array_equal(numpy(weights)[0, 1], 0.0)
    np.testing.assert_array_equal(numpy(output)[0, 1], 0.0)
    np.testing.assert_allclose(numpy(weights)[0, [0, 2]].sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("query_shape, key_shape, value_shape, match", [
    ((1, 3, 8), (1, 4, 6), (1, 4, 8), "query depth 8 and key depth 6 differ"),
    ((1, 3, 8), (1, 4, 8), (1, 5, 8), "key length 4 and value length 5 differ"),
])
def test_mismatched_shapes_are_rejected(query_shape, key_shape, value_shape, match):
    with pytest.raises(ValueError, match=match):
        scaled_dot_product_attention(random(*query_shape), random(*key_shape), random(*value_shape))


def test_mask_with_wrong_key_length_is_rejected():
    with pytest.raises(ValueError, match="does not match 4 keys"):
        scaled_dot_product_attention(random(1, 3, 8), random(1, 4, 8), random(1, 4, 8),
                                     np.ones((1, 3, 5), bool))


# ---- multi-head attention ----------------------------------------------------------------

def keras_twin(layer):
    """A keras.layers.MultiHeadAttention with the same weights as minicap's ``layer``."""
    twin = keras.layers.MultiHeadAttention(num_heads=layer.num_heads, key_dim=layer.head_dim)
    twin(random(BATCH, QUERIES, DIM), random(BATCH, KEYS, DIM))
    heads, head_dim = layer.num_heads, layer.head_dim
    for ours, theirs in [(layer.query_dense, twin._query_dense), (layer.key_dense, twin._key_dense),
                         (layer.value_dense, twin._value_dense)]:
        kernel, bias = ours.get_weights()  # (D, H*Dh), (H*Dh,)
        theirs.set_weights([kernel.reshape(-1, heads, head_dim), bias.reshape(heads, head_dim)])
    kernel, bias = layer.output_dense.get_weights()  # (H*Dh, D), (D,)
    twin._output_dense.set_weights([kernel.reshape(heads, head_dim, -1), bias])
    return twin


@pytest.mark.parametrize("mask_kind", ["none", "padding", "random"])
def test_multi_head_attention_equals_keras(mask_kind):
    layer = MultiHeadAttention(model_dim=DIM, num_heads=HEADS)
    query, value = random(BATCH, QUERIES, DIM, seed=1), random(BATCH, KEYS, DIM, seed=2)
    layer(query, value)
    twin = keras_twin(layer)
    mask = {"none": None, "padding": np.broadcast_to(random_mask(BATCH, 1, KEYS), (BATCH, QUERIES, KEYS)),
            "random": random_mask(BATCH, QUERIES, KEYS)}[mask_kind]
    expected, expected_weights = twin(query, value, attention_mask=mask, return_attention_scores=True)
    fused = layer(query, value, attention_mask=mask)
    output, weights = layer(query, value, attention_mask=mask, return_attention_scores=True)
    np.testing.assert_allclose(numpy(fused), numpy(expected), atol=1e-5)
    np.testing.assert_allclose(numpy(output), numpy(expected), atol=1e-5)
    np.testing.assert_allclose(numpy(weights), numpy(expected_weights), atol=1e-5)
    assert numpy(weights).shape == (BATCH, HEADS, QUERIES, KEYS)


def test_multi_head_attention_two_dimensional_causal_mask():
    layer = MultiHeadAttention(model_dim=DIM, num_heads=HEADS)
    tokens = random(BATCH, 6, DIM)
    output = numpy(layer(tokens, tokens, attention_mask=causal_mask(6)))
    changed = tokens.copy()
    changed[:, 5] += 10.0  # the last token is the future of every other query
    changed_output = numpy(layer(changed, changed, attention_mask=causal_mask(6)))
    np.testing.assert_allclose(changed_output[:, :5], output[:, :5], atol=1e-6)
    assert not np.allclose(changed_output[:, 5], output[:, 5])


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("return_weights", [False, True], ids=["fused", "weights"])
def test_mixed_precision_fully_masked_rows_are_finite_and_zero(policy, return_weights):
    keras.mixed_precision.set_global_policy(policy)
    layer = MultiHeadAttention(model_dim=DIM, num_heads=HEADS)
    # Large inputs give large scores: a softmax in float16 would lose most weights.
    query, value = 30.0 * random(BATCH, QUERIES, DIM, seed=1), 30.0 * random(BATCH, KEYS, DIM, seed=2)
    mask = random_mask(BATCH, QUERIES, KEYS)
    mask[0, 2] = False  # query 2 of the first example may attend to nothing
    mask[1] = False  # nor may any query of the second example
    result = layer(query, value, attention_mask=mask, return_attention_scores=return_weights)
    output = result[0] if return_weights else result
    assert keras.backend.standardize_dtype(output.dtype) == policy.split("_")[1]
    output = numpy(ops.cast(output, "float32"))
    assert np.all(np.isfinite(output))
    # With no key to attend to, the attention result is zero and the layer returns its bias.
    bias = layer.output_dense.get_weights()[1]
    np.testing.assert_allclose(output[0, 2], bias, atol=1e-2)
    np.testing.assert_allclose(output[1], np.broadcast_to(bias, output[1].shape), atol=1e-2)
    if return_weights:
        weights = numpy(ops.cast(result[1], "float32"))
        assert np.all(np.isfinite(weights))
        np.testing.assert_array_equal(weights[0, :, 2], 0.0)
        np.testing.assert_array_equal(weights[1], 0.0)
        np.testing.assert_allclose(weights[0, :, [0, 1, 3, 4]].sum(-1), 1.0, atol=2e-2)


def test_dropout_changes_the_output_in_training_only_and_keeps_the_weights():
    layer = MultiHeadAttention(model_dim=DIM, num_heads=HEADS, dropout=0.5)
    query, value = random(BATCH, QUERIES, DIM, seed=1), random(BATCH, KEYS, DIM, seed=2)
    inference, weights = layer(query, value, return_attention_scores=True)
    training, training_weights = layer(query, value, return_attention_scores=True, training=True)
    assert not np.allclose(numpy(training), numpy(inference))
    np.testing.assert_allclose(numpy(training_weights), numpy(weights), atol=1e-6)
    np.testing.assert_allclose(numpy(layer(query, value)), numpy(inference), atol=1e-5)


def test_cached_pieces_equal_a_full_call():
    layer = MultiHeadAttention(model_dim=DIM, num_heads=HEADS)
    query, value = random(BATCH, QUERIES, DIM, seed=1), random(BATCH, KEYS, DIM, seed=2)
    key_heads, value_heads = layer.project_key_value(value)
    assert tuple(key_heads.shape) == (BATCH, KEYS, HEADS, DIM // HEADS)
    np.testing.assert_allclose(numpy(layer.attend(query, key_heads, value_heads)),
                               numpy(layer(query, value)), atol=1e-6)


def test_model_dim_not_divisible_by_heads_is_rejected():
    with pytest.raises(ValueError, match="model_dim 10 is not divisible by num_heads 4"):
        MultiHeadAttention(model_dim=10, num_heads=4)
    with pytest.raises(ValueError, match="num_heads must be at least 1, got 0"):
        MultiHeadAttention(model_dim=8, num_heads=0)


def test_multi_head_attention_rejects_mismatched_shapes():
    layer = MultiHeadAttention(model_dim=DIM, num_heads=HEADS)
    with pytest.raises(ValueError, match="query width 12 does not match model_dim 16"):
        layer(random(BATCH, QUERIES, 12), random(BATCH, KEYS, DIM))
    layer = MultiHeadAttention(model_dim=DIM, num_heads=HEADS)
    with pytest.raises(ValueError, match="key length 7 and value length 6 differ"):
        layer(random(BATCH, QUERIES, DIM), random(BATCH, 6, DIM), key=random(BATCH, KEYS, DIM))
    layer(random(BATCH, QUERIES, DIM), random(BATCH, KEYS, DIM))
    with pytest.raises(ValueError, match="does not match 7 keys"):
        layer(random(BATCH, QUERIES, DIM), random(BATCH, KEYS, DIM),
              attention_mask=np.ones((BATCH, QUERIES, 3), bool))


def test_multi_head_attention_config_and_saving(tmp_path):
    layer = MultiHeadAttention(model_dim=DIM, num_heads=HEADS, dropout=0.1, use_bias=False)
    query, value = random(BATCH, QUERIES, DIM, seed=1), random(BATCH, KEYS, DIM, seed=2)
    output = check_layer(layer, [query, value], tmp_path)
    assert output.shape == (BATCH, QUERIES, DIM)
    config = layer.get_config()
    assert (config["model_dim"], config["num_heads"], config["dropout"], config["use_bias"]) == \
        (DIM, HEADS, 0.1, False)
