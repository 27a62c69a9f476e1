"""``zir serve``'s page (``GET /``) in a real headless browser: Debian's ``chromium`` driven by Selenium
through ``chromedriver`` (both from apt; Selenium's own downloads cannot work offline). A person's steps:
open the page, pick an image in its file input, see the predictions drawn on it with class names and
scores; pick a text file renamed ``.jpg`` and see the server's error. The page's screenshot is what the
README shows: ``ZIR_SCREENSHOT=docs/serve_page.png pytest tests/export/test_browser.py`` writes it again.

Without Chromium the test is skipped, saying how to install it; under ``CI=true`` that is a failure.
"""

from __future__ import annotations

import base64
import io
import math
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="pip install 'zir[serve]' to test the server")

from zir.data.synth import SynthDataset  # noqa: E402

INSTALL = "apt-get install -y chromium chromium-driver"
COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]  # the page's


@pytest.fixture(scope="module")
def predictor(make_predictor):
    """The server's model (``conftest.py``), keeping its best few boxes: a page a person can read."""
    return make_predictor(score_thresh=0.75)


def _missing(what: str) -> None:
    """Skip, or under ``CI=true`` (where the browser test is required) fail, saying what to install."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true needs the browser test: {what}")
    pytest.skip(what)


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium (Debian's package) under Selenium, 900 px wide, once for the module."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        _missing(f"no chromium and chromedriver on PATH; install them with `{INSTALL}` (Debian/Ubuntu, as root)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed; pip install 'zir[test]'")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--force-device-scale-factor=1", "--window-size=900,700"):
        options.add_argument(arg)
    # the driver named explicitly: Selenium Manager would otherwise try to download one
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    yield driver
    driver.quit()


def _pick(driver, path) -> str:
    """Pick ``path`` in the page's file input; the status line once the page has the server's answer."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    status = driver.find_element(By.ID, "status")
    driver.execute_script("arguments[0].textContent = ''", status)  # no answer of an earlier pick is read
    driver.find_element(By.ID, "file").send_keys(str(path))
    # a bound on the wait for the page's fetch, not a timing: a slow machine only waits longer
    WebDriverWait(driver, 60).until(lambda d: status.text.startswith(("done", "error")))
    return status.text


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[1 + 2 * j: 3 + 2 * j], 16) for j in range(3))


def test_the_page_draws_the_predictions_in_chromium(browser, server, tmp_path):  # no server without a browser
    from selenium.webdriver.common.by import By

    url, predictor = server
    image = SynthDataset("detect", n=1, seed=4, image_size=256, max_objects=4, min_scale=0.15)[0]["image"]
    original = image.permute(1, 2, 0).numpy()  # (H, W, 3) uint8
    Image.fromarray(original).save(tmp_path / "shapes.png")
    expected = predictor.predict(image.as_subclass(torch.Tensor))[0]
    assert len(expected.boxes) > 0

    browser.get(url + "/")
    assert _pick(browser, tmp_path / "shapes.png") == f"done: {len(expected.boxes)} objects"

    # class names and scores, one line per box, in the model's order
    lines = [line.rsplit(" ", 1) for line in browser.find_element(By.ID, "out").text.splitlines()]
    assert [name for name, _ in lines] == [predictor.classes[k] for k in expected.labels.tolist()]
    np.testing.assert_allclose([float(s) for _, s in lines], expected.scores.numpy(), atol=0.005)

    # the canvas: the uploaded image, boxes outlined in their class colours, labels above them
    data_url = browser.execute_script("return document.getElementById('canvas').toDataURL('image/png')")
    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))
    assert drawn.shape == original.shape
    H, W = original.shape[:2]
    width, font = max(2, W / 300), max(12, W / 40)  # the page's line width and font size
    untouched = np.ones((H, W), bool)
    yy, xx = np.mgrid[:H, :W]
    for x1, y1, x2, y2 in expected.boxes.tolist():
        inside = (xx >= x1 - width) & (xx <= x2 + width) & (yy >= y1 - width) & (yy <= y2 + width)
        deep = (xx > x1 + width) & (xx < x2 - width) & (yy > y1 + width) & (yy < y2 - width)
        untouched &= ~(inside & ~deep)  # the outline's band
        base = max(12, y1 - 3)
        untouched &= ~((xx >= x1) & (yy >= base - font - 2) & (yy <= base + font / 3 + 2))  # the label's band
    assert untouched.mean() > 0.3
    np.testing.assert_array_equal(drawn[untouched], original[untouched])  # the picked image, not another
    assert (drawn != original).any(-1).sum() > 0
    # the last box is drawn on top of the others: its left edge, mid-height, is all outline
    (x1, y1, _, y2), label = expected.boxes[-1].tolist(), int(expected.labels[-1])
    x, y = min(max(math.floor(x1), 0), W - 1), min(max(round((y1 + y2) / 2), 0), H - 1)
    assert tuple(drawn[y, x]) == _rgb(COLOURS[label % len(COLOURS)])

    # the screenshot the README shows: the whole page, the drawn canvas on it
    height, frame = browser.execute_script("return [document.documentElement.scrollHeight, "
                                           "window.outerHeight - window.innerHeight]")
    browser.set_window_size(900, height + frame)  # the whole page in the window, no scrolling
    shot = tmp_path / "serve_page.png"
    assert browser.save_screenshot(str(shot))
    page = np.asarray(Image.open(shot).convert("RGB"))
    assert page.shape[1] == 900 and page.shape[0] >= H
    assert (page == _rgb(COLOURS[label % len(COLOURS)])).all(-1).sum() >= y2 - y1  # the outline is on screen
    if os.environ.get("ZIR_SCREENSHOT"):
        Image.open(shot).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(
            os.environ["ZIR_SCREENSHOT"], optimize=True)  # 64 colours: a small file for the README

    # an error is shown, and the page goes on working
    (tmp_path / "notes.jpg").write_text("not an image, whatever the name says\n")
    assert _pick(browser, tmp_path / "notes.jpg").startswith("error: the upload is not an image zir can decode")
    assert _pick(browser, tmp_path / "shapes.png") == f"done: {len(expected.boxes)} objects"
