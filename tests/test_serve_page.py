"""The page end to end: the real server on loopback with the bundled model, driven in headless Chromium.

Chromium is Debian's (``apt-get install -y chromium``), driven by Playwright through ``executable_path``:
Playwright's own browser download is never used. Without Chromium or Playwright this test FAILS, so that
CI cannot pass without running it; set ``MULTIHEAD_SKIP_BROWSER=1`` to skip it on purpose. Set
``MULTIHEAD_CHROMIUM`` to use another Chromium binary.

A screenshot of the page goes to ``$MULTIHEAD_TEST_ARTIFACTS`` (default ``tests/artifacts/``, git-ignored)
as ``serve-page.png``.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import multihead

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("MULTIHEAD_TEST_ARTIFACTS", REPO / "tests" / "artifacts"))
CHROMIUM = os.environ.get("MULTIHEAD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
EXAMPLE = Path(multihead.__file__).parent / "examples" / "WBC-Malignant-Early-011.jpg"
TIMEOUT_MS = 90_000  # Grad-CAM of the 640 px bundled model takes seconds on a busy 2-core machine


def _browser_or_fail():
    """Playwright's sync API, or a failure that says what to install (a skip only when asked for)."""
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "the Python package playwright is not installed (pip install -e '.[dev]')"
    if problem is None and not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        problem = f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set MULTIHEAD_CHROMIUM)"
    if problem is not None:
        if os.environ.get("MULTIHEAD_SKIP_BROWSER") == "1":
            pytest.skip(f"MULTIHEAD_SKIP_BROWSER=1: {problem}")
        pytest.fail(f"{problem}; set MULTIHEAD_SKIP_BROWSER=1 to skip the browser test on purpose", pytrace=False)
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """``multihead serve`` with the bundled model, in a thread of this process, on a free loopback port."""
    uvicorn = pytest.importorskip("uvicorn", reason="the serve extra is not installed")
    from multihead.serve import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def page(server_url):
    sync_playwright = _browser_or_fail()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1180, "height": 900})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server_url)
        page.locator("#model-info", has_text="Model: default.safetensors").wait_for()  # no eval: the CSP forbids it
        yield page
        browser.close()


def test_upload_shows_organ_subtype_bars_and_gradcam(page):
    expected = multihead.classify(EXAMPLE)  # the bundled model, as the server uses
    bundled = multihead.load(multihead.inference.default_model_path())
    taxonomy = bundled.taxonomy
    page.set_input_files("#file-input", str(EXAMPLE))
    result = page.locator(f'article.result[data-file="{EXAMPLE.name}"]')
    result.and_(page.locator("[data-state=done]")).wait_for()
    assert result.get_attribute("data-organ") == expected.organ
    assert result.get_attribute("data-subtype") == expected.subtype
    assert result.locator(".organ").inner_text() == taxonomy.display_name(expected.organ)
    assert result.locator(".subtype").inner_text().startswith(taxonomy.display_name(expected.subtype))
    status = "out_of_distribution" if expected.out_of_distribution else expected.status
    assert result.get_attribute("data-status") == status
    assert result.locator(".organ-chart .bar").count() == taxonomy.num_organs
    assert result.locator(".subtype-chart .bar").count() == len(taxonomy.organ(expected.organ).subtypes)
    assert result.locator(".organ-chart .bar.chosen .bar-label").inner_text() == taxonomy.display_name(expected.organ)

    result.and_(page.locator("[data-gradcam=done]")).wait_for()
    for image in ("cam-input", "cam-organ", "cam-subtype"):
        width = result.locator(f".{image}").evaluate("img => img.complete && img.naturalWidth")
        assert width == bundled.preprocessing.image_size
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
    assert (ARTIFACTS / "serve-page.png").stat().st_size > 10_000


def test_a_file_that_is_not_an_image_shows_the_servers_message(page):
    page.set_input_files("#file-input", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                "buffer": b"organ: lung\n"}])
    result = page.locator('article.result[data-file="notes.txt"]')
    result.and_(page.locator("[data-state=error]")).wait_for()
    message = result.locator(".error").inner_text()
    assert message.startswith("notes.txt: not an image file")
