import keras
import numpy as np
import pytest

from minicap.generate import Generator, caption
from minicap.model import CaptionConfig, CaptionModel

VOCAB, START, END, PAD = 12, 1, 2, 0


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(1)
    config = CaptionConfig(vocab_size=VOCAB, max_length=7, image_size=16, patch_size=8, model_dim=16,
                           num_heads=2, encoder_layers=1, decoder_layers=2, mlp_dim=32, dropout=0.0)
    model = CaptionModel(config)
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
    assert 0 < ended  # the test model ends some captions early


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
    assert (log_probability(beam) >= log_probability(greedy) - 1e-4).all()


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
