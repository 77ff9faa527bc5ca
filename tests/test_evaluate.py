"""Tests for minicap.evaluate: grounding; cross-attention rows and grounding on planted attention;
evaluate_caption_set on a model of known captions (the metrics themselves: tests/test_metrics.py)."""
import math
import random

import numpy as np
import pytest
from PIL import Image

from minicap.data.records import CaptionSet
from minicap.data.shapes import Scene, ShapeObject, ShapesData
from minicap.evaluate import (
    cross_attention, evaluate_caption_set, grounding_score, object_patches, patch_overlap, reference_grounding,
)
from minicap.metrics import cider_d, corpus_bleu
from minicap.text import Tokenizer
from tests.support.planted_captioner import BEAM, GREEDY, planted_captioner
from tests.support.stand_ins import TableModel, planted_attention_model


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
