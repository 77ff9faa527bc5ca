import keras
import numpy as np
import pytest

from minicap.generate import Generator, caption
from minicap.model import CaptionConfig, CaptionModel
from tests.support.stand_ins import TableModel, prefix_code, prefix_rows, table_images

VOCAB, START, END, PAD = 12, 1, 2, 0


@pytest.fixture(scope="module")
def model():
    config = CaptionConfig(vocab_size=VOCAB, max_length=7, image_size=16, patch_size=8, model_dim=16,
                           num_heads=2, encoder_layers=1, decoder_layers=2, mlp_dim=32, dropout=0.0)
    model = CaptionModel(config)
    # Random weights drawn by NumPy, not by the backend's generator, so the test model, and every caption
    # it writes, is the same on TensorFlow, JAX and PyTorch. Zero biases and unit scales stay as they are.
    rng = np.random.default_rng(1)
    for variable in model.weights:
        value = keras.ops.convert_to_numpy(variable)
        if value.std() > 0:
            scale = np.sqrt(2.0 / (value.shape[0] + value.shape[-1])) if value.ndim > 1 else 0.05  # ~Glorot
            variable.assign(rng.normal(0.0, scale, value.shape).astype("float32"))
    # Make [END] likely enough that some captions end before max_length and others do not.
    kernel, bias = model.head.get_weights()
    bias[END] += 2.0
    model.head.set_weights([kernel * 4.0, bias])
    return model


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((5, 16, 16, 3)).astype("float32")


@pytest.fixture(scope="module")
def generator(model):
    return Generator(model, START, END, PAD)


def reference_greedy(model, images, max_length):
    """Greedy decoding written the plainest way: a Python loop over full forward passes."""
    tokens = np.zeros((len(images), max_length + 1), "int32")
    tokens[:, 0] = START
    done = np.zeros(len(images), bool)
    for step in range(max_length):
        logits = keras.ops.convert_to_numpy(model((images, tokens[:, :max_length]), training=False))[:, step]
        logits[:, [PAD, START]] = -np.inf
        word = np.where(done, PAD, logits.argmax(-1))
        tokens[:, step + 1] = word
        done |= word == END
    return tokens


def test_greedy_matches_a_plain_loop_and_the_naive_rerun(model, generator, images):
    cached = generator.greedy(images)
    assert cached.shape == (5, 8) and cached.dtype == np.int32
    np.testing.assert_array_equal(cached, reference_greedy(model, images, 7))
    np.testing.assert_array_equal(cached, generator.greedy(images, cached=False))


def test_captions_end_at_end_then_pad(generator, images):
    tokens = generator.greedy(images)
    assert (tokens[:, 0] == START).all()
    ended = 0
    for row in tokens:
        if END in row:
            ended += 1
            assert (row[list(row).index(END) + 1:] == PAD).all()
        assert PAD not in row[1:][: (list(row).index(END) if END in row else len(row))]
    assert 0 < ended < len(tokens)  # the test model ends some captions early, not all


def test_beam_search_cached_equals_naive(generator, images):
    for width, penalty in ((3, 0.6), (4, 0.0)):
        cached = generator.beam_search(images, beam_width=width, length_penalty=penalty)
        np.testing.assert_array_equal(cached, generator.beam_search(images, width, penalty, cached=False))


def test_beam_of_width_one_is_greedy(generator, images):
    np.testing.assert_array_equal(generator.beam_search(images, beam_width=1), generator.greedy(images))


def test_beam_search_finds_a_likelier_caption_than_greedy(model, generator, images):
    def log_probability(tokens):
        logits = keras.ops.convert_to_numpy(model((images, tokens[:, :-1]), training=False))
        logits[..., [PAD, START]] = -1e9
        log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
        picked = np.take_along_axis(log_probs, tokens[:, 1:, None], -1)[..., 0]
        real = np.cumsum(tokens[:, 1:] == END, axis=1) - (tokens[:, 1:] == END) == 0  # up to and with [END]
        return (picked * real).sum(-1)

    beam = generator.beam_search(images, beam_width=5, length_penalty=0.0)
    greedy = generator.greedy(images)
    beam_score, greedy_score = log_probability(beam), log_probability(greedy)
    assert (beam_score >= greedy_score - 1e-4).all()  # no caption less likely than greedy's
    # And better for some image (image 2, by 1.15 nats): greedy's own captions would not pass.
    assert (beam_score > greedy_score + 0.1).any()


def test_sampling_cached_equals_naive_and_depends_on_the_seed(generator, images):
    first = generator.sample(images, temperature=1.5, seed=3)
    np.testing.assert_array_equal(first, generator.sample(images, temperature=1.5, seed=3, cached=False))
    np.testing.assert_array_equal(first, generator.sample(images, temperature=1.5, seed=3))
    assert not np.array_equal(first, generator.sample(images, temperature=1.5, seed=4))


def test_top_k_of_one_is_greedy(generator, images):
    np.testing.assert_array_equal(generator.sample(images, top_k=1, seed=0), generator.greedy(images))


def test_caption_returns_strings(model, images):
    class Vocabulary:
        start_id, end_id, pad_id = START, END, PAD

        def decode_batch(self, tokens):
            return [" ".join(str(t) for t in row[1:] if t not in (PAD, END)) for row in tokens]

    texts = caption(model, Vocabulary(), images, method="beam", beam_width=2)
    assert len(texts) == 5 and all(isinstance(t, str) for t in texts)
    with pytest.raises(ValueError, match="unknown decoding method 'nucleus'"):
        caption(model, Vocabulary(), images, method="nucleus")


def test_a_generator_sees_weights_changed_after_it_compiled(model, images):
    generator = Generator(model, START, END, PAD)
    before = generator.greedy(images)
    kernel, bias = model.head.get_weights()
    try:
        shifted = bias.copy()
        shifted[5] += 100.0  # word 5 now always wins
        model.head.set_weights([kernel, shifted])
        after = generator.greedy(images)
        assert (after[:, 1:] == 5).all() and not np.array_equal(before, after)
    finally:
        model.head.set_weights([kernel, bias])


def test_bad_inputs(generator, images):
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 16, 16, 3\).*\(5, 32, 32, 3\)"):
        generator.greedy(np.zeros((5, 32, 32, 3), "float32"))
    with pytest.raises(ValueError, match="expected float images in \\[0, 1\\], got dtype uint8"):
        generator.greedy((images * 255).astype("uint8"))
    with pytest.raises(ValueError, match="temperature must be positive"):
        generator.sample(images, temperature=0)
    with pytest.raises(ValueError, match="top_k must be in"):
        generator.sample(images, top_k=99)
    with pytest.raises(ValueError, match="beam_width must be at least 1"):
        generator.beam_search(images, beam_width=0)
    with pytest.raises(ValueError, match="exceeds the model's 7 positions"):
        Generator(generator.model, START, END, PAD, max_length=9)


# ---------------------------------------------------------------- known answers
# A TableModel (tests/stand_ins.py) reads its logits from a table, so what each decoder must return
# is known: the best caption of an exhaustive search, the sampling distribution, the greedy caption.

TABLE_VOCAB, TABLE_LENGTH = 6, 3  # [PAD], [START], [END] and three words; captions of up to 3 tokens
WORDS = (3, 4, 5)


def allowed_log_probs(logits):
    """log softmax over the tokens a decoder may write: never [PAD] or [START]."""
    logits = np.array(logits, "float64")
    logits[[PAD, START]] = -np.inf
    return logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()


def length_penalty(length, alpha):
    """generate.py's definition: ((5 + length) / 6) ** alpha, the length counting [END]."""
    return ((5.0 + length) / 6.0) ** alpha


def exhaustive_search(tables, kind, alpha):
    """Every caption the stand-in can write for an image of ``kind`` with its length-normalised
    score, best first: ``[(score, [words..., END]), ...]``."""
    ranked = []

    def extend(prefix, total):
        log_probs = allowed_log_probs(tables[kind, prefix_code(prefix, TABLE_VOCAB)])
        for word in (END, *WORDS):
            caption, score = prefix + [word], total + log_probs[word]
            if word == END or len(caption) == TABLE_LENGTH:
                ranked.append((score / length_penalty(len(caption), alpha), caption))
            else:
                extend(caption, score)

    extend([], 0.0)
    return sorted(ranked, key=lambda entry: -entry[0])


def as_tokens(caption):
    return [START, *caption] + [PAD] * (TABLE_LENGTH - len(caption))


def table(rows=None, kinds=1):
    """Tables of uniform logits over the allowed tokens, with ``rows`` = ``{(kind, prefix): {token:
    probability}}`` set (the probabilities of each row sum to 1; unnamed tokens get ~0)."""
    tables = np.zeros((kinds, prefix_rows(TABLE_VOCAB, TABLE_LENGTH), TABLE_VOCAB), "float32")
    for (kind, prefix), probabilities in (rows or {}).items():
        row = np.full(TABLE_VOCAB, np.log(1e-6))
        for token, probability in probabilities.items():
            row[token] = np.log(probability)
        tables[kind, prefix_code(prefix, TABLE_VOCAB)] = row
    return tables


def test_length_penalty_by_hand():
    # ((5 + 2) / 6) ** 0.6 = 1.16667 ** 0.6 = exp(0.6 * 0.15415) = 1.09690; one token: 1.
    assert length_penalty(2, 0.6) == pytest.approx(1.09690, abs=1e-5)
    assert length_penalty(1, 0.6) == 1.0 and length_penalty(3, 0.0) == 1.0


def test_beam_search_returns_the_best_caption_of_an_exhaustive_search():
    tables = np.random.default_rng(0).normal(0.0, 2.0, (4, prefix_rows(TABLE_VOCAB, TABLE_LENGTH), TABLE_VOCAB))
    model = TableModel(tables, TABLE_LENGTH)
    generator, images = Generator(model, START, END, PAD), table_images(range(4))
    # 40 beams hold every hypothesis of up to 3 tokens (4 + 13 + 40 ...), so nothing is pruned.
    for alpha in (0.0, 0.6, 1.0):
        beam = generator.beam_search(images, beam_width=40, length_penalty=alpha)
        for kind in range(4):
            ranked = exhaustive_search(tables, kind, alpha)
            assert ranked[0][0] - ranked[1][0] > 1e-4  # a clear winner, whatever the float rounding
            assert beam[kind].tolist() == as_tokens(ranked[0][1]), (alpha, kind)
        np.testing.assert_array_equal(beam, generator.beam_search(images, 40, alpha, cached=False))


def test_narrow_beam_finds_the_best_caption_where_greedy_does_not():
    a, b, c = WORDS
    tables = table({
        # Image 0: greedy takes a (0.5) and then ends (0.3): "a [END]", probability 0.15. The best is
        # b (0.4) and [END] (0.9): probability 0.36, score log(0.36) / ((5 + 2) / 6) ** 0.6 =
        # -1.02165 / 1.09690 = -0.93140.
        (0, ()): {END: 0.1, a: 0.5, b: 0.4}, (0, (a,)): {END: 0.3, a: 0.25, b: 0.25, c: 0.2},
        (0, (b,)): {END: 0.9, a: 0.05, b: 0.03, c: 0.02},
        # Image 1: "[END]" at once has log(0.368) = -0.99967; "a b [END]" has log(0.632 * 0.75 *
        # 0.668) = -1.15003, which the length penalty of 3 tokens, ((5 + 3) / 6) ** 0.6 = 1.18840,
        # lifts to -0.96771: the longer caption wins with the penalty, the shorter one without.
        (1, ()): {END: 0.368, a: 0.632}, (1, (a,)): {END: 0.15, a: 0.05, b: 0.75, c: 0.05},
        (1, (a, b)): {END: 0.668, a: 0.332 / 3, b: 0.332 / 3, c: 0.332 / 3},
        # Image 2: as image 1, but "a b [END]" has log(0.632 * 0.75 * 0.6325) = -1.20462, -1.01365 with
        # the penalty: "[END]" (-0.99967) wins by 0.014. Were [END] left out of the length, the penalties
        # would be ((5 + 0) / 6) ** 0.6 = 0.89638 and ((5 + 2) / 6) ** 0.6 = 1.09690, and "a b [END]" would
        # win (-1.09820 against -1.11524).
        (2, ()): {END: 0.368, a: 0.632}, (2, (a,)): {END: 0.15, a: 0.05, b: 0.75, c: 0.05},
        (2, (a, b)): {END: 0.6325, a: 0.3675 / 3, b: 0.3675 / 3, c: 0.3675 / 3},
    }, kinds=3)
    model = TableModel(tables, TABLE_LENGTH)
    generator, images = Generator(model, START, END, PAD), table_images([0, 1, 2])
    best = exhaustive_search(tables, 0, 0.6)[0]
    assert best[1] == [b, END] and best[0] == pytest.approx(-0.93140, abs=1e-4)
    assert exhaustive_search(tables, 1, 0.6)[0][1] == [a, b, END]
    assert exhaustive_search(tables, 1, 0.0)[0][1] == [END]
    assert exhaustive_search(tables, 2, 0.6)[0][1] == [END]
    assert generator.greedy(images)[0].tolist() == as_tokens([a, END])
    for cached in (True, False):
        assert generator.beam_search(images, 2, 0.6, cached=cached).tolist() == [
            as_tokens([b, END]), as_tokens([a, b, END]), as_tokens([END])]
        assert generator.beam_search(images, 2, 0.0, cached=cached)[1].tolist() == as_tokens([END])


# Frequencies of sampled first words against softmax(logits / T). Each frequency of N draws is a
# binomial proportion with standard deviation sqrt(p (1 - p) / N); a bound of 4 of them is exceeded by
# chance with probability below 1e-4 per token (and the draws are seeded: the outcome is fixed). The
# settings below differ from each other (and from T = 1) by 0.1 or more in some probability, about 9
# standard deviations: a sampler that ignored T or top_k would fail.
DRAWS = 2000
FIRST_LOGITS = {PAD: 5.0, START: 5.0, END: 0.5, 3: 1.5, 4: 1.0, 5: -0.5}  # [PAD] and [START] never drawn


@pytest.mark.parametrize("temperature, top_k", [(1.0, 0), (0.5, 0), (2.0, 0), (2.0, 2), (0.5, 3)])
def test_sampled_first_words_follow_softmax_of_logits_over_temperature(temperature, top_k):
    tables = np.zeros((1, prefix_rows(TABLE_VOCAB, TABLE_LENGTH), TABLE_VOCAB), "float32")
    tables[0, 0, list(FIRST_LOGITS)] = list(FIRST_LOGITS.values())
    generator = Generator(TableModel(tables, TABLE_LENGTH), START, END, PAD, max_length=1)
    first = generator.sample(table_images([0] * DRAWS), temperature, top_k, seed=7)[:, 1]
    logits = np.array([FIRST_LOGITS[token] for token in range(TABLE_VOCAB)]) / temperature
    logits[[PAD, START]] = -np.inf
    if top_k:
        logits[logits < np.sort(logits)[-top_k]] = -np.inf
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    frequencies = np.bincount(first, minlength=TABLE_VOCAB) / DRAWS
    bound = 4 * np.sqrt(expected * (1 - expected) / DRAWS)
    assert (np.abs(frequencies - expected) <= bound).all(), (frequencies.round(3), expected.round(3))
    if top_k:  # the bound is 0 where the probability is: every draw lies in the top k
        assert set(first) <= set(np.argsort(logits)[-top_k:])


def test_sampling_approaches_greedy_as_temperature_goes_to_zero():
    rng = np.random.default_rng(1)
    tables = rng.normal(0.0, 2.0, (4, prefix_rows(TABLE_VOCAB, TABLE_LENGTH), TABLE_VOCAB))
    allowed = [END, *WORDS]
    tables[..., allowed] += 0.1 * np.argsort(np.argsort(tables[..., allowed], axis=-1), axis=-1)  # gaps >= 0.1
    # At T = 1e-3 a logit gap of g becomes 1000 g, and Gumbel noise of uniforms in [1e-9, 1) spans
    # less than 24: gaps of 0.025 or more make the sample the argmax whatever the noise.
    ordered = np.sort(tables[..., allowed], axis=-1)
    assert (ordered[..., -1] - ordered[..., -2]).min() > 0.025
    generator = Generator(TableModel(tables, TABLE_LENGTH), START, END, PAD)
    images = table_images(np.arange(200) % 4)
    greedy = generator.greedy(images)
    np.testing.assert_array_equal(generator.sample(images, temperature=1e-3, seed=5), greedy)
    assert not np.array_equal(generator.sample(images, temperature=1.0, seed=5), greedy)  # the noise matters


def test_the_naive_decoder_that_encodes_once_writes_the_same_captions(model, generator, images):
    cached = generator.greedy(images)
    np.testing.assert_array_equal(generator.greedy(images, cached=False, reencode=False), cached)
    np.testing.assert_array_equal(generator.greedy(images, cached=False, reencode=True), cached)
