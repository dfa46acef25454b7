"""The page of ``catsdogs serve`` in a real headless browser (Debian's chromium and
chromium-driver, driven by selenium): photos picked through the page's file input, answers
read from the page.

Skipped when there is no browser, unless CATSDOGS_REQUIRE_BROWSER is set (CI sets it), in
which case a missing browser fails the test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.test_serve import START_TIMEOUT, photo_bytes, serving

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def missing_browser() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    if not BROWSER or not DRIVER:
        return "no chromium/chromedriver on PATH (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    reason = missing_browser()
    if reason:
        if os.environ.get("CATSDOGS_REQUIRE_BROWSER"):
            pytest.fail(f"CATSDOGS_REQUIRE_BROWSER is set but {reason}")
        pytest.skip(f"no headless browser to test the page: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--no-first-run"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def answers(driver, count: int) -> list:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def done(page):
        boxes = page.find_elements(By.CSS_SELECTOR, ".result")
        finished = [box for box in boxes if not box.find_elements(By.CSS_SELECTOR, ".waiting")]
        return finished if len(finished) == count else False

    return WebDriverWait(driver, START_TIMEOUT).until(done)


def test_page_shows_class_probability_and_heat_map_of_picked_photos(browser, trained_model,
                                                                     tmp_path):
    from selenium.webdriver.common.by import By

    cat = tmp_path / "tabby.jpg"
    cat.write_bytes(photo_bytes("cat", 31))
    dog = tmp_path / "rex.png"
    dog.write_bytes(photo_bytes("dog", 32, ".png"))
    notes = tmp_path / "notes.jpg"
    notes.write_bytes(b"not a photo at all\n")
    with serving(trained_model) as server:
        browser.get(server.url)
        picker = browser.find_element(By.ID, "photos")
        picker.send_keys(str(cat))
        (box,) = answers(browser, 1)
        assert box.find_element(By.CSS_SELECTOR, ".name").text == "tabby.jpg"
        assert box.find_element(By.CSS_SELECTOR, ".label").text == "cats"
        probability = box.find_element(By.CSS_SELECTOR, ".probability").text
        assert probability.endswith("%") and 50 <= float(probability[:-1]) <= 100
        heatmap = box.find_element(By.CSS_SELECTOR, "img.heatmap")
        assert heatmap.get_attribute("src").startswith("data:image/png;base64,")
        assert browser.execute_script("return arguments[0].naturalWidth", heatmap) == 256
        model_line = browser.find_element(By.ID, "model").text
        assert model_line.endswith("classes cats, dogs · engine onnx")

        picker.send_keys("\n".join(str(path) for path in (dog, notes)))  # two at once
        newest_first = answers(browser, 3)
        assert newest_first[0].find_element(By.CSS_SELECTOR, ".name").text == "notes.jpg"
        assert newest_first[0].find_element(By.CSS_SELECTOR, ".error").text == "not an image"
        assert newest_first[1].find_element(By.CSS_SELECTOR, ".label").text == "dogs"


def test_missing_browser_reason_names_what_to_install(monkeypatch):
    import tests.test_serve_browser as module

    monkeypatch.setattr(module, "DRIVER", None)
    reason = module.missing_browser()
    assert reason in ("selenium is not installed (pip install selenium)",
                      "no chromium/chromedriver on PATH (apt-get install chromium "
                      "chromium-driver)")

