"""An interactive attention figure: click a word of a caption, see where it looked (chapter 6).

:class:`AttentionExplorer` is the clickable twin of :func:`minicap.plot.show_word_attention` (which
stays the figure for print). It renders to one self-contained HTML fragment (the image as a PNG data
URI, the weights as JSON, a few lines of plain JavaScript and CSS), so it works wherever a notebook's
HTML output is shown with its scripts: a notebook, Colab, and the pages of the rendered book, with
no server, no network and no JavaScript library.

Every figure has its own element id and its script touches nothing outside that element, so a page
may hold several. The root element's ``data-selected-word`` / ``data-selected-head`` attributes
hold the selection (``data-shown-*``: what is drawn now, a hovered word included), and the overlay
is a canvas of one pixel per patch, which is what the tests read.
"""
import base64
import html
import io
import itertools
import json
import zlib

import matplotlib
import numpy as np
from PIL import Image

from minicap.generate import Generator
from minicap.plot import to_numpy

SCALE = 10_000  # weights travel as integers in units of 1e-4 (4 decimals) to keep pages small
_COUNTER = itertools.count(1)


def _inferno():
    """The inferno colour map (as in show_word_attention) as a 256-colour hex string, and CSS stops."""
    colours = np.round(matplotlib.colormaps["inferno"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(int)
    table = "".join(f"{r:02x}{g:02x}{b:02x}" for r, g, b in colours)
    stops = ", ".join(f"#{table[6 * i:6 * i + 6]} {i / 255:.0%}" for i in range(0, 256, 51))
    return table, stops


def _json(value):
    """JSON that is safe inside a <script> element (no "</script>" and no "<!--" can appear) and, being
    ASCII, is also a valid JavaScript literal."""
    text = json.dumps(value, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _check_weights(name, values, shape, expected):
    """``values`` as float64 if its shape equals ``shape`` (``None``: any size), else a ValueError
    that shows ``expected``."""
    values = np.asarray(to_numpy(values), dtype="float64")
    if values.ndim != len(shape) or any(want is not None and got != want for got, want in zip(values.shape, shape)):
        raise ValueError(f"{name} has shape {values.shape}, expected {expected}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} holds non-finite values (NaN or inf); attention weights are finite")
    if (values < 0).any():
        raise ValueError(f"{name} holds negative values (smallest {values.min():.3g}); attention weights are >= 0")
    return values


class AttentionExplorer:
    """Where each word of a caption looked, one word at a time: click (or hover) a word to see it.

    Args:
        image: ``(height, width, 3)``, uint8 or floats in [0, 1].
        words: the caption's ``n`` words, one per row of ``weights``.
        weights: ``(n, patches)`` cross-attention of each word, averaged over heads.
        grid: ``(rows, cols)`` of the patch grid, ``rows · cols = patches``, patches in row-major order.
        head_weights: optional ``(heads, n, patches)``, each head's own weights; a head selector
            ("mean" and one button per head) appears when given.
        title: a line above the figure.
        alpha: opacity of the heatmap over the image.
        head_names: labels of the head buttons (default ``"head 1"``, ...).
        width: displayed width of the image, in CSS pixels.

    The heatmap shows the selected word's weights upsampled to the patch grid (nearest neighbour),
    coloured with inferno from 0 to the largest weight of the selected head over all words, so that
    words can be compared. ``to_html()`` gives the figure; a notebook shows the object itself.

    >>> explorer = AttentionExplorer(image, ["a", "red", "circle"], weights, (8, 8))  # doctest: +SKIP
    >>> explorer.save("attention.html")  # doctest: +SKIP
    """

    def __init__(self, image, words, weights, grid, head_weights=None, title=None, alpha=0.6, head_names=None,
                 width=320):
        image = np.asarray(to_numpy(image))
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image has shape {image.shape}, expected (height, width, 3)")
        if image.dtype != np.uint8:
            if not np.issubdtype(image.dtype, np.floating) or not np.isfinite(image).all() or (
                    image.min() < 0 or image.max() > 1):
                raise ValueError(f"image must be uint8 or floats in [0, 1], got dtype {image.dtype}"
                                 + (f" in [{image.min():.3g}, {image.max():.3g}]" if image.size else ""))
            image = np.round(image * 255).astype(np.uint8)
        if isinstance(words, str) or not all(isinstance(word, str) for word in words) or not len(words):
            raise ValueError(f"words must be a non-empty list of strings, got {words!r}")
        if len(grid) != 2 or any(int(side) != side or side < 1 for side in grid):
            raise ValueError(f"grid must be (rows, cols), two positive integers, got {grid!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be an opacity in [0, 1], got {alpha!r}")
        self.image, self.words, self.grid = image, list(words), (int(grid[0]), int(grid[1]))
        patches = self.grid[0] * self.grid[1]
        count = len(self.words)
        self.weights = _check_weights("weights", weights, (count, patches),
                                      f"({count}, {patches}): one row per word, one column per patch of the "
                                      f"{self.grid[0]}x{self.grid[1]} grid")
        self.head_weights = None
        if head_weights is not None:
            self.head_weights = _check_weights("head_weights", head_weights, (None, count, patches),
                                               f"(heads, {count}, {patches})")
        heads = 0 if self.head_weights is None else len(self.head_weights)
        self.head_names = list(head_names) if head_names is not None else [f"head {h + 1}" for h in range(heads)]
        if len(self.head_names) != heads:
            raise ValueError(f"head_names has {len(self.head_names)} names, expected one per head ({heads})")
        self.title, self.alpha, self.width = title, float(alpha), int(width)

    def _data(self):
        quantise = lambda values: np.round(values * SCALE).astype(int).tolist()  # noqa: E731
        data = {"rows": self.grid[0], "cols": self.grid[1], "scale": SCALE, "words": self.words,
                "heads": self.head_names, "mean": quantise(self.weights),
                "perHead": [] if self.head_weights is None else quantise(self.head_weights)}
        data["colours"], _ = _inferno()
        return data

    def _image_uri(self):
        buffer = io.BytesIO()
        Image.fromarray(self.image).save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    def to_html(self):
        """The figure as one self-contained HTML fragment (no external URL, script included)."""
        data, image_uri = _json(self._data()), self._image_uri()
        # The id is unique in this process and stable across runs (no diff noise in saved notebooks).
        element_id = f"minicap-attention-{zlib.crc32((data + image_uri).encode()):08x}-{next(_COUNTER)}"
        esc = html.escape
        words = "".join(
            f'<button type="button" class="mc-word" data-word="{i}" aria-pressed="{str(i == 0).lower()}">'
            f"{esc(word)}</button>" for i, word in enumerate(self.words))
        heads = ""
        if self.head_names:
            heads = "".join(
                f'<button type="button" class="mc-head" data-head="{h}" aria-pressed="false">{esc(name)}</button>'
                for h, name in enumerate(self.head_names))
            heads = (f'<div class="mc-heads" role="group" aria-label="attention head"><span>head:</span>'
                     f'<button type="button" class="mc-head" data-head="mean" aria-pressed="true">mean</button>'
                     f"{heads}</div>")
        height, width = self.image.shape[:2]
        display_height = round(self.width * height / width)
        smooth = "auto" if width * 2 > self.width else "pixelated"  # small synthetic images stay crisp
        title = f'<div class="mc-title">{esc(self.title)}</div>' if self.title else ""
        _, stops = _inferno()
        return _TEMPLATE.format(
            id=element_id, title=title, words=words, heads=heads, image=image_uri, alpha=self.alpha,
            width=self.width, card=max(self.width, 520) + 26, height=display_height, smooth=smooth, rows=self.grid[0], cols=self.grid[1],
            stops=stops, data=data, alt=esc("the image, captioned: " + " ".join(self.words)))

    def _repr_html_(self):
        return self.to_html()

    def save(self, path):
        """Write the figure as a standalone HTML page to ``path``."""
        title = html.escape(self.title or " ".join(self.words))
        with open(path, "w", encoding="utf-8") as file:
            file.write(f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
                       f"</head>\n<body>\n{self.to_html()}\n</body></html>\n")


def explore_caption(model, tokenizer, image, tokens=None, method="greedy", layer="mean", title=None, **options):
    """Caption one image and return an :class:`AttentionExplorer` of the caption's cross-attention.

    Args:
        model: a ``CaptionModel``; tokenizer: its ``Tokenizer``.
        image: ``(image_size, image_size, 3)``, uint8 or floats in [0, 1].
        tokens: the caption's token ids as ``minicap.generate``'s decoders return them (``[START]``,
            the words, then ``[END]`` and padding); default: decoded here with ``method``
            (``"greedy"``, ``"beam"`` or ``"sample"``, ``options`` going to the decoder).
        layer: a decoder layer index, or ``"mean"`` (the default, as in
            ``minicap.evaluate.cross_attention``): the average over the decoder layers. The head
            selector then offers every head of every layer ("L1 H2": layer 1, head 2), whose mean
            is the averaged map.

    Word ``i``'s row is decoder position ``i``, whose input is the word before it (``[START]`` for
    the first) and whose output is word ``i``: the rows of ``cross_attention(model, images,
    tokens[:, :-1])``. An empty caption (``[END]`` first) is explored as the one word ``[END]``.
    """
    pixels = np.asarray(to_numpy(image))
    pixels = pixels.astype("float32") / 255.0 if pixels.dtype == np.uint8 else pixels.astype("float32")
    size = model.config.image_size
    if pixels.shape != (size, size, 3):
        raise ValueError(f"image has shape {pixels.shape}, expected ({size}, {size}, 3) for this model")
    if tokens is None:
        generator = Generator.from_tokenizer(model, tokenizer)
        tokens = generator.decode(pixels[None], method, **options)[0]
    tokens = np.asarray(to_numpy(tokens)).reshape(-1)
    if not tokens.size or tokens[0] != tokenizer.start_id:
        raise ValueError(f"tokens must begin with [START] (id {tokenizer.start_id}), as the decoders of "
                         f"minicap.generate return them, got {tokens.tolist()}")
    vocabulary, words = tokenizer.vocabulary, []
    for token in tokens[1:].tolist():
        if token in (tokenizer.end_id, tokenizer.pad_id):
            break
        if not 0 <= token < len(vocabulary):
            raise ValueError(f"token id {token} is outside the vocabulary (0 to {len(vocabulary) - 1})")
        words.append(vocabulary[token])
    if not words:  # the model ended the caption at once (an undertrained one may): where it looked to do so
        words = [vocabulary[tokenizer.end_id]]
    count = min(len(words), model.config.max_length)
    words = words[:count]
    inputs = tokens[None, :count].astype("int32")  # (1, n): [START] and every word but the last
    cross = model.attention_scores(pixels[None], inputs)["cross"]  # per layer (1, heads, n, N)
    cross = np.stack([np.asarray(to_numpy(weights), dtype="float32")[0] for weights in cross])  # (L, H, n, N)
    num_layers, num_heads = cross.shape[:2]
    if layer == "mean":
        head_weights = cross.reshape(num_layers * num_heads, *cross.shape[2:])  # (L·H, n, N)
        names = [f"L{l + 1} H{h + 1}" for l in range(num_layers) for h in range(num_heads)]
    elif isinstance(layer, int) and -num_layers <= layer < num_layers:
        head_weights, names = cross[layer], None
    else:
        raise ValueError(f"layer must be 'mean' or an index of the {num_layers} decoder layers, got {layer!r}")
    side = model.config.encoder_spec().grid
    return AttentionExplorer(pixels, words, head_weights.mean(axis=0), (side, side), head_weights=head_weights,
                             title=title, head_names=names)


# The photo and its overlay must cover the same box. Book themes style the images of cell outputs
# (pydata-sphinx-theme's dark mode pads them by 0.5 rem, rounds and dims them), so the photo's padding is
# forced to 0, and its "dark-light" class tells the theme it needs no dark-mode treatment.
_TEMPLATE = """<div class="minicap-attention" id="{id}" data-selected-word="0" data-selected-head="mean"
 style="max-width: min(100%, {card}px);">
<style>
.minicap-attention {{font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
  background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 10px 12px; margin: 6px 0;
  display: inline-block; max-width: 100%; box-sizing: border-box;}}
.minicap-attention .mc-title {{font-weight: 600; margin-bottom: 6px;}}
.minicap-attention .mc-words, .minicap-attention .mc-heads {{display: flex; flex-wrap: wrap; gap: 4px;
  align-items: center; margin-bottom: 6px;}}
.minicap-attention .mc-heads span {{font-size: 12px; color: #555; margin-right: 2px;}}
.minicap-attention button {{font: inherit; cursor: pointer; border: 1px solid #bbb; border-radius: 999px;
  background: #f6f6f6; color: #222; padding: 2px 10px; margin: 0;}}
.minicap-attention button.mc-head {{font-size: 12px; padding: 1px 8px;}}
.minicap-attention button:hover, .minicap-attention button.mc-preview {{border-color: #e25822; background: #fff1e8;}}
.minicap-attention button[aria-pressed="true"] {{background: #3b0f70; border-color: #3b0f70; color: #fff;}}
.minicap-attention button:focus-visible {{outline: 2px solid #e25822; outline-offset: 1px;}}
.minicap-attention .mc-stage {{position: relative; max-width: 100%;}}
.minicap-attention .mc-stage img, .minicap-attention .mc-stage canvas {{position: absolute; left: 0; top: 0;
  width: 100%; height: 100%; margin: 0; padding: 0 !important; border: 0; border-radius: 0 !important;
  max-width: none; image-rendering: pixelated; box-sizing: border-box;}}
.minicap-attention .mc-legend {{display: flex; align-items: center; gap: 6px; font-size: 12px; color: #555;
  margin-top: 6px;}}
.minicap-attention .mc-bar {{flex: 1; height: 10px; border-radius: 2px;}}
.minicap-attention .mc-status {{font-size: 12px; color: #555; margin-top: 2px; min-height: 1.4em;}}
</style>
{title}<div class="mc-words" role="group" aria-label="caption word">{words}</div>
{heads}<div class="mc-stage" style="width: {width}px; aspect-ratio: {width} / {height};">
<img class="dark-light" src="{image}" alt="{alt}" style="image-rendering: {smooth};">
<canvas class="mc-overlay" width="{cols}" height="{rows}" style="opacity: {alpha};"></canvas></div>
<div class="mc-legend" style="width: {width}px; max-width: 100%;"><span>0</span>
<div class="mc-bar" style="background: linear-gradient(to right, {stops});"></div><span class="mc-max"></span></div>
<div class="mc-status" aria-live="polite"></div>
<script>
(function () {{
  // The script's own parent, so that two copies of one output (a notebook open twice) both work.
  var script = document.currentScript, parent = script && script.parentNode;
  var root = parent && parent.id === "{id}" ? parent : document.getElementById("{id}");
  if (!root || root.getAttribute("data-ready")) {{ return; }}  // a page that runs its scripts twice
  root.setAttribute("data-ready", "true");
  var data = {data};
  var canvas = root.querySelector("canvas.mc-overlay"), context = canvas.getContext("2d");
  var wordButtons = root.querySelectorAll("button.mc-word"), headButtons = root.querySelectorAll("button.mc-head");
  var colours = [], peaks = {{}}, selected = {{word: 0, head: "mean"}};
  for (var c = 0; c < 256; c++) {{
    colours.push([0, 2, 4].map(function (k) {{ return parseInt(data.colours.substr(6 * c + k, 2), 16); }}));
  }}
  function rowsOf(head) {{ return head === "mean" ? data.mean : data.perHead[+head]; }}
  function peakOf(head) {{  // the colour scale: 0 to the largest weight of this head over all words
    if (!(head in peaks)) {{
      peaks[head] = Math.max.apply(null, rowsOf(head).map(function (row) {{ return Math.max.apply(null, row); }}));
    }}
    return peaks[head] || 1;
  }}
  function draw(word, head) {{
    var values = rowsOf(head)[word], peak = peakOf(head), pixels = context.createImageData(data.cols, data.rows);
    var best = 0;
    for (var p = 0; p < values.length; p++) {{
      var colour = colours[Math.max(0, Math.min(255, Math.round(values[p] / peak * 255)))];
      pixels.data[4 * p] = colour[0]; pixels.data[4 * p + 1] = colour[1]; pixels.data[4 * p + 2] = colour[2];
      pixels.data[4 * p + 3] = 255;
      if (values[p] > values[best]) {{ best = p; }}
    }}
    context.putImageData(pixels, 0, 0);
    root.setAttribute("data-shown-word", word);
    root.setAttribute("data-shown-head", head);
    root.querySelector(".mc-max").textContent = (peak / data.scale).toFixed(3);
    root.querySelector(".mc-status").textContent = "\\u201c" + data.words[word] + "\\u201d, " +
        (head === "mean" ? "mean over heads" : data.heads[+head]) + ": peak " + (values[best] / data.scale).toFixed(3) +
        " at patch (row " + Math.floor(best / data.cols) + ", col " + best % data.cols + ")";
  }}
  function press(buttons, key, value) {{
    for (var i = 0; i < buttons.length; i++) {{
      buttons[i].setAttribute("aria-pressed", String(buttons[i].getAttribute(key) === String(value)));
    }}
  }}
  function select(word, head) {{
    selected = {{word: word, head: head}};
    root.setAttribute("data-selected-word", word);
    root.setAttribute("data-selected-head", head);
    press(wordButtons, "data-word", word);
    press(headButtons, "data-head", head);
    draw(word, head);
  }}
  function wire(buttons, preview, choose) {{
    Array.prototype.forEach.call(buttons, function (button, index) {{
      button.addEventListener("click", function () {{ choose(button); }});
      button.addEventListener("mouseenter", function () {{ button.classList.add("mc-preview"); preview(button); }});
      button.addEventListener("mouseleave", function () {{
        button.classList.remove("mc-preview"); draw(selected.word, selected.head);
      }});
      button.addEventListener("keydown", function (event) {{  // arrow keys walk the row
        var step = {{ArrowRight: 1, ArrowLeft: -1}}[event.key];
        if (!step || !buttons[index + step]) {{ return; }}
        event.preventDefault(); buttons[index + step].focus(); choose(buttons[index + step]);
      }});
    }});
  }}
  function wordOf(button) {{ return +button.getAttribute("data-word"); }}
  function headOf(button) {{ return button.getAttribute("data-head"); }}
  wire(wordButtons, function (b) {{ draw(wordOf(b), selected.head); }}, function (b) {{ select(wordOf(b), selected.head); }});
  wire(headButtons, function (b) {{ draw(selected.word, headOf(b)); }}, function (b) {{ select(selected.word, headOf(b)); }});
  select(0, "mean");
}})();
</script>
</div>"""
