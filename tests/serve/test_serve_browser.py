"""A real headless Chromium drives the page of a real ``fgsearch serve`` process: type a query,
see thumbnails with their best box, open a photo with its regions, drag a box, get region results.

Needs Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it) and the
``playwright`` Python package, which is pointed at that executable (no browser is downloaded).
Without them these tests skip, except under ``FGSEARCH_REQUIRE_BROWSER=1`` (``.ci/run`` sets it),
where they fail: a CI run that skipped the browser is not green.
Screenshots are saved under ``$FGSEARCH_SCREENSHOTS`` (default: the test's temporary folder).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from _serve_data import build_large_library, build_library, start_server

CHROMIUM = os.environ.get("FGSEARCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

REQUIRED = os.environ.get("FGSEARCH_REQUIRE_BROWSER") == "1"

pytestmark = [pytest.mark.browser]

# a file name that would run script if the page ever put names into HTML
HOSTILE = "<img src=x onerror=alert(1)>.png"
VISIBLE_THUMBS_LOADED = """() => [...document.querySelectorAll('#grid .card')]
    .filter(c => { const r = c.getBoundingClientRect(); return r.bottom > 0 && r.top < innerHeight; })
    .every(c => { const i = c.querySelector('img'); return i.complete && i.naturalWidth > 0; })"""
VIEWER_LOADED = "() => { const i = document.getElementById('viewer-img'); return i.complete && i.naturalWidth > 0; }"


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser's path; skips without one, fails instead where it is required (.ci/run)."""
    if not Path(CHROMIUM).exists():
        msg = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if REQUIRED:
            pytest.fail(f"{msg}; FGSEARCH_REQUIRE_BROWSER=1 (set by .ci/run) requires the browser tests", pytrace=False)
        pytest.skip(msg)
    return CHROMIUM


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, chromium: str):
    root = tmp_path_factory.mktemp("browser")
    lib, _ = build_library(root, n=10, hostile_name=HOSTILE)
    proc, url = start_server(lib)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = Path(os.environ.get("FGSEARCH_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def browser(chromium: str):
    if REQUIRED:
        import playwright.sync_api as sync_api
    else:
        sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield b
        b.close()


def test_query_open_photo_and_draw_a_box(server: str, browser, shots: Path) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.fill("#q", "a big red circle")
    page.press("#q", "Enter")
    page.wait_for_selector("#grid .card .box.best")
    page.wait_for_function(VISIBLE_THUMBS_LOADED)
    assert "q=a+big+red+circle" in page.url  # shareable
    n_cards = page.locator("#grid .card").count()
    assert n_cards >= 10
    page.hover("#grid .card >> nth=0")
    page.wait_for_function("() => getComputedStyle(document.querySelector('#grid .card .score')).opacity === '1'")
    page.screenshot(path=str(shots / "1-query-with-boxes.png"))

    # escaping: the hostile file name is shown as text, never run or parsed
    captions = page.locator("#grid .caption").all_text_contents()
    assert HOSTILE in captions
    assert page.locator("#grid img[src='x']").count() == 0

    page.click("#grid .card >> nth=0")
    page.wait_for_selector("#viewer:not([hidden]) #regions .box.region")
    page.wait_for_function(VIEWER_LOADED)
    assert page.locator("#regions .box.region").count() >= 2
    page.screenshot(path=str(shots / "2-photo-with-regions.png"))
    page.keyboard.press("Escape")
    assert page.locator("#viewer").is_hidden()

    page.click("#grid .card >> nth=1")
    page.wait_for_function(VIEWER_LOADED)
    stage = page.locator("#stage").bounding_box()
    assert stage is not None
    x0, y0, w, h = stage["x"], stage["y"], stage["width"], stage["height"]
    page.mouse.move(x0 + 0.1 * w, y0 + 0.15 * h)
    page.mouse.down()
    page.mouse.move(x0 + 0.4 * w, y0 + 0.4 * h, steps=5)
    page.mouse.move(x0 + 0.6 * w, y0 + 0.7 * h, steps=5)
    page.screenshot(path=str(shots / "3-drawing-a-box.png"))
    page.mouse.up()
    page.wait_for_selector("#viewer", state="hidden")
    page.wait_for_function("() => document.getElementById('image-query-label').textContent.startsWith('Region of')")
    page.wait_for_selector("#grid .card .box.best")
    page.wait_for_function(VISIBLE_THUMBS_LOADED)
    assert "box=" in page.url and "image=" in page.url and "q=" not in page.url  # the region is the query
    page.screenshot(path=str(shots / "4-region-results.png"))
    region_url = page.url
    region_first = page.locator("#grid .card").first.get_attribute("data-image-id")
    label = page.text_content("#image-query-label") or ""
    x1, y1, x2, y2 = (float(v) for v in label.split(":")[1].split(","))
    assert abs(x1 - 0.1) < 0.03 and abs(y1 - 0.15) < 0.03 and abs(x2 - 0.6) < 0.03 and abs(y2 - 0.7) < 0.03

    # "more like this" on a result: the photo itself is among the first (the demo model is a toy)
    page.click("#grid .card >> nth=2")
    opened = page.locator("#grid .card >> nth=2").get_attribute("data-image-id")
    page.click("#like")
    page.wait_for_function(f"() => document.getElementById('image-query-label').textContent === 'Like image #{opened}'")
    top3 = "[...document.querySelectorAll('#grid .card')].slice(0, 3).map(c => c.dataset.imageId)"
    page.wait_for_function(f"() => {top3}.includes('{opened}')")
    assert f"image={opened}" in page.url and "box=" not in page.url

    # the shared URL reproduces the region query in a new tab
    other = browser.new_page()
    other.goto(region_url)
    other.wait_for_selector("#grid .card")
    assert other.locator("#grid .card").first.get_attribute("data-image-id") == region_first
    assert not dialogs and not errors


def test_a_busy_server_is_asked_again_after_retry_after(server: str, browser) -> None:
    """The server answers 503 + Retry-After when its decoded-pixel budget stays full: the page waits
    and asks again (here every thumbnail and the "more like this" search are refused once)."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    refused: set[str] = set()

    def busy_once(route) -> None:
        url = route.request.url + (route.request.post_data or "")
        if url in refused:
            route.continue_()
            return
        refused.add(url)
        route.fulfill(
            status=503,
            headers={"Retry-After": "1", "Content-Type": "application/json"},
            body='{"status": 503, "error": "the server is busy decoding other images; retry in 1 s"}',
        )

    page.route("**/api/images/*/thumb*", busy_once)
    page.goto(server + "/?q=a+small+blue+square")
    page.wait_for_selector("#grid .card")
    page.wait_for_function(VISIBLE_THUMBS_LOADED, timeout=20_000)
    first = page.locator("#grid .card").first.get_attribute("data-image-id")
    page.route("**/api/search", busy_once)
    page.goto(server + f"/?image={first}")
    page.wait_for_function(f"() => document.getElementById('image-query-label').textContent === 'Like image #{first}'")
    page.wait_for_selector("#grid .card")
    page.wait_for_function(VISIBLE_THUMBS_LOADED, timeout=20_000)
    assert any("/thumb" in u for u in refused) and any("/api/search" in u for u in refused)
    assert "error" not in (page.get_attribute("#status", "class") or "")


def test_token_prompt_kept_for_the_session(tmp_path_factory: pytest.TempPathFactory, browser, shots: Path) -> None:
    lib, _ = build_library(tmp_path_factory.mktemp("browser-token"), n=4)
    proc, url = start_server(lib, "--token", "s3cret-token")
    try:
        page = browser.new_page()
        page.goto(url + "/?q=a+small+blue+square")
        page.wait_for_selector("#token-dialog:not([hidden])")
        page.screenshot(path=str(shots / "5-token-prompt.png"))
        page.fill("#token", "s3cret-token")
        page.press("#token", "Enter")
        page.wait_for_selector("#grid .card .box.best")
        page.wait_for_function(VISIBLE_THUMBS_LOADED)
        page.reload()  # the same tab keeps the token: no second prompt
        page.wait_for_selector("#grid .card")
        assert page.locator("#token-dialog").is_hidden()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_10000_image_library_pages_as_you_scroll(tmp_path_factory: pytest.TempPathFactory, browser, shots) -> None:
    lib = build_large_library(tmp_path_factory.mktemp("browser-large"), 10_000)
    proc, url = start_server(lib)
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url + "/?q=a+small+red+circle")
        page.wait_for_function("() => document.querySelectorAll('#grid .card').length === 60")
        assert "60 results so far" in (page.text_content("#status") or "")
        for pages in (2, 3):
            page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
            page.wait_for_function(f"() => document.querySelectorAll('#grid .card').length === {60 * pages}")
        page.wait_for_function("() => !document.getElementById('status').textContent.startsWith('Searching')")
        page.wait_for_function(VISIBLE_THUMBS_LOADED)
        # thumbnails are fetched as cards come into view, not all at once
        loaded = page.evaluate("() => [...document.querySelectorAll('#grid .card img')].filter(i => i.src).length")
        assert loaded < page.locator("#grid .card").count()
        page.screenshot(path=str(shots / "6-paged-grid-10000.png"))
        ranks = page.evaluate("() => [...document.querySelectorAll('#grid .card')].map(c => c.dataset.imageId)")
        assert len(set(ranks)) == len(ranks)  # pages join without repeats
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_api_docs_page_works_offline(server: str, browser, shots: Path) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    outside: list[str] = []

    def offline(route) -> None:  # the network is off: only the server itself answers
        if route.request.url.startswith(server):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    page.route("**/*", offline)
    page.goto(server + "/docs")
    page.wait_for_selector("#swagger-ui .opblock", timeout=30_000)
    paths = page.evaluate("() => [...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent)")
    assert {"/api/search", "/api/status", "/api/images/{image_id}"} <= {p.replace("\u200b", "") for p in paths}
    page.screenshot(path=str(shots / "7-api-docs-offline.png"))
    assert outside == []


@pytest.mark.parametrize(("required", "outcome"), [("0", "1 skipped"), ("1", "1 error")])
def test_without_chromium_the_browser_tests_skip_unless_required(tmp_path: Path, required: str, outcome: str) -> None:
    import subprocess
    import sys

    env = {**os.environ, "FGSEARCH_CHROMIUM": str(tmp_path / "no-chromium"), "FGSEARCH_REQUIRE_BROWSER": required}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", __file__, "-k", "token_prompt"],
        cwd=Path(__file__).parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert outcome in out and (proc.returncode == 0) == (required == "0"), out
    assert "apt-get install chromium" in out
