"""Tests for the shapes scenes and the faithfulness check."""
import json

import numpy as np
import pytest

from minicap.data.faithfulness import check_caption, faithfulness_rate, parse_caption
from minicap.data.shapes import COLOURS, HELDOUT_PAIRS, SHAPES, Scene, ShapeObject, make_shapes, max_caption_words

# Independent of Keras's backend (or runs each backend itself): runs once, on the default one.
pytestmark = pytest.mark.single_backend


@pytest.fixture(scope="module")
def train():
    return make_shapes(200, split="train", seed=1)


def _scene():
    """A hand-made scene: a small red circle at the left, a large blue square at the right, and a
    small green triangle under the square."""
    objects = [
        ShapeObject("circle", "red", "small", (10.0, 10.0), 5.0),
        ShapeObject("square", "blue", "large", (50.0, 10.0), 8.0),
        ShapeObject("triangle", "green", "small", (50.0, 50.0), 5.0),
    ]
    return Scene(objects, np.zeros((3, 64, 64), bool), 64)


def test_shapes_and_types(train):
    assert train.images.shape == (200, 64, 64, 3) and train.images.dtype == np.uint8
    assert len(train) == 200 and len(train.captions) == 200 and len(train.scenes) == 200
    image, captions, scene = train[3]
    assert image.shape == (64, 64, 3) and len(captions) >= 3
    assert scene.masks.shape == (len(scene.objects), 64, 64) and scene.masks.dtype == bool
    assert all(c == c.lower() for refs in train.captions for c in refs)


@pytest.mark.parametrize("max_objects", [1, 2, 3])
def test_max_caption_words(max_objects):
    data = make_shapes(300, max_objects=max_objects, seed=2)
    longest = max(len(c.split()) for refs in data.captions for c in refs)
    assert longest == max_caption_words(max_objects)


def test_scene_to_dict_is_json(train):
    data = json.loads(json.dumps(train.scenes[0].to_dict()))
    assert data["image_size"] == 64
    assert data["objects"][0]["shape"] == train.scenes[0].objects[0].shape


def test_image_size_and_max_objects():
    data = make_shapes(30, image_size=32, max_objects=1, seed=3)
    assert data.images.shape == (30, 32, 32, 3)
    assert all(len(s.objects) == 1 for s in data.scenes)
    counts = {len(s.objects) for s in make_shapes(60, max_objects=3).scenes}
    assert counts == {1, 2, 3}


def test_deterministic_and_prefix_stable():
    # 400 scenes cross a noise chunk boundary (341 scenes of 64 x 64).
    a, b = make_shapes(20, seed=5), make_shapes(400, seed=5)
    np.testing.assert_array_equal(a.images, b.images[:20])
    assert a.captions == b.captions[:20]
    np.testing.assert_array_equal(make_shapes(345, seed=5).images, b.images[:345])
    assert not np.array_equal(a.images, make_shapes(20, seed=6).images)
    assert not np.array_equal(a.images, make_shapes(20, seed=5, split="val").images)


def test_masks_match_the_painted_colours(train):
    for image, _, scene in (train[i] for i in range(20)):
        assert not np.any(scene.masks.sum(0) > 1), "objects must not overlap"
        for obj, mask in zip(scene.objects, scene.masks):
            assert mask.sum() > 20
            x, y = obj.centre
            assert mask[int(y), int(x)] or obj.shape == "triangle"
            inside = image[mask].astype(float).mean(0)
            outside = image[~scene.masks.any(0)].astype(float).mean(0)
            assert np.abs(inside - outside).max() > 40  # visible against the background


def test_not_a_constant_task(train):
    # Backgrounds and object colours vary (noise and jitter), not only positions.
    background = [img[~s.masks.any(0)].mean(0) for img, _, s in (train[i] for i in range(50))]
    assert np.std(background, axis=0).min() > 3


def test_every_reference_is_faithful_and_complete(train):
    for refs, scene in zip(train.captions, train.scenes):
        assert len(set(refs)) >= min(3, len(refs))
        for caption in refs:
            result = check_caption(caption, scene)
            assert result.faithful, (caption, result.errors)
            assert result.complete
            words = caption.split()
            assert [words[w] for w, _ in result.mentions] == [scene.objects[k].shape for _, k in result.mentions]


def test_heldout_pairs_only_in_heldout_split():
    seen = {(o.colour, o.shape) for split in ("train", "val") for s in make_shapes(300, split).scenes for o in s.objects}
    assert not seen & set(HELDOUT_PAIRS)
    assert {c for c, _ in seen} == set(COLOURS) and {s for _, s in seen} == set(SHAPES)
    heldout = make_shapes(100, "heldout")
    assert all(any((o.colour, o.shape) in HELDOUT_PAIRS for o in s.objects) for s in heldout.scenes)


def test_distinct_objects_per_scene(train):
    for scene in train.scenes:
        pairs = [(o.colour, o.shape) for o in scene.objects]
        assert len(set(pairs)) == len(pairs)


@pytest.mark.parametrize(
    "caption",
    [
        "a small red circle left of a large blue square",
        "a large blue square right of a small red circle",
        "a small green triangle below a blue square",
        "there is a red circle left of a small green triangle and a large blue square above a small green triangle",
        "a small red circle in the picture",
        "A small red circle, left of a large blue square.",
    ],
)
def test_true_captions_are_faithful(caption):
    assert check_caption(caption, _scene()).faithful


@pytest.mark.parametrize(
    "caption, error, kind",
    [
        ("a large red circle", "the red circle is small, not large", "wrong size"),
        ("a small red square", "no red square", "wrong object"),
        ("a small red circle right of a large blue square", "is not right of", "wrong relation"),
        ("a small red circle below a small green triangle", "is not below", "wrong relation"),
        ("a small green triangle left of a large blue square", "is not left of", "wrong relation"),
        ("a small red circle left of", "expected 'a'", "unparsable"),
        ("a small red blob", "expected a shape", "unparsable"),
        ("the red circle", "expected 'a'", "unparsable"),
        ("", "expected 'a'", "unparsable"),
        ("a small red circle a blue square", "expected 'and'", "unparsable"),
    ],
)
def test_false_or_unparseable_captions(caption, error, kind):
    result = check_caption(caption, _scene())
    assert not result.faithful
    assert any(error in e for e in result.errors), result.errors
    assert len(result.error_kinds) == len(result.errors) and kind in result.error_kinds, result.error_kinds


def test_mentions_and_completeness():
    result = check_caption("a red circle left of a large blue square", _scene())
    assert result.mentions == [(2, 0), (8, 1)]
    assert not result.complete
    assert check_caption("a red circle left of a blue square and a green triangle below a blue square", _scene()).complete


def test_parse_caption_structure():
    clauses = parse_caption("there is a small red circle above a blue square")
    assert clauses == [(("small", "red", "circle", 5), "above", (None, "blue", "square", 9))]


def test_faithfulness_rate_known_value():
    scene = _scene()
    captions = ["a small red circle", "a large red circle", "a large blue square", "a tiny dog"]
    assert faithfulness_rate(captions, [scene] * 4) == 0.5
    with pytest.raises(ValueError, match="3 captions for 4 scenes"):
        faithfulness_rate(captions[:3], [scene] * 4)
    with pytest.raises(ValueError, match="single str"):
        faithfulness_rate("a small red circle", [scene])
    with pytest.raises(ValueError, match="caption must be a str"):
        check_caption(None, scene)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": "test"}, "split must be one of"),
        ({"image_size": 16}, "image_size must be an int >= 24"),
        ({"max_objects": 4}, "max_objects must be 1, 2 or 3"),
        ({"num_images": -1}, "num_images must be an int >= 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_shapes(**{"num_images": 2, **kwargs})
