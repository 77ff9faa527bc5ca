"""Tests for minicap.interactive: the HTML of AttentionExplorer and explore_caption's alignment.

The figure's behaviour in a browser is tested in tests/browser/test_interactive.py.
"""
import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from minicap.evaluate import cross_attention
from minicap.generate import caption
from minicap.interactive import SCALE, AttentionExplorer, explore_caption
from minicap.model import CaptionConfig, CaptionModel
from minicap.text import Tokenizer

TRICKY = '<b>"x"</b>'  # a word that is HTML and breaks naive JSON or attribute quoting


def _explorer(words=("a", "red", TRICKY), grid=(2, 3), heads=2, **options):
    rng = np.random.default_rng(0)
    head_weights = rng.dirichlet(np.ones(grid[0] * grid[1]), size=(heads, len(words))) if heads else None
    weights = head_weights.mean(axis=0) if heads else rng.dirichlet(np.ones(grid[0] * grid[1]), size=len(words))
    image = rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)
    return AttentionExplorer(image, list(words), weights, grid, head_weights=head_weights, **options)


def _data(page):
    return json.loads(re.search(r"\n  var data = (\{.*?\});\n", page).group(1))


@pytest.mark.parametrize("change, message", [
    (dict(weights=np.full((2, 6), 0.1)), r"weights has shape \(2, 6\), expected \(3, 6\): one row per word"),
    (dict(weights=np.full((3, 4), 0.1)), r"weights has shape \(3, 4\), expected \(3, 6\).*2x3 grid"),
    (dict(weights=np.full((3, 6), np.nan)), "weights holds non-finite values"),
    (dict(weights=np.full((3, 6), -0.1)), "weights holds negative values"),
    (dict(head_weights=np.full((3, 6), 0.1)), r"head_weights has shape \(3, 6\), expected \(heads, 3, 6\)"),
    (dict(head_weights=np.full((2, 3, 5), 0.1)), r"head_weights has shape \(2, 3, 5\), expected \(heads, 3, 6\)"),
    (dict(head_weights=np.full((2, 3, 6), 0.1), head_names=["one"]), "head_names has 1 names, expected one per head"),
    (dict(image=np.zeros((12, 18))), r"image has shape \(12, 18\), expected \(height, width, 3\)"),
    (dict(image=np.full((12, 18, 3), 2.0)), r"image must be uint8 or floats in \[0, 1\]"),
    (dict(words="a red circle"), "words must be a non-empty list of strings"),
    (dict(words=[]), "words must be a non-empty list of strings"),
    (dict(grid=(2, 0)), "grid must be"),
    (dict(alpha=1.5), r"alpha must be an opacity in \[0, 1\]"),
])
def test_rejects_bad_arguments(change, message):
    arguments = dict(image=np.zeros((12, 18, 3), np.uint8), words=["a", "red", "circle"],
                     weights=np.full((3, 6), 1 / 6), grid=(2, 3))
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        AttentionExplorer(**arguments)


def test_html_is_self_contained():
    page = _explorer().to_html()
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert "<script src" not in page and "<link" not in page and "import " not in page


def test_image_travels_as_a_png_data_uri():
    explorer = _explorer()
    uri = re.search(r'<img [^>]*src="(data:image/png;base64,[^"]+)"', explorer.to_html()).group(1)
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    np.testing.assert_array_equal(decoded, explorer.image)
    floats = AttentionExplorer(explorer.image / 255.0, explorer.words, explorer.weights, explorer.grid)
    np.testing.assert_array_equal(floats.image, explorer.image)


def test_words_are_escaped_in_html_and_json():
    page = _explorer().to_html()
    assert TRICKY not in page  # the raw word would become markup (and its </b> would close a tag)
    assert ">&lt;b&gt;&quot;x&quot;&lt;/b&gt;</button>" in page
    assert _data(page)["words"] == ["a", "red", TRICKY]
    title = _explorer(title="</script><b>").to_html()
    assert "</script><b>" not in title and "&lt;/script&gt;&lt;b&gt;" in title


def test_buttons_are_focusable_and_pressed_state_is_exposed():
    page = _explorer().to_html()
    words = re.findall(r'<button type="button" class="mc-word" data-word="(\d)" aria-pressed="(\w+)">', page)
    assert words == [("0", "true"), ("1", "false"), ("2", "false")]
    heads = re.findall(r'class="mc-head" data-head="(\w+)" aria-pressed="(\w+)">([^<]*)<', page)
    assert heads == [("mean", "true", "mean"), ("0", "false", "head 1"), ("1", "false", "head 2")]
    assert 'data-selected-word="0" data-selected-head="mean"' in page
    assert "mc-head" not in _explorer(heads=0).to_html().split("<script")[0].split("</style>")[1]


def test_weights_are_rounded_to_four_decimals():
    explorer = _explorer(head_names=["L1 H1", "L1 H2"])
    data = _data(explorer.to_html())
    assert SCALE == 10_000 and (data["rows"], data["cols"]) == (2, 3)
    np.testing.assert_array_equal(data["mean"], np.round(explorer.weights * SCALE))
    np.testing.assert_array_equal(data["perHead"], np.round(explorer.head_weights * SCALE))
    assert data["heads"] == ["L1 H1", "L1 H2"] and len(data["colours"]) == 256 * 6


def test_each_figure_has_its_own_id_and_the_script_stays_inside_it():
    first, second = _explorer().to_html(), _explorer().to_html()
    ids = [re.search(r'class="minicap-attention" id="([\w-]+)"', page).group(1) for page in (first, second)]
    assert ids[0] != ids[1]
    for element_id, page in zip(ids, (first, second)):
        script = page.split("<script>")[1]
        assert f'document.getElementById("{element_id}")' in script
        assert script.lstrip().startswith("(function () {")  # nothing declared at the top level


def test_repr_html_and_save(tmp_path):
    explorer = _explorer(title="where it looked")
    assert explorer._repr_html_().startswith('<div class="minicap-attention"')
    explorer.save(tmp_path / "figure.html")
    page = (tmp_path / "figure.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<title>where it looked</title>" in page
    assert 'class="minicap-attention"' in page and page.rstrip().endswith("</html>")


# explore_caption on a tiny model

TEXTS = ["a red circle left of a blue square"]


@pytest.fixture(scope="module")
def captioner():
    tokenizer = Tokenizer.fit(TEXTS)
    config = CaptionConfig(vocab_size=len(tokenizer), max_length=6, image_size=32, patch_size=8, model_dim=32,
                           num_heads=2, encoder_layers=1, decoder_layers=2, mlp_dim=64, dropout=0.0)
    image = np.random.default_rng(1).random((32, 32, 3)).astype("float32")
    model = CaptionModel(config)
    bias = model.head.bias.numpy()
    bias[tokenizer.end_id] = -10.0  # an untrained model may stop at once; this one writes a few words
    model.head.bias.assign(bias)
    return model, tokenizer, image


def test_explore_caption_rows_are_cross_attention_rows(captioner):
    model, tokenizer, image = captioner
    tokens = tokenizer.encode(["red circle left of"], 7)[0]  # [START] red circle left of [END] [PAD]
    explorer = explore_caption(model, tokenizer, image, tokens=tokens)
    assert explorer.words == ["red", "circle", "left", "of"] and explorer.grid == (4, 4)
    expected = cross_attention(model, image[None], tokens[None, :-1])[0, :4]  # (words, patches)
    np.testing.assert_allclose(explorer.weights, expected, atol=1e-5)
    assert explorer.head_weights.shape == (2 * 2, 4, 16)  # every head of both layers
    assert explorer.head_names == ["L1 H1", "L1 H2", "L2 H1", "L2 H2"]
    np.testing.assert_allclose(explorer.head_weights.mean(axis=0), explorer.weights, atol=1e-6)
    last = explore_caption(model, tokenizer, image, tokens=tokens, layer=-1)
    np.testing.assert_allclose(last.weights, cross_attention(model, image[None], tokens[None, :-1], -1)[0, :4],
                               atol=1e-5)
    assert last.head_weights.shape == (2, 4, 16) and last.head_names == ["head 1", "head 2"]


def test_explore_caption_row_of_a_word_is_computed_before_the_word(captioner):
    """Word i's row comes from the position whose input is word i - 1 ([START] for the first): a
    different second word leaves the rows of the first two words alone and changes the third's."""
    model, tokenizer, image = captioner
    one = explore_caption(model, tokenizer, image, tokens=tokenizer.encode(["red circle left"], 7)[0])
    two = explore_caption(model, tokenizer, image, tokens=tokenizer.encode(["red square left"], 7)[0])
    np.testing.assert_allclose(one.weights[:2], two.weights[:2], atol=1e-6)
    assert not np.allclose(one.weights[2], two.weights[2], atol=1e-4)


def test_explore_caption_captions_the_image_itself(captioner):
    model, tokenizer, image = captioner
    text = caption(model, tokenizer, image[None])[0]
    explorer = explore_caption(model, tokenizer, (image * 255).round().astype(np.uint8))
    assert len(text.split()) == 6  # as many words as max_length allows
    assert len(explorer.words) == len(text.split()) and explorer.weights.shape == (len(text.split()), 16)
    assert explore_caption(model, tokenizer, image).words == text.split()


def test_an_empty_caption_is_explored_as_its_end_token(captioner):
    # An undertrained model may write [END] first; its explorer shows where it looked to stop.
    model, tokenizer, image = captioner
    explorer = explore_caption(model, tokenizer, image, tokens=[1, 2, 0])
    assert explorer.words == ["[END]"] and explorer.weights.shape == (1, 16)
    expected = cross_attention(model, image[None], np.array([[1]], "int32"))[0]
    np.testing.assert_allclose(explorer.weights, expected, atol=1e-6)
    assert "[END]" in explorer._repr_html_()


def test_explore_caption_rejects_bad_input(captioner):
    model, tokenizer, image = captioner
    with pytest.raises(ValueError, match=r"tokens must begin with \[START\] \(id 1\)"):
        explore_caption(model, tokenizer, image, tokens=[4, 5, 2])
    with pytest.raises(ValueError, match=r"image has shape \(16, 16, 3\), expected \(32, 32, 3\)"):
        explore_caption(model, tokenizer, image[:16, :16])
    with pytest.raises(ValueError, match="layer must be 'mean' or an index of the 2 decoder layers, got 2"):
        explore_caption(model, tokenizer, image, tokens=[1, 4, 5, 2], layer=2)
    with pytest.raises(ValueError, match="unknown decoding method 'top'"):
        explore_caption(model, tokenizer, image, method="top")
