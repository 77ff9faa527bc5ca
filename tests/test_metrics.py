"""Tests for minicap.metrics: BLEU and CIDEr-D against hand computation and pycocoevalcap."""
import math
import random

import pytest

from tests.support import require
from minicap.metrics import cider_d, corpus_bleu, ngram_counts, tokenize

# Independent of Keras's backend: runs once, on the default one.
pytestmark = pytest.mark.single_backend


# ---------------------------------------------------------------- tokenisation and n-grams

def test_tokenize_lowercases_and_strips_punctuation():
    assert tokenize("A Red circle, left of a blue-square.") == [
        "a", "red", "circle", "left", "of", "a", "blue", "square"]
    assert tokenize("  two   spaces ") == ["two", "spaces"]
    assert tokenize("") == []


def test_tokenize_rejects_non_strings():
    with pytest.raises(ValueError, match="caption string"):
        tokenize(["a", "list"])


def test_ngram_counts():
    counts = ngram_counts(["a", "b", "a", "b"], max_order=2)
    assert counts == {("a",): 2, ("b",): 2, ("a", "b"): 2, ("b", "a"): 1}


# ---------------------------------------------------------------- BLEU, known values

def test_bleu_identical_is_one():
    scores = corpus_bleu(["a red circle above a blue square"], [["a red circle above a blue square"]])
    assert list(scores) == ["bleu1", "bleu2", "bleu3", "bleu4"]
    for value in scores.values():
        assert value == pytest.approx(1.0, abs=1e-8)


def test_bleu_one_word_different():
    # candidate "a red circle on the left" vs reference "a blue circle on the left" (6 words each, no
    # brevity penalty). Matches / candidate n-grams: unigrams 5/6 (all but "red"), bigrams 3/5
    # ("circle on", "on the", "the left"), trigrams 2/4 ("circle on the", "on the left"),
    # 4-grams 1/3 ("circle on the left"). BLEU-n is the geometric mean of the first n precisions.
    scores = corpus_bleu(["a red circle on the left"], [["a blue circle on the left"]])
    assert scores["bleu1"] == pytest.approx(5 / 6, abs=1e-8)
    assert scores["bleu2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5), abs=1e-8)
    assert scores["bleu3"] == pytest.approx((5 / 6 * 3 / 5 * 2 / 4) ** (1 / 3), abs=1e-8)
    assert scores["bleu4"] == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** (1 / 4), abs=1e-8)


def test_bleu_brevity_penalty_and_smoothing():
    # 3 candidate words against a 6-word reference: penalty exp(1 - 6/3) = e^-1. Precisions of
    # orders 1-3 are 1; there is no 4-gram, so the smoothed precision is 1e-15 / 1e-9 = 1e-6.
    scores = corpus_bleu(["a red circle"], [["a red circle on the left"]])
    assert scores["bleu1"] == pytest.approx(math.exp(-1), rel=1e-6)
    assert scores["bleu3"] == pytest.approx(math.exp(-1), rel=1e-6)
    assert scores["bleu4"] == pytest.approx(math.exp(-1) * 1e-6 ** 0.25, rel=1e-6)


def test_bleu_closest_reference_length_prefers_shorter_on_tie():
    # 4 candidate words; references of 3 and 5 words are equally close, the shorter one (3) is
    # taken, so there is no brevity penalty: BLEU-1 = 4/4 matched unigrams.
    scores = corpus_bleu(["a b c d"], [["a b c", "a b c d e"]], max_order=1)
    assert scores == {"bleu1": pytest.approx(1.0, abs=1e-8)}
    # With only the 5-word reference the penalty is exp(1 - 5/4).
    scores = corpus_bleu(["a b c d"], [["a b c d e"]], max_order=1)
    assert scores["bleu1"] == pytest.approx(math.exp(1 - 5 / 4), rel=1e-8)


def test_bleu_clips_repeated_words():
    # "the" occurs once in the reference, so only 1 of the 4 candidate unigrams counts.
    scores = corpus_bleu(["the the the the"], [["the cat sat down"]], max_order=1)
    assert scores["bleu1"] == pytest.approx(0.25, rel=1e-8)


def test_bleu_is_a_corpus_score_not_a_mean():
    # Image 1: 2/2 unigrams match; image 2: 0/4. Corpus precision 2/6, not the mean (1 + 0) / 2.
    # Lengths 2 + 4 equal the references' 2 + 4: no penalty.
    scores = corpus_bleu(["a b", "c d e f"], [["a b"], ["w x y z"]], max_order=1)
    assert scores["bleu1"] == pytest.approx(2 / 6, rel=1e-8)


@pytest.mark.parametrize("candidates, references, match", [
    (["a b"], [["a b"], ["c"]], "1 candidates but 2 reference lists"),
    ("a b", [["a b"]], "single string"),
    (["a b"], ["a b"], r"references\[0\] must be a non-empty list"),
    (["a b"], [[]], r"references\[0\] must be a non-empty list"),
    ([], [], "empty"),
])
def test_bleu_bad_corpus(candidates, references, match):
    with pytest.raises(ValueError, match=match):
        corpus_bleu(candidates, references)
    with pytest.raises(ValueError, match=match):
        cider_d(candidates, references)


def test_bleu_bad_max_order():
    with pytest.raises(ValueError, match="max_order must be a positive integer"):
        corpus_bleu(["a"], [["a"]], max_order=0)


# ---------------------------------------------------------------- CIDEr-D, known values

def test_cider_identical_two_word_captions():
    # Two images, each with one reference equal to its candidate; every n-gram occurs in one image
    # of two, so all weights are log(2/1). Cosine 1 for unigrams and bigrams, 0 for the absent 3- and
    # 4-grams: mean over n = 0.5, times 10 = 5.0 per image.
    assert cider_d(["a b", "c d"], [["a b"], ["c d"]]) == pytest.approx(5.0, abs=1e-9)


def test_cider_identical_long_captions_is_ten():
    candidates = ["a red circle on the left", "two blue squares at the bottom"]
    references = [["a red circle on the left"], ["two blue squares at the bottom"]]
    # "the" is in both images' references: weight log(2/2) = 0, it is ignored, and the rest match.
    assert cider_d(candidates, references) == pytest.approx(10.0, abs=1e-9)


def test_cider_clipping_and_length_penalty():
    # Image A: candidate "x y x y", reference "x y"; image B: "p q" / "p q" (score 5.0 as above).
    # All weights are w = log 2 (the candidate's bigram "y x" is in no reference: df 1, log(2/1)).
    # Unigrams: candidate (2w, 2w), reference (w, w); clipped dot = 2·min(2w, w)·w = 2w², norms
    # sqrt(8)·w and sqrt(2)·w, cosine 2/4 = 0.5. Bigrams: candidate {xy: 2w, yx: w}, reference
    # {xy: w}: dot min(2w, w)·w = w², norms sqrt(5)·w and w, cosine 1/sqrt(5). No 3- or 4-gram match.
    # Length penalty: lengths 4 and 2 words, exp(-2² / (2·6²)) = exp(-1/18).
    image_a = 10 * (0.5 + 1 / math.sqrt(5)) / 4 * math.exp(-1 / 18)
    expected = (image_a + 5.0) / 2
    assert cider_d(["x y x y", "p q"], [["x y"], ["p q"]]) == pytest.approx(expected, abs=1e-9)


def test_cider_averages_over_references():
    # Image A has two references, one equal to the candidate (5.0 as above) and one sharing nothing
    # (0): mean 2.5. Image B scores 5.0.
    score = cider_d(["a b", "c d"], [["a b", "e f"], ["c d"]])
    assert score == pytest.approx((2.5 + 5.0) / 2, abs=1e-9)


def test_cider_single_image_is_zero():
    assert cider_d(["a red circle"], [["a red circle"]]) == 0.0


def test_cider_bad_sigma():
    with pytest.raises(ValueError, match="sigma must be a positive"):
        cider_d(["a"], [["a"]], sigma=0)


# ---------------------------------------------------------------- against the COCO evaluation code

def _random_corpus(rng, images, vocabulary="a b c d e f g h".split()):
    def sentence():
        # Empty captions included: they are where the scorers' corner cases live.
        return " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 9)))
    candidates = [sentence() for _ in range(images)]
    references = [[sentence() for _ in range(rng.randint(1, 5))] for _ in range(images)]
    return candidates, references


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_pycocoevalcap(seed):
    reason = "pycocoevalcap (the 'test' extra) is not installed"
    bleu_module = require("pycocoevalcap.bleu.bleu", reason)
    cider_module = require("pycocoevalcap.cider.cider", reason)
    rng = random.Random(seed)
    candidates, references = _random_corpus(rng, images=rng.randint(2, 12))
    # The official scorers take {image id: [tokenised captions joined by spaces]}.
    results = {i: [" ".join(tokenize(c))] for i, c in enumerate(candidates)}
    truths = {i: [" ".join(tokenize(r)) for r in refs] for i, refs in enumerate(references)}
    official_bleu, _ = bleu_module.Bleu(4).compute_score(truths, results, verbose=0)
    official_cider, _ = cider_module.Cider().compute_score(truths, results)
    ours = corpus_bleu(candidates, references)
    for order in range(4):
        assert ours[f"bleu{order + 1}"] == pytest.approx(official_bleu[order], abs=1e-6)
    assert cider_d(candidates, references) == pytest.approx(official_cider, abs=1e-6)
