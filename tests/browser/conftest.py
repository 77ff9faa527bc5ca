"""Fixtures for the browser tests: the built book served on localhost, headless Chromium.

The tests need the rendered book (``python3 tools/dev.py book``; $MINICAP_BOOK_HTML and
$MINICAP_BOOK_TOC point at another build and its _toc.yml), Debian's Chromium at
/usr/bin/chromium (or $MINICAP_CHROMIUM) and the Python ``playwright`` package (its driver only: it
never downloads a browser). Without one of them a test skips with the reason, except under CI (the
variable ``CI`` set), where it fails. The book serves its own MathJax (``_static/mathjax``), so the
pages need nothing from the web.
"""
import functools
import http.server
import os
import threading
from pathlib import Path

import pytest
import yaml
from tests.support import unavailable  # tests/conftest.py: skip locally, fail under CI

ROOT = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("MINICAP_BOOK_HTML", ROOT / "_build" / "html"))  # the built book
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = Path(os.environ.get("MINICAP_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


TOC = Path(os.environ.get("MINICAP_BOOK_TOC", ROOT / "_toc.yml"))  # the table of contents it was built from


def toc_pages(toc_file=TOC):
    """The document names of the table of contents in reading order, the root first."""
    toc = yaml.safe_load(Path(toc_file).read_text())
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    return [str(Path(page).with_suffix("")) for page in pages]


@pytest.fixture(scope="session")
def built_book():
    if not (HTML / "index.html").exists():
        unavailable(f"the book is not built ({HTML / 'index.html'} is missing): run `python3 tools/dev.py book`")
    return HTML


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep pytest's output for the test results
        pass


@pytest.fixture(scope="session")
def server(built_book):
    """The built book served over HTTP on a free localhost port; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(built_book))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def browser():
    """Debian's headless Chromium driven by Playwright (which must never download a browser)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is missing: pip install -e '.[browser]'")
    if not CHROMIUM.exists():
        unavailable(f"Chromium is not at {CHROMIUM}: apt-get install chromium (or set MINICAP_CHROMIUM)")
    with sync_playwright() as playwright:
        # Playwright gives the browser a fresh temporary profile (its own --user-data-dir).
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def pytest_collection_modifyitems(config, items):
    """Browser tests run only when asked for: ``-m browser`` or a path inside tests/browser.

    The whole suite runs before the book is built (``python3 tools/dev.py test``, then ``book``,
    then ``browser``), so a plain ``pytest`` leaves them out instead of failing under CI.
    """
    here = Path(__file__).resolve().parent
    asked = "browser" in (config.getoption("markexpr") or "") or any(
        here in (Path(config.invocation_params.dir) / arg.split("::")[0]).resolve().parents
        or (Path(config.invocation_params.dir) / arg.split("::")[0]).resolve() == here
        for arg in config.args)
    if asked:
        return
    deselected = [item for item in items if item.get_closest_marker("browser")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("browser")]
