"""One collection shared by processes: a server and CLI runs, interleaved and killed at random points.

After every scenario the folder must open with index ids == catalog ids, every image registered
once, and every registered image findable (its original ranks first).
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from activeindex import Collection
from activeindex.codec import index_ids
from activeindex.imageio import load_image, sha256_file
from activeindex.views import image_ids

from .conftest import TEST_FACTORY, TOKEN, start_server, stop_server

FAST = ["--iterations", "2", "--batch-size", "1", "-q"]


def cli(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "activeindex", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def activate_over_http(url: str, path: Path) -> int:
    """POST one activation; the HTTP status (0 when the server is gone)."""
    try:
        response = httpx.post(f"{url}/v1/activate", files={"image": (path.name, path.read_bytes())},
                              headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300)
        return response.status_code
    except httpx.TransportError:
        return 0


@pytest.fixture(scope="module")
def photos(small_photos, tmp_path_factory) -> list[Path]:
    """Eight distinct real photos: the six test photos and two mirrored ones."""
    folder = tmp_path_factory.mktemp("shared-photos")
    images = [*small_photos, small_photos[0][:, ::-1], small_photos[2][:, ::-1]]
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"p{i}.png")
        Image.fromarray(np.ascontiguousarray(image)).save(paths[-1])
    return paths


def new_collection(root: Path, training_npy: Path) -> Path:
    collection = Collection.create(root, TEST_FACTORY, device="cpu")
    collection.train(training_npy)
    collection.close()
    return root


def check_consistent(root: Path, photos: list[Path]) -> int:
    """Index == catalog, each photo registered at most once and findable; returns the number registered."""
    collection = Collection.open(root, device="cpu")
    catalog_ids = collection.catalog.ids()
    indexed = np.unique(image_ids(index_ids(collection.index), collection.views.slots))
    assert sorted(indexed) == sorted(catalog_ids), "index and catalog disagree"
    records = collection.catalog.get(list(catalog_ids))
    shas = [r.original_sha256 for r in records.values()]
    assert len(shas) == len(set(shas)), "an image was registered twice"
    by_sha = {r.original_sha256: image_id for image_id, r in records.items()}
    for photo in photos:
        image_id = by_sha.get(sha256_file(photo))
        if image_id is not None:
            assert collection.search(load_image(photo), k=3)[0][0].id == image_id, f"{photo.name} not findable"
    for record in records.values():
        if record.activated_path:
            assert sha256_file(record.activated_path) == record.activated_sha256
    collection.close()
    return len(records)


def test_server_and_cli_interleaved_lose_nothing(tmp_path, training_npy, photos):
    root = new_collection(tmp_path / "col", training_npy)
    server, url = start_server(root)
    try:
        assert cli("add", root, photos[0], "-q").wait(timeout=300) == 0
        found = httpx.post(f"{url}/v1/search", files={"images": ("q.png", photos[0].read_bytes())},
                           timeout=120).json()["results"][0]
        assert found["matches"][0]["filename"] == photos[0].name  # the server saw the CLI's write
        assert activate_over_http(url, photos[1]) == 200
        # a CLI activation and a server activation at the same time, then a CLI add
        writer = cli("activate", root, photos[2], photos[3], "--out", tmp_path / "out", *FAST)
        assert activate_over_http(url, photos[4]) == 200
        assert writer.wait(timeout=300) == 0, writer.stderr.read()
        assert cli("add", root, photos[5], "-q").wait(timeout=300) == 0
        status = httpx.get(f"{url}/v1/status", timeout=30).json()
        assert status["images"] == status["indexed_images"] == 6
        assert activate_over_http(url, photos[6]) == 200  # the server's index write keeps the CLI's images
    finally:
        stop_server(server)
    assert check_consistent(root, photos) == 7


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_killing_either_process_at_random_loses_nothing(tmp_path, training_npy, photos, seed):
    rng = np.random.default_rng(seed)
    root = new_collection(tmp_path / "col", training_npy)
    server, url = start_server(root)
    cli_photos, http_photos = photos[:4], photos[4:7]
    writer = cli("activate", root, *cli_photos, "--out", tmp_path / "out", *FAST)
    posts = threading.Thread(target=lambda: [activate_over_http(url, p) for p in http_photos])
    posts.start()
    time.sleep(rng.uniform(2, 15))
    victim = server if rng.random() < 0.5 else writer
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    writer.wait(timeout=300)
    posts.join(timeout=600)
    if victim is server:  # its worker process notices and exits too
        time.sleep(2)
    else:
        stop_server(server)
    check_consistent(root, photos)
    # both resume: the CLI run again, the server restarted and the uploads sent again
    assert cli("activate", root, *cli_photos, "--out", tmp_path / "out", *FAST).wait(timeout=300) == 0
    server, url = start_server(root)
    try:
        assert [activate_over_http(url, p) for p in http_photos] == [200] * 3
    finally:
        stop_server(server)
    assert check_consistent(root, photos) == 7
