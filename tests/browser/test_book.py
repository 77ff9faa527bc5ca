"""The rendered book in a real browser: every page of the table of contents opened in headless Chromium.

Each page must load without console errors or requests leaving localhost (MathJax and the Colab badge
image, which readers get from the web, are answered locally), show every image, typeset every
equation, show the outputs of its code cells, resolve its citations and internal links, and list
every chapter in its navigation. A full-page screenshot of each page is saved to _build/screenshots.
"""
import mimetypes
import re
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest

from minicap import colab

from .conftest import HTML, MATHJAX_CDN, SCREENSHOTS, toc_pages

pytestmark = pytest.mark.browser

PAGES = toc_pages()
CHAPTER = re.compile(r"(^|/)\d\d_[^/]+$")  # book/01_patches: a chapter notebook
TIMEOUT_MS = 90_000  # two shared CPU cores: MathJax typesetting a long page can take a while
# The Colab badge image comes from Colab's site; offline a stand-in of the same size answers.
BADGE_SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" width="117" height="20">'
             b'<rect width="117" height="20" rx="3" fill="#555"/><rect x="52" width="65" height="20" rx="3" '
             b'fill="#f9ab00"/><text x="5" y="14" fill="#fff" font-family="sans-serif" font-size="11">Open in'
             b'</text><text x="66" y="14" fill="#fff" font-family="sans-serif" font-size="11">Colab</text></svg>')

PAGE_FACTS = """() => {
  const article = document.querySelector('.bd-article') || document.body;
  const nonEmpty = (el) => el.innerText.trim().length > 0 ||
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

    def __init__(self, browser, base, mathjax_dir):
        self.base, self.mathjax_dir, self.problems = base, Path(mathjax_dir), []
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.set_default_timeout(TIMEOUT_MS)
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"uncaught exception: {error}"))
        self.page.on("requestfailed", lambda request: self.problems.append(
            f"request failed: {request.url} ({request.failure})"))

    def _console(self, message):
        if message.type == "error":
            self.problems.append(f"console error: {message.text} at {message.location.get('url')}")

    def _route(self, route):
        url = route.request.url
        if url.startswith(self.base):
            route.continue_()
        elif url.startswith(MATHJAX_CDN):
            file = self.mathjax_dir / urlparse(url).path.split("/mathjax@3/", 1)[1]
            if file.is_file():
                content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                route.fulfill(status=200, body=file.read_bytes(), content_type=content_type)
            else:
                self.problems.append(f"MathJax asked for {url}, which mathjax@3 does not have")
                route.fulfill(status=404, body=b"")
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
def visit(browser, server, mathjax_dir):
    visit = PageVisit(browser, server, mathjax_dir)
    yield visit
    visit.close()


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


def test_chapter_one_equations_are_typeset(visit):
    """Chapter 1 writes P x P in TeX: MathJax (served locally) must have typeset it."""
    chapter_one = next(page for page in PAGES if Path(page).name.startswith("01_"))
    facts = visit.open(chapter_one)
    assert facts["math"] > 0 and facts["typeset"] >= facts["math"], facts["untypeset"]
    assert visit.page.locator("mjx-container").first.is_visible()
    assert not visit.problems, visit.problems
