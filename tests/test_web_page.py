"""The web page at ``/`` in real headless Chromium (Debian's chromium + chromedriver) against a real uvicorn
server on loopback: search verdict, error recovery, activation with a corrected token, a job's progress until
done, phone layout."""
from __future__ import annotations

import contextlib
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from activeindex.config import DEFAULT_THRESHOLD
from activeindex.edits import apply_edit
from activeindex.imageio import load_image
from activeindex.locking import FolderLock
from activeindex.service.queue import JobQueue

from .conftest import TOKEN, free_port, served_collection, start_server, stop_server

DOCS = Path(__file__).parent.parent / "docs"
SLOW = 300  # seconds: the first activation starts a worker process (156 s seen on 2 busy cores)


# --- a real server and a real browser ---------------------------------------------------------------------------

@contextmanager
def _browser(phone: bool = False):
    """Headless Chromium at desktop size (a 1000x960 page), or emulating a 390x844 phone (viewport meta honoured)."""
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1000,1100"):
        options.add_argument(flag)
    if phone:
        options.add_experimental_option("mobileEmulation", {
            "deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 2, "touch": True}})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _status_loaded(driver) -> int:
    """The number of registered images the status line shows, once it has loaded."""
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "status").get_attribute("data-images"))
    return int(driver.find_element(By.ID, "status").get_attribute("data-images"))


def _enter_token(driver) -> None:
    """Type the access token (it opens the registered images' previews too: reads are private)."""
    driver.execute_script("const t = document.getElementById('token'); t.value = arguments[0];"
                          "t.dispatchEvent(new Event('input'));", TOKEN)


def _job_state(driver) -> str | None:
    """The followed job's state (data-state), or None."""
    with contextlib.suppress(StaleElementReferenceException):
        for job in driver.find_elements(By.CSS_SELECTOR, ".job"):
            return job.get_attribute("data-state")
    return None


def _images_loaded(driver) -> None:
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"))


@pytest.fixture(scope="module")
def collection_root(tmp_path_factory, training_npy, small_photos) -> tuple[Path, list[Path]]:
    """A trained collection: photo0, photo1 activated (ids 1, 2), photo2, photo3 passive (ids 3, 4)."""
    root = tmp_path_factory.mktemp("web") / "col"
    return root, served_collection(root, tmp_path_factory.mktemp("web-originals"), small_photos, training_npy)


@pytest.fixture(scope="module")
def served(collection_root) -> tuple[Path, str]:
    root, _ = collection_root
    process, url = start_server(root)
    yield root, url
    stop_server(process)


@pytest.fixture(scope="module")
def query(collection_root) -> Path:
    """An edited copy (hue, JPEG) of the activated photo1.png (id 2)."""
    root, _ = collection_root
    path = root.parent / "query.jpg"
    Image.fromarray(apply_edit("hue_0.2", load_image(root / "activated" / "photo1.png"))).save(path, quality=70)
    return path


# --- tests ------------------------------------------------------------------------------------------------------

def test_search_names_the_source_file_with_similarity_and_threshold(served, query):
    """The verdict names the source, says the threshold is uncalibrated, and outlines where the copy sits on
    the matched original (the query is the whole photo: its outline is the original's frame)."""
    root, url = served
    with _browser() as driver:
        driver.get(url)
        _status_loaded(driver)
        assert "uncalibrated" in driver.find_element(By.ID, "status").text
        _enter_token(driver)
        driver.find_element(By.ID, "search-file").send_keys(str(query))
        WebDriverWait(driver, SLOW).until(lambda d: d.find_elements(By.ID, "verdict"))
        verdict = driver.find_element(By.ID, "verdict").text
        assert "Copy of photo1.png" in verdict and "similarity" in verdict
        assert f"a copy from {DEFAULT_THRESHOLD:.2f}, uncalibrated" in verdict
        outline = driver.find_element(By.ID, "outline")
        h, w = load_image(root / "activated" / "photo1.png").shape[:2]
        corners = np.array([p.split(",") for p in outline.get_attribute("points").split()], float)
        assert np.abs(corners - [[0, 0], [w, 0], [w, h], [0, h]]).max() <= 0.03 * max(w, h)
        drawn = outline.rect
        assert outline.is_displayed() and drawn["width"] > 100 and drawn["height"] > 100
        assert "Where your image sits in photo1.png" in driver.find_element(By.ID, "evidence").text
        assert "-0.00" not in driver.find_element(By.ID, "search-result").text
        best = driver.find_element(By.ID, "match-0")
        assert best.get_attribute("data-id") == "2" and "below" not in best.get_attribute("class")
        others = driver.find_elements(By.CSS_SELECTOR, ".match.below")
        assert len(others) == 3  # the three unrelated photos, greyed out under their own heading
        assert all(float(o.value_of_css_property("opacity")) < 1 for o in others)
        assert "Other, unrelated images (below the threshold)" in driver.find_element(By.ID, "search-result").text
        preview = driver.find_element(By.ID, "query-preview")
        assert preview.is_displayed() and preview.get_attribute("src").startswith("blob:")
        _images_loaded(driver)
        WebDriverWait(driver, 30).until(lambda d: (d.execute_script(  # the original's preview under the outline
            "return document.querySelector('#evidence image').getAttribute('href')") or "").startswith("blob:"))
        assert driver.find_element(By.ID, "search-file").get_attribute("value") == ""  # same file can be re-chosen
        DOCS.mkdir(exist_ok=True)
        driver.save_screenshot(str(DOCS / "web-page.png"))


def test_server_down_shows_an_error_and_retry_recovers(collection_root, query):
    root, _ = collection_root
    port = free_port()
    process, _ = start_server(root, port)
    try:
        with _browser() as driver:
            driver.get(f"http://127.0.0.1:{port}")
            _status_loaded(driver)
            stop_server(process)
            driver.find_element(By.ID, "search-file").send_keys(str(query))
            error = driver.find_element(By.ID, "search-error")
            WebDriverWait(driver, 10).until(lambda d: error.is_displayed())
            assert "Cannot reach the server" in error.text
            assert driver.find_element(By.ID, "search-result").text == ""  # no "Searching…" left behind
            retry = driver.find_element(By.ID, "search-retry")
            assert retry.is_displayed()
            process, _ = start_server(root, port)  # the same address: the page needs no reload
            retry.click()
            WebDriverWait(driver, SLOW).until(lambda d: d.find_elements(By.ID, "verdict"))
            assert "Copy of photo1.png" in driver.find_element(By.ID, "verdict").text
            assert not error.is_displayed()
    finally:
        if process.poll() is None:
            stop_server(process)


def test_wrong_token_then_right_token_with_the_same_file(served, small_photos, tmp_path):
    _, url = served
    photo = tmp_path / "new photo.png"
    Image.fromarray(small_photos[4]).save(photo)
    with _browser() as driver:
        driver.get(url)
        before = _status_loaded(driver)
        driver.find_element(By.ID, "tab-activate").click()
        driver.find_element(By.ID, "token").send_keys("not-the-token")
        chooser = driver.find_element(By.ID, "activate-file")
        chooser.send_keys(str(photo))
        error = driver.find_element(By.ID, "activate-error")
        WebDriverWait(driver, 60).until(lambda d: error.is_displayed())
        assert "token" in error.text and driver.find_element(By.ID, "activate-retry").is_displayed()
        assert chooser.get_attribute("value") == ""  # reset, so choosing the same file fires "change" again
        driver.find_element(By.ID, "token").clear()
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "psnr").send_keys("46")  # the quality floor field
        chooser.send_keys(str(photo))
        WebDriverWait(driver, SLOW).until(lambda d: d.find_elements(By.ID, "activated"))
        result = driver.find_element(By.ID, "activated")
        assert "PSNR" in result.text and "dB" in result.text and not error.is_displayed()
        psnr = float(result.text.split("PSNR ")[1].split(" dB")[0])
        assert psnr >= 46.0, result.text
        link = driver.find_element(By.ID, "download")
        assert link.get_attribute("href").startswith("blob:") and link.get_attribute("download").endswith(".png")
        WebDriverWait(driver, 30).until(lambda d: _status_loaded(d) == before + 1)
        assert f"{before + 1} registered images" in driver.find_element(By.ID, "status").text


def test_several_images_become_a_job_whose_progress_is_shown_until_done(served, collection_root, small_photos,
                                                                       tmp_path):
    _, url = served
    _, originals = collection_root
    new = tmp_path / "flipped.png"
    Image.fromarray(np.ascontiguousarray(small_photos[2][::-1])).save(new)  # new bytes: activated by the job
    with _browser() as driver:
        driver.get(url)
        before = _status_loaded(driver)
        driver.find_element(By.ID, "tab-activate").click()
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "activate-file").send_keys(f"{originals[0]}\n{new}")  # photo0: registered (id 1)
        seen = set()

        def finished(d) -> bool:
            for count in d.find_elements(By.ID, "job-count"):
                with contextlib.suppress(StaleElementReferenceException):  # re-drawn every second
                    progress = d.find_element(By.ID, "job-progress")
                    seen.add((count.text.split(":")[0], progress.get_attribute("max")))
            return bool(d.find_elements(By.ID, "job-result") or d.find_element(By.ID, "activate-error").is_displayed())

        WebDriverWait(driver, SLOW, poll_frequency=0.2).until(finished)
        assert not driver.find_element(By.ID, "activate-error").is_displayed()
        assert ("0 of 2 images", "2") in seen  # the bar was shown, and the page polled, until the job was done
        result = driver.find_element(By.ID, "job-result")
        assert "Done: 1 image activated and registered" in result.text
        assert "photo0.png: skipped, already registered (id 1)" in result.text
        figure = driver.find_element(By.ID, "activated-0")
        assert "flipped.png" in figure.text and "PSNR" in figure.text
        link = figure.find_element(By.CSS_SELECTOR, "a.download")
        assert link.get_attribute("data-src") == f"/v1/images/{figure.get_attribute('data-id')}/activated"
        _images_loaded(driver)  # the activated image, fetched with the token
        WebDriverWait(driver, 30).until(lambda d: _status_loaded(d) == before + 1)


def test_phone_layout_has_margins_and_no_horizontal_scroll(served, query):
    _, url = served
    with _browser(phone=True) as driver:
        driver.get(url)
        _status_loaded(driver)
        driver.find_element(By.ID, "search-file").send_keys(str(query))
        WebDriverWait(driver, SLOW).until(lambda d: d.find_elements(By.ID, "verdict"))
        _images_loaded(driver)
        width = driver.execute_script("return window.innerWidth")
        assert width == 390
        assert driver.execute_script("return document.documentElement.scrollWidth") <= width
        for element_id in ("search-drop", "verdict", "status", "query-preview", "match-0"):
            box = driver.find_element(By.ID, element_id).rect
            assert box["x"] >= 8 and box["x"] + box["width"] <= width - 8, element_id
        driver.save_screenshot(str(DOCS / "web-page-phone.png"))


def _new_images(small_photos, tmp_path, variant: int) -> list[Path]:
    """Two photos the collection has not seen (rotated by ``variant`` quarter turns)."""
    paths = []
    for i in (4, 5):
        paths.append(tmp_path / f"new{variant}-{i}.png")
        Image.fromarray(np.ascontiguousarray(np.rot90(small_photos[i], variant))).save(paths[-1])
    return paths


def test_a_jobs_states_read_in_plain_words_and_survive_a_reload(served, small_photos, tmp_path):
    """In line (another job holds the runner), activating (its commit held back), done; reloading the page
    while it waits picks the job up again. The screenshots are the README's."""
    root, url = served
    lock, queue = FolderLock(root / ".lock"), JobQueue(root)
    blocker = _new_images(small_photos, tmp_path, 3)[0]
    with _browser() as driver, contextlib.ExitStack() as held:
        held.enter_context(lock.held(timeout=30))  # no job can commit
        httpx.post(f"{url}/v1/jobs", files={"images": (blocker.name, blocker.read_bytes())},
                   headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        WebDriverWait(driver, 60).until(lambda d: queue.counts()["running"] == 1)  # it holds the runner
        driver.get(url)
        _status_loaded(driver)
        driver.find_element(By.ID, "tab-activate").click()
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "activate-file").send_keys("\n".join(map(str, _new_images(small_photos,
                                                                                             tmp_path, 1))))
        WebDriverWait(driver, 60).until(lambda d: _job_state(d) == "queued")
        assert driver.find_element(By.ID, "job-state").text == "In line: the server will start on them shortly"
        driver.save_screenshot(str(DOCS / "web-job-queued.png"))
        driver.refresh()  # the page picks its job up again
        WebDriverWait(driver, 60).until(lambda d: _job_state(d) == "queued")
        held.close()  # the first job commits and ends; ours starts
        WebDriverWait(driver, SLOW).until(lambda d: queue.counts()["queued"] == 0)
        held.enter_context(lock.held(timeout=30))  # ours activates, and waits to commit
        WebDriverWait(driver, 60).until(lambda d: _job_state(d) == "running")
        assert driver.find_element(By.ID, "job-state").text == "Activating: 0 of 2 images done"
        driver.save_screenshot(str(DOCS / "web-job-activating.png"))
        held.close()
        WebDriverWait(driver, SLOW).until(lambda d: d.find_elements(By.ID, "job-result"))
        assert driver.find_element(By.ID, "job-state").text == "Done: 2 images activated and registered"
        _images_loaded(driver)
        driver.save_screenshot(str(DOCS / "web-job-done.png"))
        assert driver.execute_script("return localStorage.getItem('activeindex-job')") is None
    queue.close()


def test_the_page_follows_a_job_through_a_server_restart_and_marks_the_server_down(collection_root,
                                                                                  small_photos, tmp_path):
    root, _ = collection_root
    port = free_port()
    process, url = start_server(root, port)
    lock = FolderLock(root / ".lock")
    try:
        with _browser() as driver, contextlib.ExitStack() as held:
            driver.get(url)
            _status_loaded(driver)
            driver.find_element(By.ID, "tab-activate").click()
            driver.find_element(By.ID, "token").send_keys(TOKEN)
            held.enter_context(lock.held(timeout=30))
            driver.find_element(By.ID, "activate-file").send_keys("\n".join(map(str, _new_images(small_photos,
                                                                                                 tmp_path, 2))))
            WebDriverWait(driver, 120).until(lambda d: _job_state(d) == "running")
            stop_server(process)  # SIGTERM, mid-job: the job stays on the server's disk
            WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "job-down"))
            assert "keeps checking" in driver.find_element(By.ID, "job-down").text
            assert not driver.find_element(By.ID, "activate-error").is_displayed()  # no "lost track of the job"
            status = driver.find_element(By.ID, "status")
            WebDriverWait(driver, 30).until(lambda d: status.get_attribute("data-state") == "down")
            assert "not answering" in status.text
            held.close()
            process, _ = start_server(root, port)  # its runner resumes the job
            WebDriverWait(driver, SLOW).until(lambda d: d.find_elements(By.ID, "job-result"))
            assert driver.find_element(By.ID, "job-state").text == "Done: 2 images activated and registered"
            WebDriverWait(driver, 30).until(lambda d: status.get_attribute("data-state") == "up")
            assert "registered images" in status.text
    finally:
        if process.poll() is None:
            stop_server(process)


def test_on_a_phone_the_progress_is_in_view_once_files_are_chosen(served, small_photos, tmp_path):
    _, url = served
    with _browser(phone=True) as driver:
        driver.get(url)
        _status_loaded(driver)
        driver.find_element(By.ID, "tab-activate").click()
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "activate-file").send_keys("\n".join(map(str, _new_images(small_photos,
                                                                                             tmp_path, 0))))
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".job"))
        in_view = "const r = document.querySelector('.job').getBoundingClientRect(); " \
                  "return r.top >= 0 && r.top < window.innerHeight"
        assert driver.execute_script(in_view)
        WebDriverWait(driver, SLOW).until(lambda d: d.find_elements(By.ID, "job-result"))


def test_the_page_has_a_favicon_and_no_jargon_in_its_status_line(served):
    _, url = served
    assert httpx.get(f"{url}/favicon.ico", timeout=30).headers["content-type"] == "image/svg+xml"
    with _browser() as driver:
        driver.get(url)
        _status_loaded(driver)
        status = driver.find_element(By.ID, "status").text
        assert "IVF" not in status and "model" not in status and "a copy of one of them from" in status
        assert not driver.find_element(By.ID, "details").get_attribute("open")  # the index and model: on demand
