"""The web page in headless Chromium: upload an image, see k results, search again from one."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from serve_helpers import LOOSE_IMAGE, stub_embedder

from histoseek.index.build import build_index
from histoseek.index.search import open_index

K = 5
#: A class folder whose name is markup: the page must show it as text.
ODD_LABEL = "<i>odd & label"


def _browser_binaries() -> tuple[str, str]:
    browser = next(
        (shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)),
        None,
    )
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(
            "headless Chromium and chromedriver not installed "
            "(Debian: apt-get install chromium chromium-driver)"
        )
    return browser, driver


@contextmanager
def _serving(index_dir: Path) -> Iterator[str]:
    """A real server (uvicorn on 127.0.0.1) over the index, with the stub model; its URL."""
    import uvicorn

    from histoseek.serve.app import create_app
    from histoseek.serve.server import listen, url_of
    from histoseek.serve.service import SearchService

    service = SearchService(open_index(index_dir), stub_embedder())
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture
def page_url(kather_small, tmp_path) -> Iterator[str]:
    """The page over an index of real tiles, one label odd."""
    source = tmp_path / "tiles"
    shutil.copytree(kather_small, source)
    (source / "04_LYMPHO").rename(source / ODD_LABEL)
    build_index(source, tmp_path / "index", stub_embedder(), trees=5)
    with _serving(tmp_path / "index") as url:
        yield url


@pytest.fixture
def driver():
    """Headless Chromium driven by the system's chromedriver (no download)."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install '.[dev]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = _browser_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        yield chrome
    finally:
        chrome.quit()


def _set_k(driver, k: int) -> None:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "k")
    box.clear()
    box.send_keys(str(k))


def _upload_and_wait(driver, tile: Path) -> list:
    """Choose `tile` in the page's file input and wait for the new results."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    answer = driver.find_element(By.ID, "answer")
    driver.execute_script("arguments[0].dataset.state = 'sent'", answer)
    driver.find_element(By.ID, "file-input").send_keys(str(tile))
    WebDriverWait(driver, 60).until(lambda d: answer.get_attribute("data-state") == "done")
    return driver.find_elements(By.CSS_SELECTOR, "#results .hit")


@pytest.mark.browser
def test_upload_see_k_results_and_search_again_from_one(page_url, driver, kather_small):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 60)
    driver.get(page_url)
    wait.until(lambda d: "24 items" in d.find_element(By.ID, "served-by").text)
    _set_k(driver, K)
    tile = sorted((kather_small / "01_TUMOR").iterdir())[3]
    cards = _upload_and_wait(driver, tile)
    assert len(cards) == K
    # The tile is itself in the index: left out of its results, as `query` leaves it, and said.
    paths = [card.find_element(By.CLASS_NAME, "path").text for card in cards]
    assert not any(tile.name in path for path in paths)
    status = driver.find_element(By.ID, "status").text
    assert "stub (cpu)" in status and " ms" in status and "builtin" in status
    assert "the index holds this very image (#" in status and status.endswith("left out")
    assert driver.find_element(By.ID, "majority").text.startswith(f"Majority label among the {K}")
    assert driver.find_element(By.ID, "query-image").get_attribute("src").startswith("blob:")
    _check_majority_marks(driver)

    answer = driver.find_element(By.ID, "answer")
    chosen = cards[1].get_attribute("data-item")
    cards[1].find_element(By.CLASS_NAME, "more").click()
    wait.until(lambda d: answer.get_attribute("data-query") == f"item:{chosen}")
    wait.until(lambda d: answer.get_attribute("data-state") == "done")
    again = driver.find_elements(By.CSS_SELECTOR, "#results .hit")
    assert len(again) == K
    assert chosen not in [card.get_attribute("data-item") for card in again]
    _check_majority_marks(driver)

    again[0].find_element(By.CLASS_NAME, "view").click()
    full = driver.find_element(By.ID, "viewer-image")
    wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", full) == 150)
    assert driver.find_element(By.ID, "viewer").get_attribute("open") is not None
    all_loaded = "return [...document.querySelectorAll('#results img')].every(i => i.naturalWidth)"
    wait.until(lambda d: d.execute_script(all_loaded))
    driver.find_element(By.ID, "viewer-close").click()

    _set_k(driver, 24)  # every other item, the odd label among them
    labels = [
        card.find_element(By.CLASS_NAME, "label").text for card in _upload_and_wait(driver, tile)
    ]
    assert len(labels) == 23
    assert sum(label.startswith(ODD_LABEL) for label in labels) == 8
    assert not driver.find_elements(By.CSS_SELECTOR, "#results i")  # text, not markup


def _check_majority_marks(driver) -> None:
    """Cards whose label differs from the majority label are marked, the others not."""
    from selenium.webdriver.common.by import By

    hint = driver.find_element(By.ID, "majority").text
    majority = hint.split(": ", 1)[1].rsplit(" (", 1)[0]
    for card in driver.find_elements(By.CSS_SELECTOR, "#results .hit"):
        label = card.find_element(By.CLASS_NAME, "label")
        shown = label.text.replace("≠ majority", "").strip()
        marked = "mismatch" in card.get_attribute("class").split()
        assert marked == (shown != majority), (shown, majority)
        assert bool(label.find_elements(By.CLASS_NAME, "flag")) == marked


@pytest.mark.browser
def test_slide_tiles_show_their_slide_and_search_other_slides(slide_index_dir, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(driver, 60)
    index = open_index(slide_index_dir)
    with _serving(slide_index_dir) as url:
        driver.get(url)
        wait.until(lambda d: "items" in d.find_element(By.ID, "served-by").text)
        _set_k(driver, 12)
        loose = Path(index.manifest.source_dir) / LOOSE_IMAGE
        cards = _upload_and_wait(driver, loose)
        tiles = [card for card in cards if _card_place(card).startswith("slide ")]
        assert tiles, "the upload found no slide tile"
        chosen_id = tiles[0].get_attribute("data-item")
        chosen = index.items[int(chosen_id)]
        place = f"slide {chosen.slide_id} · patient {chosen.group} · x {chosen.x}, y {chosen.y}"
        assert _card_place(tiles[0]) == place

        tiles[0].find_element(By.CLASS_NAME, "view").click()
        overview = driver.find_element(By.ID, "viewer-slide-image")
        wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", overview) > 0)
        assert driver.find_element(By.ID, "viewer-slide").is_displayed()
        assert driver.find_element(By.ID, "viewer-slide-caption").text.startswith(place)
        full = driver.find_element(By.ID, "viewer-image")
        wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", full) == 64)
        driver.find_element(By.ID, "viewer-close").click()

        Select(driver.find_element(By.ID, "exclude")).select_by_value("same-slide")
        answer = driver.find_element(By.ID, "answer")
        tiles[0].find_element(By.CLASS_NAME, "more").click()
        wait.until(lambda d: answer.get_attribute("data-query") == f"item:{chosen_id}")
        wait.until(lambda d: answer.get_attribute("data-state") == "done")
        again = driver.find_elements(By.CSS_SELECTOR, "#results .hit")
        assert len(again) == 12
        for card in again:
            assert index.items[int(card.get_attribute("data-item"))].slide_id != chosen.slide_id

        # An image result has no slide: the viewer shows no slide overview for it.
        loose_card = next(card for card in again if _card_place(card) == LOOSE_IMAGE)
        loose_card.find_element(By.CLASS_NAME, "view").click()
        assert not driver.find_element(By.ID, "viewer-slide").is_displayed()


def _card_place(card) -> str:
    """What a result card says of where it comes from (its slide and place, or its file)."""
    from selenium.webdriver.common.by import By

    return card.find_element(By.CLASS_NAME, "path").text


@pytest.mark.browser
def test_the_api_docs_render_offline(page_url, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(page_url + "docs")
    WebDriverWait(driver, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock-summary-path")
    )
    paths = [
        element.text
        for element in driver.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock-summary-path")
    ]
    assert "/api/search" in paths and "/api/items/{item_id}/slide" in paths
