"""Thumbnails (service/thumbnails.py) of camera-size files through a real server: a 63-megapixel JPEG decoded at
a reduced scale (the server's peak RSS read from /proc), a 24-megapixel PNG decoded once and then served from
the cache, EXIF orientation applied."""
from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from activeindex import Collection

from .conftest import TEST_FACTORY, TOKEN, start_server, stop_server

READ = {"Authorization": f"Bearer {TOKEN}"}
MiB = 2**20


@pytest.fixture(scope="module")
def served(tmp_path_factory, training_npy, small_photos):
    """A collection holding a 8000x7900 JPEG (EXIF orientation 6), a 6000x4000 PNG and a small PNG (ids 1-3)."""
    folder = tmp_path_factory.mktemp("thumbnails")
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: rotate 90 degrees clockwise to view
    Image.fromarray(small_photos[0]).resize((8000, 7900)).save(folder / "camera.jpg", quality=90, exif=exif)
    Image.fromarray(small_photos[1]).resize((6000, 4000)).save(folder / "poster.png", compress_level=1)
    Image.fromarray(small_photos[2]).save(folder / "small.png")
    collection = Collection.create(folder / "col", TEST_FACTORY, device="cpu")
    collection.train(training_npy)
    collection.add([folder / "camera.jpg", folder / "poster.png", folder / "small.png"])
    collection.close()
    process, url = start_server(folder / "col")
    yield url, psutil.Process(process.pid)
    stop_server(process)


def _peak_growth(process: psutil.Process, request) -> tuple[int, httpx.Response]:
    """(bytes the process's peak RSS rose above its RSS during ``request()``, the response): the kernel's
    high-water mark is reset first (``clear_refs`` 5)."""
    Path(f"/proc/{process.pid}/clear_refs").write_text("5")
    before = process.memory_info().rss
    response = request()
    status = Path(f"/proc/{process.pid}/status").read_text()
    peak = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024
    return peak - before, response


def _thumbnail(url: str, image_id: int) -> httpx.Response:
    response = httpx.get(f"{url}/v1/images/{image_id}/thumbnail", headers=READ, timeout=120)
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg", response.text
    return response


def test_a_camera_jpeg_thumbnail_decodes_a_fraction_of_its_pixels(served):
    url, process = served
    growth, response = _peak_growth(process, lambda: _thumbnail(url, 1))
    assert growth < 100 * MiB, f"a 63 MP JPEG's thumbnail raised the server's peak RSS by {growth / MiB:.0f} MB"
    image = Image.open(io.BytesIO(response.content))
    assert max(image.size) == 256 and image.size[1] > image.size[0]  # upright: turned by its EXIF orientation


def test_a_thumbnail_is_made_once_then_served_from_the_cache(served):
    url, _ = served
    start = time.monotonic()
    first = _thumbnail(url, 2)
    made = time.monotonic() - start
    start = time.monotonic()
    again = _thumbnail(url, 2)
    cached = time.monotonic() - start
    assert again.content == first.content and max(Image.open(io.BytesIO(first.content)).size) == 256
    assert cached < made / 4, f"the second request took {cached:.3f} s, the first {made:.3f} s"


def test_a_small_image_thumbnail_keeps_its_shape(served, small_photos):
    url, _ = served
    image = Image.open(io.BytesIO(_thumbnail(url, 3).content))
    h, w = small_photos[2].shape[:2]
    assert max(image.size) == min(256, max(w, h)) and abs(image.size[0] / image.size[1] - w / h) < 0.02
    assert np.asarray(image).std() > 10  # a picture, not a blank
