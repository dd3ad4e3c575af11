"""A full disk, for real (a small tmpfs; skipped where mounting is not allowed): named as such on the command
line and over HTTP, nothing committed lost, no partial upload left behind, and re-running after space is
freed finishes without duplicates."""
from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from activeindex import Collection

from .conftest import TEST_FACTORY, TOKEN, start_server, stop_server

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def disk(tmp_path) -> Path:
    """A 16 MB tmpfs."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """A file that leaves about ``leave`` bytes free on ``disk``."""
    filler = disk / "filler"
    with open(filler, "ab") as f:
        while shutil.disk_usage(disk).free > leave:
            try:
                f.write(b"\0" * min(1 << 20, max(4096, shutil.disk_usage(disk).free - leave)))
                f.flush()
            except OSError:
                break
    return filler


def trained(root: Path, training_npy: Path) -> Path:
    collection = Collection.create(root, TEST_FACTORY, device="cpu", views="none")  # a disk's room: one vector each
    collection.train(training_npy)
    collection.close()
    return root


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "activeindex", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_the_command_line_names_a_full_disk_in_one_line_and_a_rerun_finishes(disk, training_npy, small_photos,
                                                                             tmp_path):
    root = trained(disk / "col", training_npy)
    photo = tmp_path / "photo.jpg"  # the input lives elsewhere; the activated PNG (~100 KB) goes to the full disk
    photo.write_bytes(jpeg(small_photos[0]))
    filler = fill(disk, leave=40_000)
    full = cli("activate", root, photo, "--out", disk / "published", "--iterations", "2", "-q")
    assert full.returncode == 1 and "Traceback" not in full.stderr
    [line] = full.stderr.strip().splitlines()
    assert line.startswith("error: ") and "no space left on the device" in line and str(disk) in line, line
    filler.unlink()
    again = cli("activate", root, photo, "--out", disk / "published", "--iterations", "2", "-q")
    assert again.returncode == 0, again.stderr
    collection = Collection.open(root, device="cpu")
    assert collection.catalog.count() == collection.indexed_images == 1
    assert [p.name for p in (disk / "published").iterdir()] == ["photo.jpg"]  # a JPEG stays a JPEG; no staged leftovers
    collection.close()


def test_the_service_answers_507_and_a_job_on_a_full_disk_fails_then_reruns(disk, training_npy, small_photos):
    root = trained(disk / "col", training_npy)
    process, url = start_server(root)
    try:
        upload = {"images": ("photo.jpg", jpeg(small_photos[1]))}
        filler = fill(disk, leave=0)
        refused = httpx.post(f"{url}/v1/jobs", files=upload, headers=AUTH, timeout=60)
        assert refused.status_code == 507 and refused.json()["detail"].startswith("server storage full")
        assert [p for p in (root / "uploads").rglob("*") if p.is_file()] == []  # no partial upload left behind
        filler.unlink()

        upload = {"images": ("photo.png", png(small_photos[1]))}  # released as a PNG (~100 KB)
        filler = fill(disk, leave=len(upload["images"][1]) + 40_000)  # the upload fits; the activated PNG does not
        job_id = httpx.post(f"{url}/v1/jobs", files=upload, headers=AUTH, timeout=60).json()["id"]
        job = follow(url, job_id)
        assert job["state"] == "failed" and "no space left on the device" in job["error"], job
        assert str(disk) not in job["error"]  # no server path in what a client reads
        filler.unlink()

        job = follow(url, httpx.post(f"{url}/v1/jobs", files=upload, headers=AUTH, timeout=60).json()["id"])
        assert job["state"] == "done" and len(job["records"]) == 1
    finally:
        stop_server(process)
    collection = Collection.open(root, device="cpu")
    assert collection.catalog.count() == collection.indexed_images == 1
    collection.close()


def follow(url: str, job_id: int) -> dict:
    deadline = time.monotonic() + 240
    while (job := httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30, headers=AUTH).json())["state"] not in (
            "done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def test_a_removal_whose_compaction_meets_a_full_disk_stands_and_deletes_its_files(disk, training_npy, small_photos,
                                                                                  tmp_path):
    """The removal is committed before the compacted index is written: a full disk then only postpones the
    snapshot (a warning), the activated file is still deleted, and a retry is not needed."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg(small_photos[0]))
    collection = Collection.open(trained(disk / "col", training_npy), device="cpu")
    [record] = collection.activate([photo], tmp_path / "out").records
    collection._live.compact_at, collection._live.compact_min = 0.0, 1  # this one removal is due for compaction
    filler = fill(disk, leave=(disk / "col" / "index.faiss").stat().st_size // 2)
    report = collection.remove([record.id], delete_files=True)
    assert [r.id for r in report.removed] == [record.id]
    assert report.deleted_files == [record.activated_path] and not Path(record.activated_path).exists()
    assert "not rewritten" in report.warnings[0]
    filler.unlink()
    assert Collection.open(disk / "col", device="cpu").search(str(photo), k=5)[0] == []
