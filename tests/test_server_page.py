"""The web page in a real browser: Debian's chromium, headless, driven by Playwright's Python
API (not Playwright's downloaded browsers).  The page generates through the native API; the
image it shows and offers for download must be the Python API's image for the same values.

Locally the test skips when chromium is missing; in CI (.ci/run sets
PYSDCPP_REQUIRE_BROWSER=1) a missing browser fails it.
"""
from __future__ import annotations

import base64
import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import THREADS
from server_helpers import ThreadServer

CHROMIUM = os.environ.get("PYSDCPP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or not os.path.exists(CHROMIUM):
        if os.environ.get("PYSDCPP_REQUIRE_BROWSER"):
            pytest.fail("PYSDCPP_REQUIRE_BROWSER is set but no chromium was found (apt-get install chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium); CI installs it")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(ctx, sd15_path):
    from pysdcpp.server import Settings, create_app

    settings = Settings.for_model(sd15_path, n_threads=THREADS, width=64, height=64, steps=2, cfg_scale=7.0)
    with ThreadServer(create_app(settings, context=ctx)) as s:
        yield s


def _pixels(data_url: str) -> np.ndarray:
    head, b64 = data_url.split(",", 1)
    assert head == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        assert im.text["parameters"].startswith("a lighthouse in the browser")
        return np.asarray(im.convert("RGB"))


def test_generate_show_download_history_and_cancel(browser, server, ctx):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    # the form is filled from the server's capabilities: its defaults and sd.cpp's samplers
    page.wait_for_function("document.querySelectorAll('#sampler option').length > 5")
    assert page.input_value("#width") == "64" and page.input_value("#steps") == "2"
    samplers = page.eval_on_selector_all("#sampler option", "os => os.map(o => o.value)")
    assert "euler_a" in samplers and "default" in samplers

    def generate(seed: int, sampler: str):
        page.fill("#prompt", "a lighthouse in the browser")
        page.fill("#negative_prompt", "fog")
        page.fill("#width", "64")
        page.fill("#height", "64")
        page.fill("#steps", "2")
        page.fill("#seed", str(seed))
        page.select_option("#sampler", sampler)
        page.fill("#cfg", "6.5")
        page.click("#generate")
        page.wait_for_function(f"document.querySelector('#image').dataset.seed === '{seed}'", timeout=120_000)
        page.wait_for_function("!document.querySelector('#generate').disabled")

    generate(42, "euler_a")
    src = page.get_attribute("#image", "src")
    expected = np.asarray(ctx.txt2img("a lighthouse in the browser", negative_prompt="fog", width=64, height=64,
                                      steps=2, seed=42, sampling_method="euler_a", cfg_scale=6.5)[0].convert("RGB"))
    assert np.array_equal(_pixels(src), expected)
    assert page.get_attribute("#download", "href") == src
    assert page.get_attribute("#download", "download") == "pysdcpp-42.png"
    params = page.text_content("#params")
    assert '"seed": 42' in params and '"sample_method": "euler_a"' in params and '"txt_cfg": 6.5' in params
    assert page.text_content("#status").startswith("done in")

    generate(7, "euler")
    assert page.locator("#history img").count() == 2
    second = page.get_attribute("#image", "src")
    assert not np.array_equal(_pixels(second), expected)
    page.click("#history li:last-child img")  # the first image of the session
    assert page.get_attribute("#image", "src") == src and '"seed": 42' in page.text_content("#params")

    # progress while a long one runs, then cancel
    page.fill("#steps", "40")
    page.click("#generate")
    page.wait_for_function("/generating: step [1-9][0-9]*\\/40,/.test(document.querySelector('#status').textContent)",
                           timeout=120_000)
    assert page.is_visible("#progress") and not page.is_disabled("#cancel")
    page.click("#cancel")
    page.wait_for_function("document.querySelector('#status').textContent === 'cancelled'", timeout=60_000)
    assert page.locator("#history img").count() == 2 and page.is_enabled("#generate")

    # the history survives a reload of the tab (sessionStorage)
    page.reload()
    page.wait_for_function("document.querySelectorAll('#history img').length === 2")
    assert errors == [], errors
    page.close()


def test_serve_html_path_replaces_the_page(ctx, sd15_path, tmp_path):
    import httpx

    from pysdcpp.server import Settings, create_app

    html = tmp_path / "index.html"
    html.write_text("<html><body>my own frontend</body></html>")
    settings = Settings.for_model(sd15_path, serve_html_path=str(html))
    with ThreadServer(create_app(settings, context=ctx)) as s:
        r = httpx.get(s.url + "/")
        assert r.status_code == 200 and r.text == html.read_text() and r.headers["content-type"].startswith("text/html")
        html.unlink()  # read on each request, as sd-server does
        r = httpx.get(s.url + "/")
        assert r.status_code == 500 and r.text == "Error: Unable to read HTML file"
