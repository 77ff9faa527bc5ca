"""Tests for minicap.evaluate: BLEU and CIDEr-D against hand computation and pycocoevalcap; grounding;
cross-attention rows and grounding on planted attention; evaluate_caption_set on a model of known captions."""
import math
import random

import numpy as np
import pytest
from PIL import Image

from conftest import require
from minicap.data.records import CaptionSet
from minicap.data.shapes import Scene, ShapeObject, ShapesData
from minicap.evaluate import (
    cider_d, corpus_bleu, cross_attention, evaluate_caption_set, grounding_score, ngram_counts, object_patches,
    patch_overlap, reference_grounding, tokenize,
)
from minicap.text import Tokenizer
from planted_captioner import BEAM, GREEDY, planted_captioner
from stand_ins import TableModel, planted_attention_model


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


# ---------------------------------------------------------------- patches and grounding

def test_patch_overlap_known_values():
    mask = np.zeros((4, 6), bool)
    mask[0:2, 0:2] = True  # fills patch (0, 0)
    mask[2, 3] = True  # one pixel of patch (1, 1)
    overlap = patch_overlap(mask, 2)
    np.testing.assert_allclose(overlap, [[1.0, 0.0, 0.0], [0.0, 0.25, 0.0]])


def test_patch_overlap_bad_input():
    with pytest.raises(ValueError, match="mask width 5 is not divisible by patch size 2"):
        patch_overlap(np.zeros((4, 5), bool), 2)
    with pytest.raises(ValueError, match="mask must be 2-D"):
        patch_overlap(np.zeros((1, 4, 4), bool), 2)
    with pytest.raises(ValueError, match="patch_size must be a positive integer"):
        patch_overlap(np.zeros((4, 4), bool), 0)


def test_object_patches_rule():
    mask = np.zeros((8, 8), bool)  # 2x2 grid of 4-pixel patches (16 pixels each)
    mask[0:4, 0:4] = True  # all of patch 0
    mask[0:2, 4:6] = True  # 4/16 = 25% of patch 1: on the object
    mask[4, 0:3] = True  # 3/16 of patch 2: not on it
    np.testing.assert_array_equal(object_patches(mask, 4), [True, True, False, False])
    # A one-pixel object (1/16 of a patch) still has the patch that holds it.
    tiny = np.zeros((8, 8), bool)
    tiny[6, 6] = True
    np.testing.assert_array_equal(object_patches(tiny, 4), [False, False, False, True])


def _one_hot_attention(peaks, num_patches=4):
    attention = np.full((len(peaks), num_patches), 0.1)
    attention[np.arange(len(peaks)), peaks] = 0.7
    return attention


def test_grounding_peak_on_and_off_the_object():
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 0:2, 0:2] = True  # object 0 fills patch 0 of the 2x2 grid
    on = grounding_score([_one_hot_attention([0])], [[(0, 0)]], [masks], 4, 2)
    off = grounding_score([_one_hot_attention([3])], [[(0, 0)]], [masks], (4, 4), 2)
    # One patch of four is on the object: chance 1/4.
    assert on == {"grounding": 1.0, "chance": 0.25, "mentions": 1}
    assert off == {"grounding": 0.0, "chance": 0.25, "mentions": 1}


def test_grounding_batch():
    # Caption 0: two objects; word 1 names object 0 (patches 0 and 1), word 2 names object 1
    # (patch 3). Caption 1: word 0 names its object 0 (patch 2).
    masks_0 = np.zeros((2, 4, 4), bool)
    masks_0[0, 0:2, :] = True
    masks_0[1, 2:4, 2:4] = True
    masks_1 = np.zeros((1, 4, 4), bool)
    masks_1[0, 2:4, 0:2] = True
    attention = [_one_hot_attention([3, 1, 0]), _one_hot_attention([2, 0])]
    mentions = [[(1, 0), (2, 1)], [(0, 0)]]
    # Grounded: word 1 peaks on patch 1 (object 0: yes), word 2 on patch 0 (object 1: no),
    # caption 1 word 0 on patch 2 (yes) -> 2/3. Chance: (2/4 + 1/4 + 1/4) / 3 = 1/3.
    result = grounding_score(attention, mentions, [masks_0, masks_1], 4, 2)
    assert result["grounding"] == pytest.approx(2 / 3)
    assert result["chance"] == pytest.approx(1 / 3)
    assert result["mentions"] == 3


def test_grounding_without_mentions_is_nan():
    result = grounding_score([_one_hot_attention([0])], [[]], [np.ones((1, 4, 4), bool)], 4, 2)
    assert result["mentions"] == 0 and math.isnan(result["grounding"]) and math.isnan(result["chance"])


@pytest.mark.parametrize("change, match", [
    (dict(mentions=[[(0, 0)], [(0, 0)]]), "one entry per caption, got 1, 2 and 1"),
    (dict(attention=[np.ones((2, 5))]), r"attention\[0\] must be \(words, 4\)"),
    (dict(masks=[np.ones((1, 4, 6), bool)]), r"masks\[0\] must be \(objects, 4, 4\)"),
    (dict(mentions=[[(2, 0)]]), "names word 2, but attention.0. has 2 words"),
    (dict(mentions=[[(0, 1)]]), "names object 1, but masks.0. has 1 objects"),
    (dict(masks=[np.zeros((1, 4, 4), bool)]), r"masks\[0\]\[0\] is empty"),
    (dict(image_size=5), "image height 5 is not divisible by patch size 2"),
    (dict(image_size=(4, 4, 3)), "image_size must be an int or"),
    (dict(min_overlap=1.5), "min_overlap must be a fraction"),
])
def test_grounding_bad_input(change, match):
    arguments = dict(attention=[np.ones((2, 4))], mentions=[[(0, 0)]],
                     masks=[np.ones((1, 4, 4), bool)], image_size=4, patch_size=2)
    arguments.update(change)
    with pytest.raises(ValueError, match=match):
        grounding_score(**arguments)


# ---------------------------------------------------------------- planted attention and captions
# Models with known answers (tests/stand_ins.py): a CaptionModel whose cross-attention at position t
# looks at a patch chosen by the token at t, and a TableModel whose captions are fixed per image.

def test_cross_attention_row_t_is_where_the_model_looks_after_token_t():
    token_patches = np.random.default_rng(0).permutation(16)  # 16 tokens, 16 patches (4 x 4 grid)
    model = planted_attention_model(token_patches, vocab_size=16)
    tokens = np.array([[1, 5, 9, 2, 0, 0, 0], [1, 7, 3, 12, 14, 4, 2]])  # [START] ... [END] [PAD]
    images = np.random.default_rng(1).random((2, 32, 32, 3)).astype("float32")
    for layer in ("mean", 0, -1):
        weights = cross_attention(model, images, tokens, layer)
        assert weights.shape == (2, 7, 16)
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(weights.argmax(-1), token_patches[tokens])
        assert weights.max(-1).min() > 0.99


def _scene(objects, patches, image_size=32, patch_size=8):
    """A Scene whose object k fills exactly patch ``patches[k]`` of the grid."""
    grid = image_size // patch_size
    masks = np.zeros((len(objects), image_size, image_size), bool)
    for k, patch in enumerate(patches):
        row, col = divmod(patch, grid)
        masks[k, row * patch_size:(row + 1) * patch_size, col * patch_size:(col + 1) * patch_size] = True
    shapes = [ShapeObject(shape, colour, "large", (0.0, 0.0), 4.0) for colour, shape in objects]
    return Scene(shapes, masks, image_size)


def test_reference_grounding_on_planted_attention():
    scenes = [_scene([("red", "circle")], [5]),  # mention (2, 0): the row of word 2 reads "red" -> 5: on it
              _scene([("blue", "square")], [10]),  # (2, 0): "blue" -> 6, the square is on 10: missed
              _scene([("red", "circle"), ("blue", "square")], [4, 6])]  # (2, 0) missed; (7, 1) found
    captions = [["a red circle"], ["a blue square"], ["a red circle left of a blue square"]]
    data = ShapesData(np.zeros((3, 32, 32, 3), np.uint8), captions, scenes, "val", 0)
    tokenizer = Tokenizer.fit([c[0] for c in captions])
    # Row w of the attention is where the model looks while writing word w, after reading word w - 1:
    # the colour before each shape noun. Colours point at patches 5 and 6; every other token at patch
    # 15, where no object lies, so a grounding that read the rows one word off would find nothing.
    token_patches = np.full(len(tokenizer), 15)
    token_patches[tokenizer.token_id("red")], token_patches[tokenizer.token_id("blue")] = 5, 6
    model = planted_attention_model(token_patches, vocab_size=len(tokenizer), max_length=12)
    score = reference_grounding(model, tokenizer, data, batch_size=2)
    # Each object fills 1 patch of 16: chance 1/16.
    assert score == {"grounding": 0.5, "chance": 1 / 16, "mentions": 4}


def test_evaluate_caption_set_scores_the_captions_the_model_writes(tmp_path):
    references = [["a red circle above a blue square", "a red circle over a blue square"],
                  ["a green cross", "a small green cross"],
                  ["two yellow triangles"]]
    written = ["a red circle above a blue square", "a large green cross", "a yellow triangle"]
    tokenizer = Tokenizer.fit(written + [r for refs in references for r in refs])
    kinds, max_length = [0, 2, 4], 8
    # Image kind k (red value k / 10) writes written[i] whatever it wrote before: its logits at
    # position t favour word t, then [END].
    tables = np.zeros((5, max_length, len(tokenizer)), "float32")
    paths = []
    for index, (kind, text) in enumerate(zip(kinds, written)):
        for position, token in enumerate([tokenizer.token_id(w) for w in text.split()] + [tokenizer.end_id]):
            tables[kind, position, token] = 5.0
        paths.append(tmp_path / f"{index}.png")
        Image.new("RGB", (20, 30), (kind * 255 // 10, 90, 200)).save(paths[-1])
    model = TableModel(tables, max_length, keyed_by="position")
    caption_set = CaptionSet(paths, references, split="test", name="tiny", image_size=1)
    expected = {**corpus_bleu(written, references), "cider_d": cider_d(written, references)}
    for method, options in (("greedy", {}), ("beam", {"beam_width": 2})):
        metrics, captions = evaluate_caption_set(model, tokenizer, caption_set, method, batch_size=2, **options)
        assert captions == written
        assert metrics == pytest.approx(expected) and 0 < metrics["bleu4"] < 1 and 0 < metrics["cider_d"] < 10
    with pytest.raises(ValueError, match="the tiny test split is empty"):
        evaluate_caption_set(model, tokenizer, CaptionSet([], [], split="test", name="tiny", image_size=1))


def test_evaluate_caption_set_scores_beam_search_where_it_writes_other_captions_than_greedy(tmp_path):
    model, tokenizer = planted_captioner(image_size=16, patch_size=8)  # greedy writes GREEDY, beam search BEAM
    references = [["a red circle", "the red circle"], ["a blue circle", "blue"], ["a red square"]]
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"{index}.png")
        Image.new("RGB", (20, 30), (40 * index, 90, 200)).save(paths[-1])
    caption_set = CaptionSet(paths, references, split="test", name="tiny", image_size=16)
    for method, options, written in (("beam", {"beam_width": 2}, BEAM), ("greedy", {}, GREEDY)):
        metrics, captions = evaluate_caption_set(model, tokenizer, caption_set, method, **options)
        assert captions == [written] * 3, method
        expected = {**corpus_bleu(captions, references), "cider_d": cider_d(captions, references)}
        assert metrics == pytest.approx(expected), method
        assert metrics["bleu1"] > 0
