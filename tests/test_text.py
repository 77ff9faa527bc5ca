"""Tests for the word-level tokenizer."""
import json

import numpy as np
import pytest

from minicap.text import SPECIAL_TOKENS, Tokenizer, standardize

# Independent of Keras's backend (or runs each backend itself): runs once, on the default one.
pytestmark = pytest.mark.single_backend


@pytest.fixture
def tok():
    return Tokenizer.fit(["a red circle", "a blue square", "A red square."])


def test_standardize_lowercases_and_strips_punctuation():
    assert standardize("  A small, RED circle!  ") == "a small red circle"
    assert standardize("left-of_it") == "left of it"


def test_specials_come_first_and_words_by_frequency(tok):
    assert tok.vocabulary[:4] == list(SPECIAL_TOKENS)
    assert (tok.pad_id, tok.start_id, tok.end_id, tok.unk_id) == (0, 1, 2, 3)
    # a:3, red:2, square:2, then blue, circle (ties alphabetical)
    assert tok.vocabulary[4:] == ["a", "red", "square", "blue", "circle"]
    assert len(tok) == 9


def test_max_tokens_and_min_count():
    texts = ["a a a b b c"]
    assert Tokenizer.fit(texts, max_tokens=6).vocabulary[4:] == ["a", "b"]
    assert Tokenizer.fit(texts, min_count=2).vocabulary[4:] == ["a", "b"]
    assert Tokenizer.fit(texts, min_count=3).vocabulary[4:] == ["a"]


def test_encode_known_ids_and_padding(tok):
    ids = tok.encode(["a red circle", "blue"], max_length=6)
    assert ids.dtype == np.int32 and ids.shape == (2, 6)
    np.testing.assert_array_equal(ids, [[1, 4, 5, 8, 2, 0], [1, 7, 2, 0, 0, 0]])
    np.testing.assert_array_equal(tok.encode("a green circle", 5), [[1, 4, 3, 8, 2]])
    assert tok.truncated == 0


def test_encode_truncates_keeping_end(tok):
    truncated = r"1 of 2 caption\(s\) longer than 3 words \(with \[START\] and \[END\], 5 tokens\)"
    with pytest.warns(UserWarning, match=truncated):
        ids = tok.encode(["a red circle a blue square", "a red"], max_length=5)
    np.testing.assert_array_equal(ids[0], [1, 4, 5, 8, 2])
    assert tok.truncated == 1
    assert tok.decode(ids[0]) == "a red circle"


def test_decode_skips_start_pad_and_stops_at_end(tok):
    assert tok.decode([1, 4, 0, 5, 2, 6, 7]) == "a red"
    assert tok.decode(np.array([4, 3])) == "a [UNK]"
    assert tok.decode_batch(np.array([[1, 4, 2], [1, 6, 2]])) == ["a", "square"]
    round_trip = tok.decode_batch(tok.encode(["a red square", "a blue circle"], 8))
    assert round_trip == ["a red square", "a blue circle"]


def test_decode_bad_ids(tok):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([1, 99])
    with pytest.raises(ValueError, match="decode_batch"):
        tok.decode(np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="2-D"):
        tok.decode_batch([1, 2])


def test_fit_errors():
    with pytest.raises(ValueError, match="empty vocabulary"):
        Tokenizer.fit([])
    with pytest.raises(ValueError, match="empty vocabulary"):
        Tokenizer.fit(["", "  ...  "])
    with pytest.raises(ValueError, match="empty vocabulary"):
        Tokenizer.fit(["a b"], min_count=2)
    with pytest.raises(ValueError, match=r"texts\[1\] must be a str, got int"):
        Tokenizer.fit(["a b", 3])
    with pytest.raises(ValueError, match="max_tokens"):
        Tokenizer.fit(["a b"], max_tokens=4)
    with pytest.raises(ValueError, match="min_count"):
        Tokenizer.fit(["a b"], min_count=0)


def test_encode_errors(tok):
    with pytest.raises(ValueError, match=r"texts\[0\] must be a str"):
        tok.encode([None], 5)
    with pytest.raises(ValueError, match="max_length must be an int >= 2"):
        tok.encode("a", 1)


def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.vocabulary == tok.vocabulary
    np.testing.assert_array_equal(loaded.encode("a red circle", 6), tok.encode("a red circle", 6))


@pytest.mark.parametrize(
    "vocabulary, message",
    [
        (["a", "[START]", "[END]", "[UNK]", "b"], "must start with the special tokens"),
        (list(SPECIAL_TOKENS) + ["a", "b", "a"], "'a' appears twice"),
        (list(SPECIAL_TOKENS) + ["a", 7], r"vocabulary\[5\] must be a non-empty str"),
        ("[PAD] [START]", "must be a list of str"),
    ],
)
def test_load_rejects_tampered_file(tok, tmp_path, vocabulary, message):
    path = tmp_path / "tok.json"
    tok.save(path)
    config = json.loads(path.read_text())
    config["vocabulary"] = vocabulary
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"tok.json.*{message}"):
        Tokenizer.load(path)


def test_load_rejects_non_json_and_missing(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        Tokenizer.load(path)
    path.write_text('{"vocabulary": ["[PAD]"]}')
    with pytest.raises(ValueError, match="bad.json.*not a minicap tokenizer"):
        Tokenizer.load(path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Tokenizer.load(tmp_path / "missing.json")
