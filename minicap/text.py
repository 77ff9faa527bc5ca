"""Words to token ids and back: a word-level tokenizer (chapter 5).

A captioning model writes one token at a time from a fixed vocabulary. Word-level tokens keep the
vocabulary readable: standardise the text (lower case, punctuation removed), split it on spaces,
and number the words seen in the training captions, most frequent first. Four special tokens come
first and never change place:

- ``[PAD]`` = 0 fills a sequence up to ``max_length``; it is masked out of the loss.
- ``[START]`` = 1 is the first input token: "begin the caption".
- ``[END]`` = 2 is the last token: "the caption is finished"; decoding stops there.
- ``[UNK]`` = 3 stands for any word outside the vocabulary.

Pure Python and numpy, so it runs the same on every Keras backend; saved as JSON (no pickle).
"""
import collections
import json
import os
import re
import warnings

import numpy as np

__all__ = ["Tokenizer", "standardize"]

PAD, START, END, UNK = "[PAD]", "[START]", "[END]", "[UNK]"
SPECIAL_TOKENS = (PAD, START, END, UNK)
_FORMAT = "minicap.tokenizer"
_PUNCTUATION = re.compile(r"[^\w\s]|_")


def standardize(text):
    """Lower-case ``text``, replace punctuation with spaces and collapse runs of whitespace.

    >>> standardize("A small, RED circle!")
    'a small red circle'
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a caption string (a str), got {type(text).__name__}: {text!r}")
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def _check_texts(texts, argument="texts"):
    """Return ``texts`` as a list of str, or raise a ValueError naming the first non-str item."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, np.ndarray):
        texts = texts.tolist()
    try:
        texts = list(texts)
    except TypeError:
        raise ValueError(f"{argument} must be a str or a list of str, got {type(texts).__name__}") from None
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(
                f"{argument}[{index}] must be a str, got {type(text).__name__}: {text!r}"
            )
    return texts


class Tokenizer:
    """A word-level vocabulary with ``[PAD]=0``, ``[START]=1``, ``[END]=2``, ``[UNK]=3``.

    Build one with :meth:`Tokenizer.fit` on training captions, or :meth:`Tokenizer.load` from JSON.

    Args:
        vocabulary: every token in id order; the first four must be ``SPECIAL_TOKENS`` and no
            token may appear twice.

    Example:
        >>> tok = Tokenizer.fit(["a red circle", "a blue square"])
        >>> tok.encode("a red square", max_length=6)
        array([[1, 4, 7, 8, 2, 0]], dtype=int32)
        >>> tok.decode([1, 4, 7, 8, 2, 0])
        'a red square'
    """

    def __init__(self, vocabulary):
        vocabulary = list(vocabulary)
        problem = _vocabulary_problem(vocabulary)
        if problem:
            raise ValueError(f"invalid vocabulary: {problem}")
        self._vocabulary = vocabulary
        self._index = {word: i for i, word in enumerate(vocabulary)}
        self.pad_id, self.start_id, self.end_id, self.unk_id = 0, 1, 2, 3
        # How many captions the last `encode` call cut short to fit `max_length`.
        self.truncated = 0

    @classmethod
    def fit(cls, texts, max_tokens=None, min_count=1):
        """Build a vocabulary from training captions.

        Args:
            texts: a list of captions (str).
            max_tokens: largest vocabulary size, special tokens included (so at least 5), or
                ``None`` for no limit. The most frequent words are kept; ties go alphabetically,
                so the same captions always give the same ids.
            min_count: a word must occur at least this many times to get its own id.

        Raises:
            ValueError: a non-str caption, a bad limit, or no word left in the vocabulary.
        """
        texts = _check_texts(texts)
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens <= len(SPECIAL_TOKENS)):
            raise ValueError(
                f"max_tokens must be None or an int above {len(SPECIAL_TOKENS)} (the special tokens "
                f"{', '.join(SPECIAL_TOKENS)} count too), got {max_tokens!r}"
            )
        if not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
        counts = collections.Counter(word for text in texts for word in standardize(text).split())
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        words = [w for w in words if w not in SPECIAL_TOKENS]
        if max_tokens is not None:
            words = words[: max_tokens - len(SPECIAL_TOKENS)]
        if not words:
            raise ValueError(
                f"empty vocabulary: {len(texts)} caption(s) gave {len(counts)} distinct word(s), none "
                f"occurring at least min_count={min_count} times; pass non-empty captions or lower min_count"
            )
        return cls(list(SPECIAL_TOKENS) + words)

    @property
    def vocabulary(self):
        """Every token, in id order (a copy)."""
        return list(self._vocabulary)

    def __len__(self):
        return len(self._vocabulary)

    def __repr__(self):
        return f"Tokenizer({len(self)} tokens: {' '.join(self._vocabulary[4:12])} ...)"

    def token_id(self, word):
        """The id of ``word`` (after standardisation), or ``unk_id``."""
        return self._index.get(word, self.unk_id)

    def encode(self, texts, max_length):
        """Encode captions to ``[START] w1 .. wn [END] [PAD] ...``, int32 ``(num_texts, max_length)``.

        A caption longer than ``max_length - 2`` words is truncated *keeping* ``[END]`` as its last
        token, so every encoded caption is terminated and decoding always stops; the count of
        truncated captions goes to ``self.truncated`` and a warning names it.
        """
        texts = _check_texts(texts)
        if not isinstance(max_length, (int, np.integer)) or max_length < 2:
            raise ValueError(
                f"max_length must be an int >= 2 (room for [START] and [END]), got {max_length!r}"
            )
        ids = np.zeros((len(texts), max_length), dtype=np.int32)
        self.truncated = 0
        for row, text in enumerate(texts):
            words = standardize(text).split()
            if len(words) > max_length - 2:
                self.truncated += 1
                words = words[: max_length - 2]
            tokens = [self.start_id] + [self._index.get(w, self.unk_id) for w in words] + [self.end_id]
            ids[row, : len(tokens)] = tokens
        if self.truncated:
            warnings.warn(
                f"{self.truncated} of {len(texts)} caption(s) longer than {max_length - 2} words (with [START] and "
                f"[END], {max_length} tokens) were truncated to their first {max_length - 2} words (their [END] kept)",
                stacklevel=2,
            )
        return ids

    def decode(self, ids):
        """Turn one sequence of ids into a caption: skips ``[START]``/``[PAD]``, stops at ``[END]``."""
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(
                f"decode expects one sequence of ids (1-D), got shape {ids.shape}; use decode_batch for 2-D"
            )
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got dtype {ids.dtype}")
        words = []
        for token in ids.tolist():
            if not 0 <= token < len(self._vocabulary):
                raise ValueError(f"token id {token} is outside the vocabulary (0 to {len(self) - 1})")
            if token == self.end_id:
                break
            if token in (self.pad_id, self.start_id):
                continue
            words.append(self._vocabulary[token])
        return " ".join(words)

    def decode_batch(self, ids):
        """Decode a ``(batch, length)`` array of ids to a list of captions."""
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"decode_batch expects a 2-D (batch, length) array, got shape {ids.shape}")
        return [self.decode(row) for row in ids]

    def get_config(self):
        """The JSON-ready description saved by :meth:`save`."""
        return {"format": _FORMAT, "version": 1, "vocabulary": self.vocabulary}

    def save(self, path):
        """Write the vocabulary as JSON to ``path``."""
        with open(path, "w", encoding="utf-8") as file:
            json.dump(self.get_config(), file, ensure_ascii=False, indent=0)

    @classmethod
    def load(cls, path):
        """Read a tokenizer saved by :meth:`save`; a malformed file raises a ValueError naming it."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no tokenizer file at {os.fspath(path)!r}")
        try:
            with open(path, encoding="utf-8") as file:
                config = json.load(file)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"tokenizer file {os.fspath(path)!r} is not valid JSON: {error}") from None
        if not isinstance(config, dict) or config.get("format") != _FORMAT:
            raise ValueError(
                f"tokenizer file {os.fspath(path)!r} is not a minicap tokenizer "
                f"(expected a JSON object with \"format\": \"{_FORMAT}\")"
            )
        problem = _vocabulary_problem(config.get("vocabulary"))
        if problem:
            raise ValueError(f"tokenizer file {os.fspath(path)!r} is invalid: {problem}")
        return cls(config["vocabulary"])


def _vocabulary_problem(vocabulary):
    """Describe what is wrong with ``vocabulary``, or return None when it is valid."""
    if not isinstance(vocabulary, list):
        return f"the vocabulary must be a list of str, got {type(vocabulary).__name__}"
    for index, word in enumerate(vocabulary):
        if not isinstance(word, str) or not word:
            return f"vocabulary[{index}] must be a non-empty str, got {word!r}"
    if tuple(vocabulary[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        return (
            f"the vocabulary must start with the special tokens {list(SPECIAL_TOKENS)}, "
            f"got {vocabulary[: len(SPECIAL_TOKENS)]}"
        )
    if len(vocabulary) == len(SPECIAL_TOKENS):
        return "the vocabulary has no word besides the special tokens"
    seen = set()
    for word in vocabulary:
        if word in seen:
            return f"the word {word!r} appears twice"
        seen.add(word)
    return None
