"""The playground page at / in a real headless Chromium (Debian's), driven by Playwright.

It is used as a person would: from the keyboard, picking a class and seeds, and the grid the
browser shows is read back pixel by pixel from a canvas and compared with `Generate`'s.
A screenshot is kept in tests/artifacts/ for people to look at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.api.dcgan.v1 import generator_pb2 as pb
from service.client import images_from_response
from service.imaging import make_grid

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine notes advise: no background traffic to a network that is closed here.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is needed for the playground test: apt-get install chromium")
        pytest.skip("no Chromium here (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# The grid as the browser decoded it: drawn on a canvas, one grey value per pixel.
READ_PIXELS = """() => {
  const img = document.getElementById("grid");
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const rgba = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const grey = [];
  for (let i = 0; i < rgba.length; i += 4) grey.push(rgba[i]);
  return {width: canvas.width, height: canvas.height, grey};
}"""


def test_playground_shows_the_pixels_of_generate_and_is_usable_from_the_keyboard(
        server, stub, browser):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    outside = []  # the page must work offline: nothing but this server
    page.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "blob:"))
            else outside.append(r.url))
    page.goto(f"http://127.0.0.1:{server.http_port}/")
    page.wait_for_selector("#status:has-text('model(s) ready')")
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == [
        "cond", "plain"]

    # Keyboard only: Tab to the class list, pick 7, Tab to the seeds, type, Enter.
    page.focus("#model")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "label"
    page.select_option("#label", "7")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "seeds"
    page.keyboard.press("Control+A")
    page.keyboard.type("3,9,20-25")
    page.keyboard.press("Enter")
    page.wait_for_selector("#status:has-text('Shown')")

    shown = page.evaluate(READ_PIXELS)
    seeds = [3, 9, 20, 21, 22, 23, 24, 25]
    expected = make_grid(images_from_response(stub.Generate(pb.GenerateRequest(
        model="cond", seeds=seeds, labels=[7])))[:, None])
    grey = np.array(shown["grey"], np.uint8).reshape(shown["height"], shown["width"])
    np.testing.assert_array_equal(grey, expected)
    assert page.get_attribute("#grid", "alt") == "Generated grid for seeds 3,9,20-25, class 7"
    assert page.get_attribute("#download", "download") == "grid-3,9,20-25.png"

    ARTIFACTS.mkdir(exist_ok=True)

    # The walk: a strip of frames from seed 3 to seed 13 in class 7, exactly Interpolate's.
    page.fill("#frames", "6")
    page.click("#walk")
    page.wait_for_selector("#walk-result:not([hidden])")
    shown = page.evaluate(READ_PIXELS.replace('"grid"', '"strip"'))
    frames = images_from_response(stub.Interpolate(pb.InterpolateRequest(
        model="cond", seed_a=3, seed_b=13, frames=6, labels=[7])))
    strip = np.array(shown["grey"], np.uint8).reshape(shown["height"], shown["width"])
    np.testing.assert_array_equal(strip, make_grid(frames[:, None], ncols=6))
    assert page.get_attribute("#walk-gif", "download") == "walk-3-13.gif"
    page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)

    # A bad request shows the server's own message, and the page keeps working.
    page.fill("#seeds", "9-3")
    page.click("#show")
    page.wait_for_selector("#status[data-kind='error']")
    assert "400: bad seed range '9-3'" in page.inner_text("#status")
    # An unconditional model has no classes to pick.
    page.select_option("#model", "plain")
    assert page.is_disabled("#label")
    assert not errors and not outside
    page.close()
