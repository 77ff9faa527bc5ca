"""The book's figures, as reusable functions: each returns the matplotlib ``Axes`` (or figure) it drew; and
:func:`glue`, which hands a value of a page's own run to the page's prose.

Functions are grouped by chapter. All take numpy arrays or backend tensors. Multi-panel figures are at most
``PAGE_WIDTH`` inches wide, so that the book's pages show them at their own size, their labels readable.
"""
import textwrap

import numpy as np
import matplotlib.pyplot as plt
from keras import ops

# The width of a figure on the book's page: the text column is about 690 pixels wide, and matplotlib draws
# 100 pixels per inch. A wider figure is shrunk to fit, and its labels with it.
PAGE_WIDTH = 7.0


def glue(name, value):
    """Record ``value`` (its text, e.g. ``f"{rate:.1%}"``) under ``name`` for the page's prose, where
    ``{glue:text}`name``` shows it: a number the text gives about the page's own run comes from that run.

    myst-nb's ``glue`` when myst-nb is installed (the book's build); elsewhere (Colab) nothing, since no prose
    there reads it. Returns ``value``.
    """
    try:
        from myst_nb import glue as record
    except ImportError:
        return value
    record(name, value, display=False)
    return value


def to_numpy(x):
    """A backend tensor (TensorFlow, JAX, PyTorch) or array-like as a numpy array."""
    return np.asarray(ops.convert_to_numpy(x)) if not isinstance(x, np.ndarray) else x


def show_image(image, ax=None, title=None):
    """Show one image ``(height, width, 3)`` (uint8, or floats in [0, 1]) without axis ticks."""
    image = to_numpy(image)
    ax = ax or plt.gca()
    ax.imshow(image.astype("uint8") if image.dtype != np.uint8 and image.max() > 1.0 else image)
    ax.set_xticks([]), ax.set_yticks([])
    if title:
        ax.set_title(title)
    return ax


def show_patch_grid(image, patch_size, ax=None, numbers=True, title=None):
    """Show an image with its patch boundaries drawn and each patch numbered in reading order."""
    image = to_numpy(image)
    ax = show_image(image, ax, title)
    height, width = image.shape[:2]
    for y in range(0, height + 1, patch_size):
        ax.axhline(y - 0.5, color="white", linewidth=1)
    for x in range(0, width + 1, patch_size):
        ax.axvline(x - 0.5, color="white", linewidth=1)
    if numbers:
        cols = width // patch_size
        for index in range((height // patch_size) * cols):
            row, col = divmod(index, cols)
            ax.text(col * patch_size + patch_size / 2 - 0.5, row * patch_size + patch_size / 2 - 0.5,
                    str(index), color="white", ha="center", va="center", fontsize=7,
                    bbox=dict(facecolor="black", alpha=0.4, pad=1, linewidth=0))
    return ax


def show_patches(patches, patch_size, channels=3, columns=None, figsize=None):
    """Show flattened patches ``(num_patches, patch_size² · channels)`` side by side as a sequence.

    Returns the figure: the sequence the Transformer reads, in order.
    """
    patches = to_numpy(patches)
    count = patches.shape[0]
    columns = columns or count
    rows = int(np.ceil(count / columns))
    fig, axes = plt.subplots(rows, columns, figsize=figsize or (columns * 0.6, rows * 0.75), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_xticks([]), ax.set_yticks([])
        if index < count:
            tile = patches[index].reshape(patch_size, patch_size, channels)
            ax.imshow(tile.astype("uint8") if tile.max() > 1.0 else tile)
            ax.set_title(str(index), fontsize=7, pad=2)
        else:
            ax.axis("off")
    return fig


def heatmap(matrix, ax=None, xlabel=None, ylabel=None, title=None, xticklabels=None,
            yticklabels=None, cmap="viridis", colorbar=True, **imshow_kwargs):
    """A labelled heatmap of a 2-D matrix (encodings, attention weights, similarities)."""
    matrix = to_numpy(matrix)
    ax = ax or plt.gca()
    image = ax.imshow(matrix, cmap=cmap, aspect="auto", **imshow_kwargs)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if xticklabels is not None:
        ax.set_xticks(range(len(xticklabels)), xticklabels, rotation=90)
    if yticklabels is not None:
        ax.set_yticks(range(len(yticklabels)), yticklabels)
    if colorbar:
        plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


# ---- chapters 2 and 3: encodings and attention ------------------------------------------

def show_grid_map(values, grid, ax=None, marked=None, title=None, cmap="viridis", colorbar=True):
    """Show one value per patch ``(height · width,)`` laid out on its ``(height, width)`` grid.

    ``marked`` (a patch index, in row-major order) is outlined, e.g. the patch whose similarity to
    all others, or whose attention, is shown.
    """
    height, width = grid
    values = to_numpy(values).reshape(height, width)
    ax = heatmap(values, ax=ax, xlabel="patch column", ylabel="patch row", title=title, cmap=cmap,
                 colorbar=colorbar)
    ax.set_aspect("equal")
    ax.set_xticks(range(width)), ax.set_yticks(range(height))
    if marked is not None:
        row, col = divmod(int(marked), width)
        ax.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    return ax


def show_attention_heads(weights, query_labels=None, key_labels=None, columns=2, title=None, size=None):
    """One heatmap of attention weights per head: ``weights`` is ``(heads, queries, keys)``.

    Returns the figure; rows are queries, columns keys, and every panel shares the colour scale
    [0, 1] so that heads can be compared. ``size``: a panel's side in inches (default: as wide as
    ``PAGE_WIDTH`` allows).
    """
    weights = to_numpy(weights)
    heads = weights.shape[0]
    columns = min(columns, heads)
    rows = int(np.ceil(heads / columns))
    size = size or (PAGE_WIDTH - 1.2) / columns
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns + 1.2, size * 0.8 * rows + 0.6), squeeze=False,
                             layout="constrained")
    for head, ax in enumerate(axes.flat):
        if head >= heads:
            ax.axis("off")
            continue
        image = ax.imshow(weights[head], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_title(f"head {head}")
        if head // columns == rows - 1:
            ax.set_xlabel("key")
        if head % columns == 0:
            ax.set_ylabel("query")
        if key_labels is not None:
            ax.set_xticks(range(len(key_labels)), key_labels, rotation=90, fontsize=8)
        if query_labels is not None:
            ax.set_yticks(range(len(query_labels)), query_labels if head % columns == 0 else [], fontsize=8)
    fig.colorbar(image, ax=axes, fraction=0.03, pad=0.02, label="attention weight")
    if title:
        fig.suptitle(title)
    return fig


# ---- chapters 4 and 6: the captioning model ------------------------------------------------

def show_word_attention(image, weights, words, grid, columns=5, title=None, size=None, alpha=0.6):
    """Where each word of a caption looks: one panel per word, its cross-attention over the patches.

    Args:
        image: ``(height, width, 3)``, uint8 or floats in [0, 1].
        weights: ``(words, patches)`` cross-attention weights (e.g. one layer, averaged over heads).
        words: one label per row of ``weights``.
        grid: ``(rows, cols)`` of the patch grid, ``rows · cols = patches``.
        columns: panels per row; size: a panel's side in inches (default: as wide as ``PAGE_WIDTH`` allows).

    Each panel shows the image with the word's weights, upsampled to pixels, laid over it; all
    panels share one colour scale (0 to the largest weight) so that words can be compared.
    Returns the figure.
    """
    image, weights = to_numpy(image), to_numpy(weights)
    rows, cols = grid
    if weights.ndim != 2 or weights.shape[1] != rows * cols or weights.shape[0] != len(words):
        raise ValueError(f"weights of shape {weights.shape} do not match {len(words)} words over a "
                         f"{rows}x{cols} grid: expected ({len(words)}, {rows * cols})")
    height, width = image.shape[:2]
    count = len(words)
    columns = min(columns, count)
    panel_rows = int(np.ceil(count / columns))
    size = size or min(2.2, (PAGE_WIDTH - 0.9) / columns)
    fig, axes = plt.subplots(panel_rows, columns, figsize=(size * columns + 0.9, (size + 0.3) * panel_rows + 0.5),
                             squeeze=False, layout="constrained")
    vmax = float(weights.max()) or 1.0
    for index, ax in enumerate(axes.flat):
        if index >= count:
            ax.axis("off")
            continue
        show_image(image, ax, title=str(words[index]))
        overlay = ax.imshow(weights[index].reshape(rows, cols), cmap="inferno", alpha=alpha, vmin=0.0, vmax=vmax,
                            extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="nearest")
    fig.colorbar(overlay, ax=axes, fraction=0.02, pad=0.01, label="attention weight")
    if title:
        fig.suptitle(title)
    return fig


def show_captioned(images, captions, columns=4, size=None, title=None, wrap=None):
    """Images in a grid, each with its caption (or a list of captions) underneath. Returns the figure.

    ``size``: an image's side in inches (default: as wide as ``PAGE_WIDTH`` allows); ``wrap``: characters
    per caption line (default: what fits under the image). Each row of the grid is as tall as its
    longest caption needs, so that no caption runs into the images below it.
    """
    count = len(images)
    columns = min(columns, count)
    rows = int(np.ceil(count / columns))
    size = size or min(2.4, PAGE_WIDTH / columns)
    wrap = wrap or max(16, int(size / 0.07))  # characters of 8-point text per line under the image
    texts = []
    for text in captions:
        lines = text if isinstance(text, (list, tuple)) else [text]
        texts.append("\n".join(textwrap.fill(line, wrap) for line in lines))
    line_height = 8 * 1.3 / 72  # inches per line of 8-point text
    text_heights = [max(text.count("\n") + 1 for text in texts[row * columns:(row + 1) * columns]) * line_height
                    for row in range(rows)]
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns, rows * (size + 0.2) + sum(text_heights) + 0.5),
                             squeeze=False, layout="constrained",
                             gridspec_kw={"height_ratios": [size + height for height in text_heights]})
    for index, ax in enumerate(axes.flat):
        if index >= count:
            ax.axis("off")
            continue
        show_image(images[index], ax)
        ax.set_xlabel(texts[index], fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def show_history(record, title=None):
    """Training curves from a ``minicap.training.History`` record: loss and accuracy per epoch, and the
    learning rate per step.

    Each epoch's training value is the mean over its steps (the weights change during the epoch, so it
    trails the validation value, measured with the weights at the epoch's end). Returns the figure.
    """
    epochs = record["epochs"]
    numbers = [entry["epoch"] for entry in epochs]
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.7), layout="constrained")
    for ax, key, label in ((axes[0], "loss", "masked cross-entropy"), (axes[1], "accuracy", "token accuracy")):
        ax.plot(numbers, [entry[key] for entry in epochs], "o-", markersize=3, label="training (epoch mean)")
        validated = [entry for entry in epochs if f"val_{key}" in entry]
        if validated:
            ax.plot([entry["epoch"] for entry in validated], [entry[f"val_{key}"] for entry in validated], "s-",
                    markersize=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    axes[2].plot(record["step"], record["learning_rate"])
    axes[2].set_xlabel("training step")
    axes[2].set_ylabel("learning rate")
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if title:
        fig.suptitle(title)
    return fig
