"""The web page in a real headless Chromium, against a server on 127.0.0.1: upload, caption, screenshot."""
from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imcap.serve.app import create_app
from imcap.serve.settings import ServeSettings

from .conftest import FakeIndex, expected_captions, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, chromedriver); .ci/run installs them",
)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install 'imcap[dev]')")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def serve() -> Iterator:
    """`serve(captioner, index=None)` -> the URL of a real uvicorn server on 127.0.0.1 (stopped at teardown)."""
    import uvicorn

    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(captioner, index=None) -> str:
        port = free_port()
        config = uvicorn.Config(create_app(captioner, ServeSettings(), index), host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def browser(tmp_path: Path):
    """Headless Chromium through chromedriver, with a fresh profile and no background traffic."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1100,900",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    yield driver
    driver.quit()


def test_page_captions_an_uploaded_image(serve, browser, captioner, scene_paths, tmp_path):
    image = scene_paths[1]
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is text, not a picture")
    browser.get(serve(captioner) + "/")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: "vocabulary" in d.find_element(By.ID, "model-info").text)
    assert f"vocabulary {len(captioner.vocab)}" in browser.find_element(By.ID, "model-info").text
    assert not browser.find_element(By.ID, "search-box").is_displayed()  # no index loaded

    browser.find_element(By.ID, "file-input").send_keys(str(image))
    card = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".card[data-state=done]"))
    shown = card.find_element(By.CSS_SELECTOR, ".caption").text
    assert shown == expected_captions(captioner, image.read_bytes(), beam_size=3)[0]  # the page asks for beam size 3
    assert card.find_element(By.CSS_SELECTOR, ".name").text == image.name
    assert "ms" in card.find_element(By.CSS_SELECTOR, ".status").text

    browser.find_element(By.ID, "file-input").send_keys(str(not_image))
    failed = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".card[data-state=error]"))
    assert "not an image" in failed.find_element(By.CSS_SELECTOR, ".status").text

    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 1000


def _overlay_alpha(browser, card) -> int:
    """Sum of the alpha channel painted on a card's attention canvas."""
    canvas = card.find_element(By.CSS_SELECTOR, ".overlay")
    return browser.execute_script(
        "const c = arguments[0]; if (!c.width) return 0;"
        "return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 4 == 3).reduce((a, b) => a + b, 0);",
        canvas,
    )


def test_page_attention_overlay_and_search(serve, browser, attention_model, scene_paths, tmp_path):
    browser.get(serve(attention_model, FakeIndex()) + "/")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: d.find_element(By.ID, "search-box").is_displayed())
    assert browser.find_element(By.ID, "attention").is_selected()  # on by default when the model has attention

    browser.find_element(By.ID, "file-input").send_keys(str(scene_paths[2]))
    card = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".card[data-state=done]"))
    words = card.find_elements(By.CSS_SELECTOR, ".caption .word")
    assert [w.text for w in words] == card.find_element(By.CSS_SELECTOR, ".caption").text.split()
    assert _overlay_alpha(browser, card) == 0
    ActionChains(browser).move_to_element(words[0]).perform()
    assert _overlay_alpha(browser, card) > 0
    browser.save_screenshot(str(tmp_path / "attention.png"))
    ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()
    assert _overlay_alpha(browser, card) == 0

    browser.find_element(By.ID, "search-query").send_keys("a red circle")
    browser.find_element(By.CSS_SELECTOR, "#search-form button").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#search-results li")) == 5)
    assert browser.find_element(By.CSS_SELECTOR, "#search-results li").text.startswith(FakeIndex.paths[0])
