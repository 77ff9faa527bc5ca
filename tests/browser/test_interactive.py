"""AttentionExplorer in headless Chromium: clicking, hovering and head selection redraw the overlay.

A page with two explorers of planted weights (word 0 attends only to patch 0, word 1 only to the
last patch) is served from a temporary folder on localhost. The overlay canvas holds one pixel per
patch, so its pixels say exactly what is drawn; a screenshot checks that the reader sees it too.
"""
import functools
import http.server
import io
import threading

import numpy as np
import pytest
from PIL import Image

from minicap.interactive import AttentionExplorer, _inferno

from .conftest import SCREENSHOTS, _QuietHandler

pytestmark = pytest.mark.browser

GRID = (3, 4)
PATCHES = GRID[0] * GRID[1]
TABLE, _ = _inferno()
HOT, COLD = (tuple(int(TABLE[i:i + 2], 16) for i in range(start, start + 6, 2)) for start in (255 * 6, 0))
TRICKY = '<b>"x"</b>'


def planted(pairs):
    """``(words, patches)`` weights where word i attends only to patch ``pairs[i]``."""
    weights = np.zeros((len(pairs), PATCHES))
    weights[np.arange(len(pairs)), pairs] = 1.0
    return weights


def explorers():
    image = np.full((90, 120, 3), 128, np.uint8)  # grey: the overlay alone decides what is bright
    heads = np.stack([planted([1, 10]), planted([5, 6])])  # head 1 and head 2, words 0 and 1
    first = AttentionExplorer(image, ["first", "last"], planted([0, PATCHES - 1]), GRID, head_weights=heads,
                              title="first figure")
    second = AttentionExplorer(image, ["first", TRICKY], planted([0, PATCHES - 1]), GRID, title="second figure")
    return first, second


def page_html():
    first, second = explorers()
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>explorers</title></head><body>'
            f'{first.to_html()}<p id="elsewhere">text between the figures</p>{second.to_html()}</body></html>')


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A temporary folder with the two-figure page and an empty page, served on localhost."""
    folder = tmp_path_factory.mktemp("explorers")
    (folder / "explorers.html").write_text(page_html(), encoding="utf-8")
    (folder / "empty.html").write_text("<!DOCTYPE html><html><body></body></html>", encoding="utf-8")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def page(browser, site):
    context = browser.new_context(viewport={"width": 900, "height": 1000})
    page = context.new_page()
    page.problems = []
    page.on("console", lambda message: message.type == "error" and page.problems.append(message.text))
    page.on("pageerror", lambda error: page.problems.append(f"uncaught exception: {error}"))
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(site)
                  else (page.problems.append(f"request leaves localhost: {route.request.url}"), route.abort()))
    page.goto(site + "explorers.html", wait_until="load")
    yield page
    context.close()


def figure(page, index):
    return page.locator(".minicap-attention").nth(index)


def overlay(root):
    """The overlay canvas's pixels, one ``(r, g, b)`` per patch in row-major order."""
    data = root.locator("canvas").evaluate(
        "(c) => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)")
    return [tuple(data[i:i + 3]) for i in range(0, len(data), 4)]


def bright_only_at(root, patch):
    pixels = overlay(root)
    return len(pixels) == PATCHES and pixels[patch] == HOT and all(
        colour == COLD for index, colour in enumerate(pixels) if index != patch)


def state(root):
    return {key: root.get_attribute(f"data-{key}") for key in ("selected-word", "selected-head", "shown-word")}


def test_click_selects_a_word_and_redraws_only_its_own_figure(page):
    first, second = figure(page, 0), figure(page, 1)
    assert first.get_attribute("id") != second.get_attribute("id")
    assert bright_only_at(first, 0) and bright_only_at(second, 0)
    first.get_by_role("button", name="last").click()
    assert state(first) == {"selected-word": "1", "selected-head": "mean", "shown-word": "1"}
    assert bright_only_at(first, PATCHES - 1)
    assert first.locator(".mc-word").nth(1).get_attribute("aria-pressed") == "true"
    assert first.locator(".mc-word").nth(0).get_attribute("aria-pressed") == "false"
    assert state(second)["selected-word"] == "0" and bright_only_at(second, 0)  # the other figure is untouched

    # What the reader sees: the last patch's region bright, patch 0's dark (the overlay over grey).
    page.mouse.move(0, 0)
    shot = np.asarray(Image.open(io.BytesIO(first.locator(".mc-stage").screenshot())).convert("L"), dtype=float)
    rows, cols = GRID
    height, width = shot.shape
    centre = lambda patch: shot[int((patch // cols + 0.5) * height / rows), int((patch % cols + 0.5) * width / cols)]  # noqa: E731
    assert centre(PATCHES - 1) > 180 and centre(0) < 80, (centre(PATCHES - 1), centre(0))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "interactive-explorers.png"), full_page=True)
    assert not page.problems, page.problems


def test_head_selector_shows_each_heads_weights(page):
    first = figure(page, 0)
    first.locator('.mc-head[data-head="0"]').click()
    assert state(first)["selected-head"] == "0" and bright_only_at(first, 1)  # head 1, word 0
    first.get_by_role("button", name="last").click()
    assert state(first) == {"selected-word": "1", "selected-head": "0", "shown-word": "1"}
    assert bright_only_at(first, 10)  # head 1, word 1
    first.locator('.mc-head[data-head="1"]').click()
    assert bright_only_at(first, 6)  # head 2, word 1
    first.locator('.mc-head[data-head="mean"]').click()
    assert state(first)["selected-head"] == "mean" and bright_only_at(first, PATCHES - 1)
    assert figure(page, 1).locator(".mc-head").count() == 0  # no head weights given, no selector
    assert state(figure(page, 1))["selected-head"] == "mean" and bright_only_at(figure(page, 1), 0)
    assert not page.problems, page.problems


def test_hover_previews_and_leaving_restores_the_selection(page):
    first = figure(page, 0)
    first.get_by_role("button", name="last").hover()
    assert state(first) == {"selected-word": "0", "selected-head": "mean", "shown-word": "1"}
    assert bright_only_at(first, PATCHES - 1)
    first.locator('.mc-head[data-head="1"]').hover()  # previewing a head keeps the selected word
    assert first.get_attribute("data-shown-head") == "1" and bright_only_at(first, 5)
    page.locator("#elsewhere").hover()
    assert state(first) == {"selected-word": "0", "selected-head": "mean", "shown-word": "0"}
    assert bright_only_at(first, 0)
    assert not page.problems, page.problems


def test_keyboard_selects_words(page):
    first = figure(page, 0)
    first.locator(".mc-word").nth(0).focus()
    page.keyboard.press("ArrowRight")
    assert state(first)["selected-word"] == "1" and bright_only_at(first, PATCHES - 1)
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("Tab")  # to the next word
    page.keyboard.press("Enter")
    assert state(first)["selected-word"] == "1"
    assert not page.problems, page.problems


def test_words_are_text_and_no_global_names_leak(page, site):
    second = figure(page, 1)
    tricky = second.locator(".mc-word").nth(1)
    assert tricky.inner_text() == TRICKY and tricky.locator("b").count() == 0
    tricky.click()
    assert TRICKY in second.locator(".mc-status").inner_text()
    names = set(page.evaluate("() => Object.keys(window)"))
    page.goto(site + "empty.html", wait_until="load")
    assert names - set(page.evaluate("() => Object.keys(window)")) == set()
    assert not page.problems, page.problems


# How notebook front ends show an output: Colab writes it into an iframe; JupyterLab sets innerHTML and
# re-creates each <script> (copying its attributes) so that it runs, which may happen twice for one output.
INSERT = """([target, fragment]) => {
  const host = document.getElementById(target);
  host.innerHTML = fragment;
  host.querySelectorAll('script').forEach((old) => {
    const script = document.createElement('script');
    Array.from(old.attributes).forEach((a) => script.setAttribute(a.name, a.value));
    script.textContent = old.textContent;
    old.replaceWith(script);
  });
}"""


def test_works_in_an_iframe_and_when_one_output_is_inserted_twice(page, site):
    fragment = explorers()[0].to_html()
    page.goto(site + "empty.html", wait_until="load")
    page.set_content('<iframe id="frame" style="width: 700px; height: 600px"></iframe><div id="a"></div>'
                     '<div id="b"></div>')
    page.evaluate("(html) => { document.getElementById('frame').srcdoc = html; }", fragment)
    framed = page.frame_locator("#frame").locator(".minicap-attention")
    framed.get_by_role("button", name="last").click()
    assert framed.get_attribute("data-selected-word") == "1" and bright_only_at(framed, PATCHES - 1)
    page.evaluate(INSERT, ["a", fragment])
    page.evaluate(INSERT, ["b", fragment])  # the same element id twice on one page
    for target in ("a", "b"):
        root = page.locator(f"#{target} .minicap-attention")
        assert bright_only_at(root, 0)
        root.get_by_role("button", name="last").click()
        assert root.get_attribute("data-selected-word") == "1" and bright_only_at(root, PATCHES - 1)
    assert not page.problems, page.problems
