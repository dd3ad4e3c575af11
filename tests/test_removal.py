"""Takedown: removal by id, file or sha256, seen at once by other processes; compaction; crashes anywhere in
a removal or a compaction; a removal while another process adds; registering a removed image again."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from activeindex import ActivationConfig, Collection
from activeindex.codec import index_ids
from activeindex.faults import ENVIRONMENT
from activeindex.imageio import load_image, sha256_file
from activeindex.service.queue import JobQueue

from .conftest import TEST_FACTORY

FAST = ActivationConfig(iterations=2)


@pytest.fixture(scope="module")
def photos(small_photos, tmp_path_factory) -> list[Path]:
    """Eight distinct real photos: the six test photos and two mirrored ones."""
    folder = tmp_path_factory.mktemp("removal-photos")
    images = [*small_photos, small_photos[0][:, ::-1], small_photos[2][:, ::-1]]
    for i, image in enumerate(images):
        Image.fromarray(np.ascontiguousarray(image)).save(folder / f"p{i}.png")
    return sorted(folder.glob("p*.png"))


@pytest.fixture
def filled(tmp_path, training_npy, photos) -> Collection:
    """A trained collection: photos 0-1 activated (ids 1, 2), photos 2-5 passive (ids 3-6)."""
    collection = Collection.create(tmp_path / "col", TEST_FACTORY, device="cpu", views="none")
    collection.train(training_npy)
    collection.activate(photos[:2], tmp_path / "published", FAST)
    collection.add(photos[2:6])
    yield collection
    collection.close()


def live_ids(collection: Collection) -> list[int]:
    """The ids a search can return: the index's, less the removed ones it still holds."""
    tombstones = collection._live.tombstones
    assert tombstones <= set(collection.catalog.removed_ids().tolist()), "a tombstone that was never removed"
    return sorted(set(index_ids(collection.index).tolist()) - tombstones)


def check_consistent(root: Path) -> Collection:
    """Opened from disk: the live index ids are exactly the catalog's, no id twice."""
    collection = Collection.open(root, device="cpu")
    ids = index_ids(collection.index)
    assert len(ids) == len(set(ids.tolist())), "an id twice in the index"
    assert live_ids(collection) == sorted(collection.catalog.ids().tolist())
    return collection


def found_ids(collection: Collection, photo: Path, k: int = 10) -> list[int]:
    return [m.id for m in collection.search(load_image(photo), k=k)[0]]


def run_cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "activeindex", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_removal_by_id_file_and_sha256_is_seen_at_once_by_another_process(filled, photos, tmp_path):
    """The CLI (another process) removes; this process's next search no longer returns those images."""
    assert found_ids(filled, photos[0])[0] == 1 and found_ids(filled, photos[3])[0] == 4
    activated = filled.catalog.get([2])[2].activated_path
    result = run_cli("remove", filled.root, "1", activated, sha256_file(photos[3]), tmp_path / "never-registered.png",
                     "-q")
    assert result.returncode == 1, result.stderr  # one item named nothing
    assert "never-registered.png: no registered image" in result.stderr
    assert "3 removed, 0 activated files deleted, 1 not found" in result.stderr
    for photo in photos[:6]:
        assert not {1, 2, 4} & set(found_ids(filled, photo)), photo.name  # at once, in this process
    assert found_ids(filled, photos[2])[0] == 3 and len(found_ids(filled, photos[2], k=3)) == 3  # still k results
    info = filled.info()
    assert (info["images"], info["passive"], info["active"], info["removed"]) == (3, 3, 0, 3)
    assert Path(activated).is_file()  # files stay unless asked
    check_consistent(filled.root).close()


def test_removed_image_can_be_registered_again_and_files_go_only_when_asked(filled, photos, tmp_path):
    record = filled.catalog.get([1])[1]
    report = filled.remove([photos[0]], delete_files=True)  # the original file names it by its content
    assert [r.id for r in report.removed] == [1] and report.deleted_files == [record.activated_path]
    assert not Path(record.activated_path).exists() and photos[0].is_file()  # the original is never touched
    again = filled.activate([photos[0]], tmp_path / "published", FAST)
    assert [r.id for r in again.records] == [7]  # a new id: ids are never given out twice
    assert found_ids(filled, photos[0])[0] == 7 and 1 not in found_ids(filled, photos[0])
    assert filled.remove([99]).not_found == [("99", "no registered image has this id, file or sha256")]
    reopened = check_consistent(filled.root)
    assert found_ids(reopened, photos[0])[0] == 7
    reopened.close()


def test_a_released_file_replaced_since_is_kept_when_its_image_is_removed(filled):
    """--delete-files deletes the file that was released, never whatever took its name since."""
    record = filled.catalog.get([2])[2]
    Path(record.activated_path).write_bytes(b"the publisher's replacement")
    report = filled.remove([2], delete_files=True)
    assert report.deleted_files == [] and "no longer holds the file released for image 2" in report.warnings[0]
    assert Path(record.activated_path).read_bytes() == b"the publisher's replacement"


def test_compaction_takes_removed_images_out_of_the_index_and_the_snapshot(filled, photos):
    filled._live.compact_min = 3  # compact once 3 removed images are in the index
    filled.remove([3, 4])
    assert filled._live.tombstones == {3, 4} and filled.indexed_images == 6  # not compacted yet: 2 < 3
    filled.remove([5])  # the third: compacted, and index.faiss written without them
    assert filled._live.tombstones == set() and sorted(index_ids(filled.index)) == [1, 2, 6]
    reopened = check_consistent(filled.root)
    assert sorted(index_ids(reopened.index)) == [1, 2, 6] and reopened._live.tombstones == set()
    assert reopened.info()["removed"] == 3 and found_ids(reopened, photos[5])[0] == 6
    reopened.close()


def test_a_snapshot_holding_removed_images_opens_with_them_as_tombstones(filled, photos):
    filled.snapshot()  # index.faiss holds ids 1-6
    filled.remove([2, 6])
    reopened = check_consistent(filled.root)  # the snapshot still holds 2 and 6: dropped from every result
    assert reopened._live.tombstones == {2, 6} and reopened.info()["removed_in_index"] == 2
    assert not {2, 6} & set(found_ids(reopened, photos[1])) and found_ids(reopened, photos[1])
    assert reopened.compact() == 2 and sorted(index_ids(reopened.index)) == [1, 3, 4, 5]
    reopened.close()


def paused(command: list[str], point: str, faults: Path) -> int:
    """Run ``command`` until it reaches fault ``point``; SIGKILL it there; its pid."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, ENVIRONMENT: f"{point}:{faults}"})
    marker, deadline = faults / point, time.monotonic() + 240
    while not (marker.exists() and marker.read_text()):
        assert process.poll() is None, f"exited before {point}: {process.stderr.read()}"
        assert time.monotonic() < deadline, f"never reached {point}"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.pid


def test_sigkill_inside_the_removal_transaction_removes_nothing(filled, tmp_path):
    filled.close()
    command = [sys.executable, "-m", "activeindex", "remove", str(filled.root), "3", "4", "-q"]
    paused(command, "removal", tmp_path)
    collection = check_consistent(filled.root)
    assert sorted(collection.catalog.ids().tolist()) == [1, 2, 3, 4, 5, 6] and collection.info()["removed"] == 0
    collection.close()


def test_sigkill_during_compaction_leaves_a_consistent_collection(filled, tmp_path):
    """Killed with the compacted index written to its temp file, before the rename: the old snapshot stays."""
    filled.snapshot()
    filled.close()
    script = ("import sys; from activeindex import Collection; c = Collection.open(sys.argv[1], device='cpu'); "
              "c.remove([2, 5]); c.compact()")
    paused([sys.executable, "-c", script, str(filled.root)], "snapshot", tmp_path)
    collection = check_consistent(filled.root)
    assert sorted(collection.catalog.ids().tolist()) == [1, 3, 4, 6] and collection._live.tombstones == {2, 5}
    collection.close()


def test_removal_while_another_process_activates_loses_nothing_else(filled, photos, tmp_path):
    """Another process activates photos 6-7 one batch at a time; between its two commits, we remove."""
    filled.close()
    command = [sys.executable, "-m", "activeindex", "activate", str(filled.root), str(photos[6]), str(photos[7]),
               "--out", str(tmp_path / "published"), "--iterations", "2", "--batch-size", "1", "-q"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, ENVIRONMENT: f"after_commit:{tmp_path}"})
    while not (tmp_path / "after_commit").exists():  # photo 6 committed (id 7); the process waits there
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    collection = Collection.open(filled.root, device="cpu")
    assert [r.id for r in collection.remove([3, 7]).removed] == [3, 7]
    collection.close()
    (tmp_path / "after_commit.go").touch()  # it carries on: photo 7 is committed as id 8
    assert process.wait(timeout=300) == 0, process.stderr.read()
    collection = check_consistent(filled.root)
    assert sorted(collection.catalog.ids().tolist()) == [1, 2, 4, 5, 6, 8]
    assert found_ids(collection, photos[7])[0] == 8 and 7 not in found_ids(collection, photos[6])
    collection.close()


def test_a_search_thread_never_indexes_a_batch_twice(filled, photos, tmp_path):
    """A search's catch-up running between a commit's catalog insert and its index add (real threads) must not
    add that batch a second time: the insert and the add happen under one write lock."""
    inserted, searched = threading.Event(), threading.Event()
    real_insert, queue = filled.catalog.insert, JobQueue(filled.root)

    def insert_then_let_a_search_in(*args):
        ids = real_insert(*args)
        queue.submit([photos[0]], tmp_path)  # another connection commits, as a server's job queue does
        inserted.set()
        searched.wait(2)  # the search thread's catch-up gets its chance here (it waits for the lock, if any)
        return ids

    filled.catalog.insert = insert_then_let_a_search_in
    query = filled.extractor.encode(load_image(photos[0]))[None]

    def search() -> None:
        inserted.wait(60)
        filled.search_descriptors(query, 3)
        searched.set()

    thread = threading.Thread(target=search)
    thread.start()
    filled.activate([photos[7]], tmp_path / "published", FAST)
    thread.join(60)
    ids = index_ids(filled.index).tolist()
    assert len(ids) == len(set(ids)), f"an id indexed twice: {sorted(ids)}"
    assert sorted(ids) == sorted(filled.catalog.ids().tolist())
    queue.close()
