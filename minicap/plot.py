"""The book's figures, as reusable functions: each returns the matplotlib ``Axes`` (or figure) it drew.

Functions are grouped by chapter. All take numpy arrays or backend tensors.
"""
import numpy as np
import matplotlib.pyplot as plt
from keras import ops


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
            ax.set_title(str(index), fontsize=6)
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


def show_attention_heads(weights, query_labels=None, key_labels=None, columns=4, title=None,
                         size=2.6):
    """One heatmap of attention weights per head: ``weights`` is ``(heads, queries, keys)``.

    Returns the figure; rows are queries, columns keys, and every panel shares the colour scale
    [0, 1] so that heads can be compared.
    """
    weights = to_numpy(weights)
    heads = weights.shape[0]
    columns = min(columns, heads)
    rows = int(np.ceil(heads / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns + 1, size * rows + 0.6), squeeze=False,
                             layout="constrained")
    for head, ax in enumerate(axes.flat):
        if head >= heads:
            ax.axis("off")
            continue
        image = ax.imshow(weights[head], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_title(f"head {head}")
        ax.set_xlabel("key")
        if head % columns == 0:
            ax.set_ylabel("query")
        if key_labels is not None:
            ax.set_xticks(range(len(key_labels)), key_labels, rotation=90, fontsize=7)
        if query_labels is not None:
            ax.set_yticks(range(len(query_labels)), query_labels if head % columns == 0 else [], fontsize=7)
    fig.colorbar(image, ax=axes, fraction=0.02, pad=0.01, label="attention weight")
    if title:
        fig.suptitle(title)
    return fig


# ---- chapters 4 and 6: the captioning model ------------------------------------------------

def show_word_attention(image, weights, words, grid, columns=6, title=None, size=1.9, alpha=0.6):
    """Where each word of a caption looks: one panel per word, its cross-attention over the patches.

    Args:
        image: ``(height, width, 3)``, uint8 or floats in [0, 1].
        weights: ``(words, patches)`` cross-attention weights (e.g. one layer, averaged over heads).
        words: one label per row of ``weights``.
        grid: ``(rows, cols)`` of the patch grid, ``rows · cols = patches``.

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
    fig, axes = plt.subplots(panel_rows, columns, figsize=(size * columns + 1, size * panel_rows + 0.6),
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


def show_captioned(images, captions, columns=4, size=2.4, title=None, wrap=28):
    """Images in a grid, each with its caption (or a list of captions) underneath. Returns the figure."""
    import textwrap

    count = len(images)
    columns = min(columns, count)
    rows = int(np.ceil(count / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns, (size + 0.9) * rows), squeeze=False,
                             layout="constrained")
    for index, ax in enumerate(axes.flat):
        if index >= count:
            ax.axis("off")
            continue
        show_image(images[index], ax)
        text = captions[index]
        lines = text if isinstance(text, (list, tuple)) else [text]
        ax.set_xlabel("\n".join(textwrap.fill(line, wrap) for line in lines), fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def show_history(record, title=None):
    """Training curves from a ``minicap.training.History`` record: loss, accuracy, learning rate.

    Per-step values are the epoch's running means (what the progress bar shows); the validation
    values are marked at the end of each epoch. Returns the figure.
    """
    steps = np.asarray(record["step"])
    epochs = record["epochs"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), layout="constrained")
    for ax, key, label in ((axes[0], "loss", "masked cross-entropy"), (axes[1], "accuracy", "masked token accuracy")):
        ax.plot(steps, record[key], label="training (running mean)", linewidth=1)
        ends = [e["step"] for e in epochs if f"val_{key}" in e]
        if ends:
            ax.plot(ends, [e[f"val_{key}"] for e in epochs if f"val_{key}" in e], "o-",
                    label="validation (end of epoch)")
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.legend()
    axes[2].plot(steps, record["learning_rate"])
    axes[2].set_xlabel("training step")
    axes[2].set_ylabel("learning rate")
    axes[2].set_title("warm-up, then 1/√step")
    if title:
        fig.suptitle(title)
    return fig
