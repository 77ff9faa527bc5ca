"""Tests for the captioning batches and the feature cache."""
import keras
import numpy as np
import pytest
from PIL import Image

from minicap.data.pipeline import CaptionBatches
from minicap.data.shapes import make_shapes
from minicap.text import Tokenizer

# Independent of Keras's backend (or runs each backend itself): runs once, on the default one.
pytestmark = pytest.mark.single_backend

CAPTIONS = [["a red circle", "a circle"], ["a blue square", "a square", "blue"], ["a green cross", "cross"]]


@pytest.fixture
def setup():
    images = np.arange(3 * 4 * 4 * 3, dtype=np.uint8).reshape(3, 4, 4, 3)
    tok = Tokenizer.fit([c for refs in CAPTIONS for c in refs])
    return images, tok


def _all_rows(batches):
    return [batches[i] for i in range(len(batches))]


def test_shift_and_shapes(setup):
    images, tok = setup
    batches = CaptionBatches(images, CAPTIONS, tok, max_length=5, batch_size=3, shuffle=False)
    assert len(batches) == 3 and batches.num_pairs == 7
    (x, inputs), targets = batches[0]
    assert x.shape == (3, 4, 4, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x, images[[0, 0, 1]] / 255.0)
    assert inputs.shape == targets.shape == (3, 5) and inputs.dtype == targets.dtype == np.int32
    full = tok.encode("a red circle", 6)[0]
    np.testing.assert_array_equal(inputs[0], full[:-1])
    np.testing.assert_array_equal(targets[0], full[1:])
    assert inputs[0, 0] == tok.start_id
    assert tok.decode(targets[0]) == "a red circle" and targets[0, 3] == tok.end_id and targets[0, 4] == 0
    (x, inputs), targets = batches[2]
    assert len(x) == 1  # 7 pairs in batches of 3


def test_all_references_each_once_per_epoch(setup):
    images, tok = setup
    batches = CaptionBatches(images, CAPTIONS, tok, max_length=6, batch_size=2, seed=1)
    for _ in range(2):
        seen = sorted(tok.decode(t) for b in _all_rows(batches) for t in b[1])
        assert seen == sorted(c for refs in CAPTIONS for c in refs)
        batches.on_epoch_end()


def test_random_reference_one_pair_per_image(setup):
    images, tok = setup
    batches = CaptionBatches(images, CAPTIONS, tok, max_length=6, batch_size=2, references="random", seed=0)
    assert batches.num_pairs == 3 and len(batches) == 2
    drawn = []
    for _ in range(8):
        rows = _all_rows(batches)
        pixels = np.concatenate([b[0][0] for b in rows])
        texts = [tok.decode(t) for b in rows for t in b[1]]
        indices = [int(np.argmin(np.abs(images / 255.0 - p).sum(axis=(1, 2, 3)))) for p in pixels]
        assert sorted(indices) == [0, 1, 2]  # each image exactly once per epoch
        for index, text in zip(indices, texts):
            assert text in CAPTIONS[index]
        drawn.append(tuple(sorted(texts)))
        batches.on_epoch_end()
    assert len(set(drawn)) > 1  # a different reference is drawn in a later epoch


def test_shuffle_is_seeded(setup):
    images, tok = setup
    first = CaptionBatches(images, CAPTIONS, tok, 6, batch_size=7, seed=3)[0][1]
    again = CaptionBatches(images, CAPTIONS, tok, 6, batch_size=7, seed=3)[0][1]
    other = CaptionBatches(images, CAPTIONS, tok, 6, batch_size=7, seed=4)[0][1]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_set_epoch_reproduces_an_epoch(setup):
    images, tok = setup
    batches = CaptionBatches(images, CAPTIONS, tok, 6, batch_size=7, seed=3)
    batches.on_epoch_end()
    batches.on_epoch_end()
    third = batches[0][1]
    fresh = CaptionBatches(images, CAPTIONS, tok, 6, batch_size=7, seed=3)
    fresh.set_epoch(2)
    np.testing.assert_array_equal(fresh[0][1], third)
    fresh.set_epoch(0)
    assert not np.array_equal(fresh[0][1], third)


def test_file_paths(setup, tmp_path):
    images, tok = setup
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).resize((8, 8), Image.NEAREST).save(paths[-1])
    batches = CaptionBatches(paths, CAPTIONS, tok, 5, batch_size=7, shuffle=False, image_size=4)
    (x, _), _ = batches[0]
    assert x.shape == (7, 4, 4, 3)
    np.testing.assert_allclose(x[0], images[0] / 255.0, atol=2 / 255)
    with pytest.raises(ValueError, match="pass image_size"):
        CaptionBatches(paths, CAPTIONS, tok, 5)


def test_trains_with_fit(setup):
    data = make_shapes(16, seed=0, image_size=32)
    tok = Tokenizer.fit([c for refs in data.captions for c in refs])
    batches = CaptionBatches(data.images, data.captions, tok, max_length=24, batch_size=16)
    image_in = keras.Input((32, 32, 3))
    tokens_in = keras.Input((24,), dtype="int32")
    pooled = keras.layers.Dense(8)(keras.layers.GlobalAveragePooling2D()(image_in))
    embedded = keras.layers.Embedding(len(tok), 8)(tokens_in)
    mixed = embedded + keras.ops.expand_dims(pooled, 1)
    model = keras.Model([image_in, tokens_in], keras.layers.Dense(len(tok))(mixed))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(batches, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"captions": CAPTIONS[:2]}, "3 images, got 2 caption lists"),
        ({"captions": [["a"], "a red circle", ["b"]]}, r"captions\[1\] must be a non-empty list"),
        ({"captions": [["a"], [], ["b"]]}, r"captions\[1\] must be a non-empty list"),
        ({"references": "first"}, "references must be one of"),
        ({"batch_size": 0}, "batch_size must be an int >= 1"),
        ({"max_length": 0}, "max_length must be an int >= 1"),
        ({"images": np.zeros((3, 4, 4))}, r"images must be \(num_images, height, width, 3\)"),
    ],
)
def test_bad_arguments(setup, change, message):
    images, tok = setup
    kwargs = {"images": images, "captions": CAPTIONS, "tokenizer": tok, "max_length": 5, **change}
    with pytest.raises(ValueError, match=message):
        CaptionBatches(**kwargs)


def test_word_dropout_replaces_input_words_only(setup):
    images, tok = setup
    many = [["a red circle a blue square a green cross"]] * 3
    tok = Tokenizer.fit([c for refs in many for c in refs])
    plain = CaptionBatches(images, many, tok, max_length=12, batch_size=3, shuffle=False)
    dropped = CaptionBatches(images, many, tok, max_length=12, batch_size=3, shuffle=False, word_dropout=0.5)
    (_, clean), clean_targets = plain[0]
    (_, inputs), targets = dropped[0]
    np.testing.assert_array_equal(targets, clean_targets)  # the targets keep every word
    changed = inputs != clean
    assert np.all(inputs[changed] == tok.unk_id)
    words = ~np.isin(clean, [tok.pad_id, tok.start_id, tok.end_id])
    assert not np.any(changed & ~words)  # [START], [END] and [PAD] never drop
    assert 0.25 < changed[words].mean() < 0.75  # 27 words, each dropped with probability 0.5
    (_, again), _ = dropped[0]
    np.testing.assert_array_equal(again, inputs)  # fixed by (seed, epoch, batch index)
    dropped.on_epoch_end()
    (_, next_epoch), _ = dropped[0]
    assert np.any(next_epoch != inputs)


def test_word_dropout_bad_value(setup):
    images, tok = setup
    for bad in (-0.1, 1.0, "0.2"):
        with pytest.raises(ValueError, match="word_dropout must be a probability in"):
            CaptionBatches(images, CAPTIONS, tok, max_length=5, word_dropout=bad)
