"""add / activate on Ray (pipeline.py), on a local Ray cluster of 2 CPUs started by these tests.

The Ray path must give what the in-process path gives (same PNG bytes, same records), survive a worker
killed mid-run, and leave a collection that a re-run completes when its driver is SIGKILLed.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from activeindex import ActivationConfig, Collection, pipeline
from activeindex.faults import ENVIRONMENT
from activeindex.imageio import sha256_file

from .conftest import TEST_FACTORY
from .test_sharing import check_consistent

ray = pytest.importorskip("ray")

FAST = ActivationConfig(iterations=3, batch_size=2)


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray of 2 CPUs (a short temp path: Ray's socket paths have a length limit)."""
    temp = tempfile.mkdtemp(prefix="ray")
    info = ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    yield info.address_info["gcs_address"]
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def photo_folder(small_photos, tmp_path_factory) -> Path:
    """Five real photos (one mirrored: a sixth distinct image) and a broken file."""
    folder = tmp_path_factory.mktemp("ray-photos")
    for i, image in enumerate([*small_photos[:4], small_photos[0][:, ::-1]]):
        Image.fromarray(np.ascontiguousarray(image)).save(folder / f"p{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a PNG")
    return folder


@pytest.fixture
def trained(tmp_path, training_npy) -> Path:
    collection = Collection.create(tmp_path / "trained", TEST_FACTORY, device="cpu")
    collection.train(training_npy)
    collection.close()
    return collection.root


def copy_of(root: Path, name: str) -> Collection:
    return Collection.open(shutil.copytree(root, root.parent / name), device="cpu")


def comparable(report) -> list[dict]:
    return [{k: v for k, v in r.to_dict().items() if k not in ("activated_path", "created_at")}
            | {"activated_name": Path(r.activated_path).name if r.activated_path else None}
            for r in report.records]


def test_activate_on_ray_gives_the_same_bytes_and_records_as_in_process(trained, photo_folder, ray_address,
                                                                         tmp_path):
    local = copy_of(trained, "local").activate([photo_folder], tmp_path / "out-local", FAST)
    on_ray = copy_of(trained, "ray").activate([photo_folder], tmp_path / "out-ray", FAST, ray=ray_address)
    assert len(local.records) == 5 and comparable(on_ray) == comparable(local)
    assert on_ray.failed == local.failed and "broken.png" in on_ray.failed[0][0]
    for record in local.records:
        name = Path(record.activated_path).name
        assert (tmp_path / "out-ray" / name).read_bytes() == (tmp_path / "out-local" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "out-ray").iterdir()) == [f"p{i}.png" for i in range(5)]  # no staging
    assert check_consistent(trained.parent / "ray", sorted(photo_folder.glob("p*.png"))) == 5


def test_add_on_ray_registers_the_same_descriptors(trained, photo_folder, ray_address):
    """Also with as many actors as the cluster has CPUs (no CPU is left for separate decoding tasks)."""
    local, on_ray = copy_of(trained, "local"), copy_of(trained, "ray")
    assert comparable(local.add([photo_folder], batch_size=2)) == comparable(
        on_ray.add([photo_folder], batch_size=2, ray=ray_address, workers=2))
    ids = list(local.catalog.ids())
    local_rows, ray_rows = local.catalog.paths_and_descriptors(ids), on_ray.catalog.paths_and_descriptors(ids)
    assert local.views.views and all(len(local_rows[i][2]) == 1 + len(local.views.views) for i in ids)
    for i in ids:  # the image's descriptor and its views' (the actors cut them too)
        np.testing.assert_array_equal(local_rows[i][2], ray_rows[i][2])
    assert on_ray.index.ntotal == local.index.ntotal == len(ids) * (1 + len(local.views.views))


def test_a_worker_killed_mid_run_is_replaced_and_the_run_completes(trained, photo_folder, ray_address, tmp_path,
                                                                     monkeypatch):
    """The first actor to prepare a batch stops at the `prepare` fault point and is killed there: Ray restarts
    the actor and retries its batch."""
    monkeypatch.setenv(ENVIRONMENT, f"prepare:{tmp_path}")  # reaches the actors through their runtime_env
    killed = []

    def kill_the_paused_actor() -> None:
        marker, deadline = tmp_path / "prepare", time.monotonic() + 180
        while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if marker.exists():
            psutil.Process(int(marker.read_text())).kill()
            killed.append(marker.read_text())

    killer = threading.Thread(target=kill_the_paused_actor)
    killer.start()
    config = ActivationConfig(iterations=3, batch_size=1)
    report = copy_of(trained, "ray").activate([photo_folder], tmp_path / "out", config, ray=ray_address)
    killer.join()
    assert killed, "no actor reached the fault point"
    assert len(report.records) == 5 and len(report.failed) == 1
    assert check_consistent(trained.parent / "ray", sorted(photo_folder.glob("p*.png"))) == 5


def test_a_file_changed_between_planning_and_reading_is_never_registered_under_the_old_hash(
        trained, photo_folder, ray_address, tmp_path, monkeypatch):
    """On Ray the driver hashes the files and the workers read them again: p1's bytes are swapped in between."""
    folder = Path(shutil.copytree(photo_folder, tmp_path / "photos"))
    old_sha, replacement = sha256_file(folder / "p1.png"), (folder / "p4.png").read_bytes()
    real = pipeline.prepare_on_ray

    def swap_then_prepare(*args, **kwargs):
        (folder / "p1.png").write_bytes(replacement)  # after planning, before any worker reads it
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "prepare_on_ray", swap_then_prepare)
    collection = copy_of(trained, "ray")
    report = collection.add([folder], batch_size=2, ray=ray_address)
    assert [(Path(p).name, "changed while it was being registered" in e) for p, e in report.failed] == [
        ("broken.png", False), ("p1.png", True)]
    assert collection.catalog.find_sha256(old_sha) is None  # nothing under the old hash
    monkeypatch.setattr(pipeline, "prepare_on_ray", real)
    again = collection.add([folder], batch_size=2, ray=ray_address)  # p1 now holds p4's bytes: a duplicate
    assert not again.records and [Path(p).name for p, _ in again.skipped] == [f"p{i}.png" for i in range(5)]
    collection.close()


def test_a_sigkilled_driver_run_resumes_without_duplicates(trained, photo_folder, ray_address, tmp_path):
    command = [sys.executable, "-m", "activeindex", "activate", str(trained), str(photo_folder), "--out",
               str(tmp_path / "out"), "--ray", ray_address, "--iterations", "3", "--batch-size", "1", "-q"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, ENVIRONMENT: f"after_commit:{tmp_path}"})
    while not (tmp_path / "after_commit").exists():  # the driver committed its first batch, and waits there
        assert first.poll() is None, first.stderr.read()
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert check_consistent(trained, sorted(photo_folder.glob("p*.png"))) == 1
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1 and "broken.png" in second.stderr  # the bad file, reported again
    assert check_consistent(trained, sorted(photo_folder.glob("p*.png"))) == 5
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"p{i}.png" for i in range(5)]
