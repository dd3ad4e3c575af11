"""Shared fixtures: real photos (scikit-image's bundled ones, Debian's photo packages), the real SSCD
model, a real faiss codec trained on real descriptors."""
from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import skimage
from PIL import Image

from activeindex import ActivationConfig, Codec, Collection, Extractor
from activeindex.imageio import load_image

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
PHOTO_NAMES = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg"]
NEBULAE = "/usr/share/stellarium/nebulae/default/*.png"
STAMPS = "/usr/share/tuxpaint/stamps/**/*.png"
TEST_FACTORY = "IVF8,PQ8x4"  # small enough to train on a few hundred real vectors
TOKEN = "test-token-123"  # the write token of the servers the tests start


@pytest.fixture(scope="session")
def photo_paths() -> list[Path]:
    """Six real colour photos (scikit-image's bundled data: BSD / public domain)."""
    return [SKIMAGE_DATA / name for name in PHOTO_NAMES]


def small(image: np.ndarray, short_side: int = 192) -> np.ndarray:
    """A real photo scaled down so tests stay fast."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    return np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.BICUBIC))


@pytest.fixture(scope="session")
def small_photos(photo_paths) -> list[np.ndarray]:
    return [small(load_image(p)) for p in photo_paths]


@pytest.fixture(scope="session")
def training_paths() -> list[str]:
    """Real photos disjoint from the test photos: telescope photos and object cut-outs (Debian)."""
    paths = sorted(glob.glob(NEBULAE))[:360] + sorted(glob.glob(STAMPS, recursive=True))[:300]
    assert len(paths) >= 600, "photo packages missing: run `make photos`"
    return paths


@pytest.fixture(scope="session")
def extractor() -> Extractor:
    return Extractor(device="cpu")


@pytest.fixture(scope="session")
def training_vectors(extractor, training_paths, tmp_path_factory) -> np.ndarray:
    """Descriptors of ~640 real photos (embedded once per session)."""
    vectors = []
    for path in training_paths:
        try:
            vectors.append(extractor.encode(path))
        except ValueError:
            continue
    return np.stack(vectors)


@pytest.fixture(scope="session")
def training_npy(training_vectors, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("train") / "train.npy"
    np.save(path, training_vectors)
    return path


@pytest.fixture(scope="session")
def codec(training_vectors) -> Codec:
    codec = Codec.create(TEST_FACTORY, 512)
    codec.train(training_vectors)
    return codec


def served_collection(root: Path, originals: Path, photos: list[np.ndarray], training_npy: Path) -> list[Path]:
    """A trained collection for service tests: photo0, photo1 activated (ids 1, 2), photo2, photo3 passive (3, 4)."""
    paths = []
    for i, image in enumerate(photos[:4]):
        Image.fromarray(image).save(originals / f"photo{i}.png")
        paths.append(originals / f"photo{i}.png")
    collection = Collection.create(root, TEST_FACTORY, device="cpu")
    collection.train(training_npy)
    collection.activate(paths[:2], root / "activated", config=ActivationConfig(iterations=3))
    collection.add(paths[2:])
    collection.close()
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int | None = None, *extra: str) -> tuple[subprocess.Popen, str]:
    """A real ``activeindex serve`` on 127.0.0.1 (a free port unless given), returned once /healthz answers."""
    port = port or free_port()
    return serving([sys.executable, "-m", "activeindex", "serve", str(root), "--port", str(port), "--token", TOKEN,
                    "-q", *extra], port)


def serving(command: list[str], port: int, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """Start a server process listening on ``port`` (``env``: added to the environment); returned with its URL
    once /healthz answers."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            if process.poll() is not None:
                raise AssertionError(f"server exited: {process.stderr.read()}") from None
            time.sleep(0.2)
    process.kill()
    raise AssertionError("server did not start")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=60)
