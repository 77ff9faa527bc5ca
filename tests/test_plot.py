"""The book's figure helpers: they fit the page's width, and their labels do not run into each other."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from minicap import plot  # noqa: E402

# Drawing does not depend on Keras's backend: run once, on the default one.
pytestmark = pytest.mark.single_backend

IMAGES = np.random.default_rng(0).integers(0, 255, size=(6, 24, 24, 3), dtype=np.uint8)
LONG = "a large purple circle right of a small yellow cross and a small red triangle above it"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def extents(figure, artists):
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    return [artist.get_window_extent(renderer) for artist in artists]


def test_captions_never_run_into_the_row_below():
    """Three long captions per image (chapter 6's three decoders): each row is as tall as its text needs."""
    captions = [[f"greedy: {LONG}", f"beam: {LONG}", f"sample: {LONG}"]] * len(IMAGES)
    figure = plot.show_captioned(IMAGES, captions, columns=3)
    axes = figure.axes
    labels = extents(figure, [ax.xaxis.label for ax in axes])
    boxes = extents(figure, axes)
    for above, label in zip(axes[:3], labels[:3]):
        for below in boxes[3:]:
            assert not label.overlaps(below), "a caption of the first row runs into an image of the second"
    assert all(label.y0 >= -1 for label in labels), "the last row's captions are cut off at the bottom"
    assert figure.get_figwidth() <= plot.PAGE_WIDTH


def test_captioned_wraps_to_the_image_width():
    figure = plot.show_captioned(IMAGES[:4], [LONG] * 4, columns=4)
    labels = extents(figure, [ax.xaxis.label for ax in figure.axes])
    boxes = extents(figure, figure.axes)
    for label, box in zip(labels, boxes):
        assert label.width <= box.width * 1.15, "a caption line is much wider than its image"


@pytest.mark.parametrize("count", [4, 11])
def test_word_attention_fits_the_page(count):
    weights = np.random.default_rng(1).random((count, 9))
    figure = plot.show_word_attention(IMAGES[0], weights, [f"w{i}" for i in range(count)], (3, 3))
    assert figure.get_figwidth() <= plot.PAGE_WIDTH
    with pytest.raises(ValueError, match=r"expected \(4, 9\)"):
        plot.show_word_attention(IMAGES[0], weights[:, :8], ["a", "b", "c", "d"], (3, 3))


def test_attention_heads_fit_the_page():
    figure = plot.show_attention_heads(np.full((4, 5, 16), 1 / 16), query_labels=list("abcde"),
                                       key_labels=[str(i) for i in range(16)])
    assert figure.get_figwidth() <= plot.PAGE_WIDTH
    assert len([ax for ax in figure.axes if ax.get_title().startswith("head")]) == 4


def test_history_plots_epoch_means_and_every_steps_rate():
    """Per epoch, the training mean and the validation value (no running mean reset at every epoch start);
    the learning rate at every step."""
    record = {"step": list(range(1, 31)), "learning_rate": [0.001 * min(s / 10, (10 / s) ** 0.5) for s in range(1, 31)],
              "loss": [3.0] * 30, "accuracy": [0.5] * 30,
              "epochs": [{"epoch": e, "step": 10 * e, "loss": 3.0 - e, "accuracy": 0.2 * e,
                          "val_loss": 2.9 - e, "val_accuracy": 0.2 * e + 0.05} for e in (1, 2, 3)]}
    figure = plot.show_history(record, title="run")
    loss_axes, accuracy_axes, rate_axes = figure.axes[:3]
    training, validation = loss_axes.get_lines()
    assert list(training.get_xdata()) == [1, 2, 3] and list(training.get_ydata()) == [2.0, 1.0, 0.0]
    assert list(validation.get_ydata()) == pytest.approx([1.9, 0.9, -0.1])
    assert list(accuracy_axes.get_lines()[1].get_ydata()) == pytest.approx([0.25, 0.45, 0.65])
    assert len(rate_axes.get_lines()[0].get_xdata()) == 30
    assert figure.get_figwidth() <= plot.PAGE_WIDTH + 0.5
