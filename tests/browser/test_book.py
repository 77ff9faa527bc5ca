"""The rendered book in a real browser: every page of the table of contents opened in headless Chromium.

Each page must load without console errors or requests leaving localhost (the Colab badge image, which
readers get from the web, is answered locally; MathJax comes with the book), show every image, typeset
every equation, show the outputs of its code cells, resolve its citations and internal links, and list
every chapter in its navigation. A full-page screenshot of each page is saved to _build/screenshots.
"""
import json
import re
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest

from minicap import colab

from .conftest import HTML, ROOT, SCREENSHOTS, toc_pages

pytestmark = pytest.mark.browser

PAGES = toc_pages()
CHAPTER = re.compile(r"(^|/)\d\d_[^/]+$")  # book/01_patches: a chapter notebook
NOTEBOOKS = [page for page in PAGES if (ROOT / f"{page}.ipynb").is_file()]  # chapters, appendix, photos notebook
# The notebooks the book shows unexecuted: their metadata turns myst-nb's execution off.
UNEXECUTED = [page for page in NOTEBOOKS
              if json.loads((ROOT / f"{page}.ipynb").read_text()).get("metadata", {}).get("mystnb", {})
              .get("execution_mode") == "off"]
TIMEOUT_MS = 90_000  # two shared CPU cores: MathJax typesetting a long page can take a while
# The Colab badge image comes from Colab's site; offline a stand-in of the same size answers.
BADGE_SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" width="117" height="20">'
             b'<rect width="117" height="20" rx="3" fill="#555"/><rect x="52" width="65" height="20" rx="3" '
             b'fill="#f9ab00"/><text x="5" y="14" fill="#fff" font-family="sans-serif" font-size="11">Open in'
             b'</text><text x="66" y="14" fill="#fff" font-family="sans-serif" font-size="11">Colab</text></svg>')

PAGE_FACTS = """() => {
  const article = document.querySelector('.bd-article') || document.body;
  const nonEmpty = (el) => el.textContent.trim().length > 0 ||  // textContent: a closed solution's output too
      el.querySelector('img, svg, table, canvas, iframe, video') !== null;
  return {
    title: document.title,
    brokenImages: Array.from(document.images)
        .filter((img) => !img.complete || img.naturalWidth === 0).map((img) => img.currentSrc || img.src),
    images: document.images.length,
    math: document.querySelectorAll('.math').length,
    untypeset: Array.from(document.querySelectorAll('.math'))
        .filter((el) => el.querySelector('mjx-container') === null).map((el) => el.textContent.slice(0, 80)),
    typeset: document.querySelectorAll('mjx-container').length,
    mathErrors: Array.from(document.querySelectorAll('mjx-merror'))
        .map((el) => el.getAttribute('data-mjx-error') || el.textContent.slice(0, 80)),
    outputs: article.querySelectorAll('.cell_output').length,
    emptyOutputs: Array.from(article.querySelectorAll('.cell_output')).filter((el) => !nonEmpty(el)).length,
    figureCellsWithoutImage: Array.from(article.querySelectorAll('div.cell'))
        .filter((cell) => /plt\\.show\\(\\)/.test((cell.querySelector('.cell_input') || cell).textContent))
        .filter((cell) => cell.querySelector('.cell_output img, .cell_output svg') === null)
        .map((cell) => cell.querySelector('.cell_input').textContent.trim().slice(0, 80)),
    sidebar: Array.from(document.querySelectorAll('nav.bd-docs-nav a.reference.internal')).map((a) => a.href),
    next: (document.querySelector('a.right-next') || {}).href || null,
    articleLinks: Array.from(article.querySelectorAll('a[href]')).map((a) => a.href),
    text: article.innerText,
  };
}"""


def page_url(base, docname):
    return urljoin(base, f"{docname}.html")


def local_path(url):
    """The file under _build/html that a localhost URL names (index for a directory)."""
    path = unquote(urlparse(url).path).lstrip("/")
    return HTML / (path or "index.html")


class PageVisit:
    """Opens one page with every request outside localhost answered locally or refused, and records
    console errors, uncaught exceptions, failed and unexpected requests as problems."""

    def __init__(self, browser, base, width=1280):
        self.base, self.problems = base, []
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.context.set_default_timeout(TIMEOUT_MS)
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"uncaught exception: {error}"))
        self.page.on("requestfailed", self._request_failed)

    def _request_failed(self, request):
        # net::ERR_ABORTED: the browser dropped the request because the test moved on to the next page (a font
        # MathJax was still fetching); a missing file is a 404 response and a refused one is recorded by _route.
        if request.failure != "net::ERR_ABORTED":
            self.problems.append(f"request failed: {request.url} ({request.failure})")

    def _console(self, message):
        if message.type == "error":
            self.problems.append(f"console error: {message.text} at {message.location.get('url')}")

    def _route(self, route):
        url = route.request.url
        if url.startswith(self.base):
            route.continue_()
        elif url == colab.COLAB_BADGE_IMAGE:
            route.fulfill(status=200, body=BADGE_SVG, content_type="image/svg+xml")
        else:
            self.problems.append(f"request leaves localhost: {url}")
            route.abort()

    def open(self, docname):
        response = self.page.goto(page_url(self.base, docname), wait_until="load")
        if response is None or response.status != 200:
            self.problems.append(f"{docname}: HTTP status {response and response.status}")
        self.page.wait_for_load_state("networkidle")
        if self.page.evaluate("() => document.querySelectorAll('.math').length") > 0:
            self.page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
            self.page.evaluate("() => MathJax.startup.promise.then(() => true)")
            self.page.wait_for_load_state("networkidle")  # the fonts the typeset equations use
        return self.page.evaluate(PAGE_FACTS)

    def close(self):
        self.context.close()


@pytest.fixture
def visit(browser, server):
    visit = PageVisit(browser, server)
    yield visit
    visit.close()


def set_theme(page, mode):
    """Switch the page to the theme's "light" or "dark" mode, as its theme button does."""
    page.evaluate("(mode) => { document.documentElement.dataset.theme = mode;"
                  " document.documentElement.dataset.mode = mode; }", mode)


def chapters():
    return [page for page in PAGES if CHAPTER.search(page)]


def broken_internal_links(links, url):
    """Links into the book whose page is missing or has no element with the link's #fragment."""
    broken = []
    for link in links:
        if not link.startswith(url.split("/book/")[0]) or link.startswith("javascript:"):
            continue
        target = local_path(link.split("#")[0])
        if not target.is_file():
            broken.append(f"{link} (no page)")
            continue
        fragment = unquote(urlparse(link).fragment)
        if fragment and f'id="{fragment}"' not in target.read_text(encoding="utf-8"):
            broken.append(f"{link} (no #{fragment} there)")
    return broken


def test_every_toc_page_was_built(built_book):
    assert len(PAGES) >= 3 and any(CHAPTER.search(page) for page in PAGES)
    missing = [page for page in PAGES if not (built_book / f"{page}.html").is_file()]
    assert not missing, f"pages of _toc.yml missing from {built_book}: {missing}"


@pytest.mark.parametrize("docname", PAGES)
def test_page_renders_completely(visit, docname):
    facts = visit.open(docname)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    visit.page.screenshot(path=str(SCREENSHOTS / f"{Path(docname).name}.png"), full_page=True)
    set_theme(visit.page, "dark")
    visit.page.screenshot(path=str(SCREENSHOTS / f"{Path(docname).name}-dark.png"), full_page=True)
    set_theme(visit.page, "light")
    url = page_url(visit.base, docname)
    problems = list(visit.problems)
    if facts["brokenImages"]:
        problems.append(f"images that did not load: {facts['brokenImages']}")
    if facts["untypeset"] or facts["mathErrors"]:
        problems.append(f"equations not typeset: {facts['untypeset']}, TeX errors: {facts['mathErrors']}")
    if "??" in facts["text"]:
        problems.append("unresolved reference or citation ('??') in the text")
    broken = broken_internal_links(facts["articleLinks"], url)
    if broken:
        problems.append(f"internal links or citations that lead nowhere: {broken}")
    chapters = [page_url(visit.base, page) for page in PAGES[1:]]
    sidebar = [link.split("#")[0] for link in facts["sidebar"]]
    absent = [chapter for chapter in chapters if chapter not in sidebar]
    if absent:
        problems.append(f"the sidebar navigation does not reach: {absent}")
    if CHAPTER.search(docname):
        if facts["outputs"] == 0 or facts["emptyOutputs"]:
            problems.append(f"code cell outputs: {facts['outputs']} shown, {facts['emptyOutputs']} of them empty")
        if facts["figureCellsWithoutImage"]:
            problems.append(f"cells calling plt.show() without a figure: {facts['figureCellsWithoutImage']}")
    if docname in UNEXECUTED and (facts["outputs"] or "not executed when the book is built" not in facts["text"]):
        problems.append("a page shown unexecuted must say so, and show no outputs")
    if docname in NOTEBOOKS:
        notebook = f"{Path(docname).name}.ipynb"
        badges = [link for link in facts["articleLinks"] if link.startswith("https://colab.research.google.com/")]
        if badges[:1] != [colab.colab_url(notebook)]:
            problems.append(f"the Colab badge should open {colab.colab_url(notebook)}, links: {badges}")
    assert not problems, f"{docname}:\n  " + "\n  ".join(problems)


def test_next_links_walk_the_book_in_toc_order(visit):
    """From the front page, the 'next' button visits every page of the table of contents in order."""
    walked, docname = [], PAGES[0]
    while docname is not None and len(walked) <= len(PAGES):
        walked.append(docname)
        facts = visit.open(docname)
        assert facts["title"].strip(), f"{docname} has no title"
        docname = facts["next"] and str(Path(urlparse(facts["next"]).path.lstrip("/")).with_suffix(""))
    assert walked == PAGES
    assert not visit.problems, visit.problems


def pages_with_math(html=HTML):
    """The table of contents' pages whose HTML holds TeX for MathJax (elements of class "math")."""
    return [page for page in PAGES if 'class="math' in (html / f"{page}.html").read_text(encoding="utf-8")]


def test_math_renders_offline_in_a_downloaded_copy(browser, built_book):
    """A copy of the built book opened from disk, with no network at all, typesets every equation: the
    pages load MathJax from the book's own _static/mathjax (no CDN), and it draws each formula as CHTML
    elements in its own fonts instead of leaving TeX on the page."""
    pages = pages_with_math(built_book)
    assert len(pages) >= 3, f"expected several pages with equations, found {pages}"
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    problems, refused = [], []

    def offline(route):
        url = route.request.url
        if url.startswith("file://"):
            route.continue_()
        elif url == colab.COLAB_BADGE_IMAGE:  # an image that a reader's browser fetches; not the math
            route.fulfill(status=200, body=BADGE_SVG, content_type="image/svg+xml")
        else:
            refused.append(url)
            route.abort()

    context.route("**/*", offline)
    page = context.new_page()
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(f"uncaught exception: {error}"))
    try:
        for docname in pages:
            page.goto((built_book / f"{docname}.html").resolve().as_uri(), wait_until="load")
            sources = page.evaluate("() => Array.from(document.scripts, (s) => s.src).filter((s) => /mathjax/i.test(s))")
            assert sources and all(src.startswith("file://") and "/_static/mathjax/" in src for src in sources), \
                f"{docname} loads MathJax from {sources}, not from the book's _static/mathjax"
            page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
            page.evaluate("() => MathJax.startup.promise.then(() => true)")
            page.evaluate("() => { const shown = Array.from(document.querySelectorAll('mjx-container'))"
                          ".find((el) => el.offsetParent !== null); if (shown) { shown.scrollIntoView(); } }")
            page.evaluate("() => document.fonts.ready.then(() => true)")
            facts = page.evaluate(PAGE_FACTS)
            fonts = page.evaluate("() => Array.from(document.fonts).filter((f) => f.family.startsWith('MJX'))"
                                  ".map((f) => f.status)")
            assert facts["math"] > 0 and not facts["untypeset"] and not facts["mathErrors"], (docname, facts["untypeset"])
            assert facts["typeset"] >= facts["math"], docname
            assert "loaded" in fonts, f"{docname}: MathJax's fonts did not load from disk ({fonts})"
            assert not re.search(r"\\\(|\\\[|\$\$", facts["text"]), f"{docname} shows raw TeX"
    finally:
        context.close()
    assert not refused, f"requests that need the network: {refused}"
    assert not problems, problems


# Every cell tagged hide-cell (an exercise's solution) and every closed dropdown: what of it shows.
HIDDEN_FACTS = """() => {
  const shown = (el) => el.checkVisibility();
  const cells = Array.from(document.querySelectorAll('div.cell.tag_hide-cell'));
  return {
    cells: cells.length,
    cellsShowing: cells.filter((cell) => Array.from(cell.querySelectorAll('.cell_output, .cell_input'))
        .some(shown)).map((cell) => cell.textContent.trim().slice(0, 80)),
    dropdownsShowing: Array.from(document.querySelectorAll('details:not([open]) .sd-summary-content'))
        .filter(shown).map((el) => el.textContent.trim().slice(0, 80)),
  };
}"""


def test_solutions_stay_hidden_until_the_reader_opens_them(visit):
    """An exercise's solution, its text and its code cell's output alike (a printed number, a plot), shows
    only once the reader opens it, and then it does."""
    solution_cells = 0
    for docname in chapters():
        visit.open(docname)
        facts = visit.page.evaluate(HIDDEN_FACTS)
        assert not facts["cellsShowing"], f"{docname}: solution cells visible before opening: {facts['cellsShowing']}"
        assert not facts["dropdownsShowing"], f"{docname}: dropdown text visible before opening"
        cells = visit.page.locator("div.cell.tag_hide-cell")
        for index in range(cells.count()):
            cell = cells.nth(index)
            cell.locator("summary").first.click()
            outputs = cell.locator(".cell_output")
            assert outputs.count() == 0 or outputs.first.is_visible(), f"{docname}: opened solution shows no output"
        solution_cells += facts["cells"]
    assert solution_cells >= 5, "the chapters' solution cells are tagged hide-cell"
    assert not visit.problems, visit.problems


# Output images shown narrower than drawn, text outputs and tables wider than their box.
FIT_FACTS = """() => {
  document.querySelectorAll('details').forEach((el) => { el.open = true; });  // solutions too
  const article = document.querySelector('.bd-article');
  const images = Array.from(article.querySelectorAll('.cell_output img'));
  return {
    shrunk: images.filter((img) => img.naturalWidth > 0 && img.clientWidth < 0.85 * img.naturalWidth)
        .map((img) => `${img.naturalWidth} px shown at ${img.clientWidth} px`),
    cut: Array.from(article.querySelectorAll('.cell_output pre, table'))
        .filter((el) => el.scrollWidth > el.clientWidth + 1)
        .map((el) => el.innerText.split('\\n').reduce((a, b) => (b.length > a.length ? b : a), '').slice(0, 100)),
  };
}"""


def test_figures_and_printed_outputs_fit_the_page(visit):
    """Figures are drawn at the size the page shows them (a figure shrunk to fit shrinks its labels with it),
    and no printed output or table runs past the right edge of its box."""
    for docname in chapters():
        visit.open(docname)
        facts = visit.page.evaluate(FIT_FACTS)
        assert not facts["shrunk"], f"{docname}: figures shrunk to fit the page: {facts['shrunk']}"
        assert not facts["cut"], f"{docname}: outputs wider than the page, cut at the right edge: {facts['cut']}"


# The explorer's photo and its overlay canvas, as laid out: their boxes must coincide.
OVERLAY_FACTS = """() => Array.from(document.querySelectorAll('.minicap-attention')).map((root) => {
  const box = (el) => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; };
  const img = root.querySelector('.mc-stage img'), canvas = root.querySelector('.mc-stage canvas');
  return {img: box(img), canvas: box(canvas), padding: getComputedStyle(img).padding};
})"""


def test_explorer_overlay_lies_on_its_photo_in_light_and_dark_mode(visit):
    """Chapter 6's attention explorers: in both of the theme's modes (dark mode pads and dims the images of
    cell outputs), the overlay covers the photo exactly."""
    docname = next(page for page in chapters() if "minicap-attention" in (HTML / f"{page}.html").read_text())
    visit.open(docname)
    for mode in ("light", "dark"):
        set_theme(visit.page, mode)
        explorers = visit.page.evaluate(OVERLAY_FACTS)
        assert explorers, f"{docname} has no attention explorer"
        for explorer in explorers:
            offsets = [abs(a - b) for a, b in zip(explorer["img"], explorer["canvas"])]
            assert max(offsets) < 0.5, f"{mode} mode: photo {explorer['img']} under overlay {explorer['canvas']}"
            assert explorer["padding"] == "0px", f"{mode} mode: the photo is padded ({explorer['padding']})"
        explorer = visit.page.locator(".minicap-attention").first
        explorer.scroll_into_view_if_needed()
        explorer.screenshot(path=str(SCREENSHOTS / f"explorer-{mode}.png"))
    assert not visit.problems, visit.problems


# Code cells (their input and printed output, solutions opened) wider than their box: a scrollbar hides the end.
CODE_FACTS = """() => {
  document.querySelectorAll('details').forEach((el) => { el.open = true; });
  const blocks = Array.from(document.querySelectorAll('.bd-article div.cell pre'));
  return {
    blocks: blocks.length,
    wide: blocks.filter((el) => el.scrollWidth > el.clientWidth + 1)
        .map((el) => el.innerText.split('\\n').reduce((a, b) => (b.length > a.length ? b : a), '').slice(0, 100)),
  };
}"""


@pytest.mark.parametrize("width", [1280, 1920])
def test_code_cells_fit_their_column_on_a_laptop_and_a_desktop(browser, server, width):
    """Every line of every code cell is visible without scrolling sideways, in a 1280 px (a laptop) and a
    1920 px wide window: no comment hides behind a scrollbar."""
    visit = PageVisit(browser, server, width=width)
    try:
        blocks = 0
        for docname in NOTEBOOKS:
            visit.open(docname)
            facts = visit.page.evaluate(CODE_FACTS)
            assert not facts["wide"], f"{docname} at {width} px: code wider than its column: {facts['wide']}"
            blocks += facts["blocks"]
        assert blocks > 100  # every notebook's code was looked at
        assert not visit.problems, visit.problems
    finally:
        visit.close()


SOLUTION_LABEL = re.compile(r"^Solution to exercise (\d+)$")


def test_each_exercise_has_one_solution_toggle_labelled_alike_on_every_page(visit):
    """One toggle per exercise, "Solution to exercise N", whether the solution is text (a dropdown) or code (a
    hidden cell), numbered 1, 2, ... as the exercises are."""
    for docname in NOTEBOOKS:
        visit.open(docname)
        labels = visit.page.evaluate("""() => {
          const section = document.querySelector('section#exercises');
          if (!section) { return null; }
          const exercises = section.querySelector('ol');
          return {
            exercises: exercises ? exercises.children.length : 0,
            toggles: Array.from(section.querySelectorAll('details > summary'))
                .map((el) => el.innerText.trim()),
          };
        }""")
        if labels is None:
            continue
        numbers = [SOLUTION_LABEL.match(label) for label in labels["toggles"]]
        assert all(numbers), f"{docname}: toggles labelled otherwise: {labels['toggles']}"
        assert [int(m.group(1)) for m in numbers] == list(range(1, labels["exercises"] + 1)), (docname, labels)


def public_names():
    """``module.name`` for every name in the ``__all__`` of every module the reference page documents."""
    import importlib

    page = (ROOT / "book" / "api.md").read_text(encoding="utf-8")
    modules = re.findall(r"^\.\. automodule:: (\S+)\s*$", page, flags=re.M)
    return {f"{module}.{name}" for module in modules for name in importlib.import_module(module).__all__}


def test_the_reference_shows_every_public_name_and_the_chapters_link_into_it(visit):
    """The API reference page has an entry (a signature with its docstring) for every public name, its examples fit
    the column of a 1280 px window, and each chapter's summary links into it, to entries that exist."""
    docname = next(page for page in PAGES if page.endswith("/api"))
    visit.open(docname)
    entries = visit.page.evaluate("""() => Object.fromEntries(
        Array.from(document.querySelectorAll('dt.sig[id]')).map((dt) => [dt.id,
            ((dt.nextElementSibling || {}).innerText || '').trim().length]))""")
    expected = public_names()
    assert len(expected) > 100
    missing = sorted(expected - set(entries))
    assert not missing, f"public names without an entry in the reference: {missing}"
    assert sorted(name for name in expected if entries[name] == 0) == [], "entries without a description"
    examples = visit.page.evaluate("""() => Array.from(document.querySelectorAll('div.doctest pre')).map((pre) =>
        ({wide: pre.scrollWidth > pre.clientWidth + 1, text: pre.textContent.slice(0, 80)}))""")
    assert len(examples) >= 30, f"{len(examples)} docstring examples shown"
    assert [example["text"] for example in examples if example["wide"]] == [], "examples wider than the column"
    for chapter in chapters():
        facts = visit.open(chapter)
        into = [link for link in facts["articleLinks"] if "/api.html#minicap." in link]
        assert len(into) >= 3, f"{chapter} links {len(into)} names into the reference"
        targets = {unquote(urlparse(link).fragment) for link in into}
        assert targets <= set(entries), f"{chapter} links to entries the reference lacks: {targets - set(entries)}"
    assert not visit.problems, visit.problems
