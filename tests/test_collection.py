"""The collection folder: train, add, activate, search; atomic writes, resumption and refusals."""
from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from PIL import Image

from activeindex import ActivationConfig, Collection
from activeindex.codec import index_ids, save_index
from activeindex.edits import apply_edit
from activeindex.errors import (
    CodecMismatchError,
    CollectionLockedError,
    CorruptCollectionError,
    InvalidInputError,
    ModelMismatchError,
)
from activeindex.imageio import load_image, sha256_file

from .conftest import TEST_FACTORY
from .test_extractor import scripted_model

FAST = ActivationConfig(iterations=4)


@pytest.fixture(scope="module")
def photo_files(small_photos, tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i, image in enumerate(small_photos):
        path = folder / f"photo{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(image).save(path, quality=95)
        paths.append(path)
    return paths


@pytest.fixture()
def collection(tmp_path, training_npy):
    """One vector per image, so index ids are image ids (views: test_views.py)."""
    col = Collection.create(tmp_path / "col", TEST_FACTORY, device="cpu", views="none")
    col.train(training_npy)
    return col


def test_create_train_activate_search_round_trip(collection, photo_files, tmp_path):
    passive = collection.add(photo_files[3:])
    active = collection.activate(photo_files[:3], tmp_path / "out", config=FAST)
    assert [r.kind for r in passive.records] == ["passive"] * 3 and not passive.failed
    assert [r.kind for r in active.records] == ["active"] * 3 and not active.failed
    for record in active.records:
        assert Path(record.activated_path).suffix == Path(record.original_path).suffix  # a JPEG stays a JPEG
        assert sha256_file(record.activated_path) == record.activated_sha256
        assert record.psnr > 38 and record.cos_after > record.cos_before
    # edited copies of the activated files find their originals
    query = apply_edit("brightness_2.0", load_image(active.records[0].activated_path))
    best = collection.search(query, k=3)[0][0]
    assert best.id == active.records[0].id and best.original_path == str(photo_files[0].resolve())
    assert 0.5 < best.similarity <= 1  # the exact cosine to the stored original descriptor
    info = Collection.open(collection.root).info()
    assert (info["images"], info["active"], info["passive"], info["indexed_images"]) == (6, 3, 3, 6)


def test_scaling_is_stored_per_record_and_older_catalogs_gain_the_column(collection, photo_files, tmp_path):
    """A PSNR floor gives each image its own scaling: it is what the catalog gives back (beside a real
    timestamp); a catalog written before the column existed opens, its rows without a scaling."""
    collection.add(photo_files[3:4])
    with sqlite3.connect(collection.root / "catalog.sqlite") as db:
        db.execute("ALTER TABLE images DROP COLUMN scaling")  # as an earlier version wrote it
    reopened = Collection.open(collection.root)
    record = reopened.activate(photo_files[:1], tmp_path / "out", config=replace(FAST, psnr=45.0)).records[0]
    stored = Collection.open(collection.root).catalog.get([1, record.id])
    assert stored[1].scaling is None and stored[1].created_at.startswith("20")
    assert stored[record.id].scaling == pytest.approx(record.scaling) and 0 < record.scaling != FAST.scaling
    assert stored[record.id].created_at == record.created_at and record.psnr >= 45.0


def test_manifest_records_model_preprocessing_and_codec(collection):
    m = collection.manifest
    assert m["model"]["name"] == "sscd" and m["preprocessing"]["short_side"] == 288
    assert m["factory"] == TEST_FACTORY and m["codec_fingerprint"] == collection.codec.fingerprint()


def test_duplicates_are_not_added_twice(collection, photo_files, tmp_path):
    collection.add(photo_files[:2])
    copy = tmp_path / "renamed.png"
    shutil.copy(photo_files[0], copy)
    report = collection.add([photo_files[1], copy])
    assert not report.records and [reason for _, reason in report.skipped] == [
        "already registered (id 2)", "already registered (id 1)"]
    assert collection.catalog.count() == collection.indexed_images == 2


def test_bad_files_fail_one_by_one_and_the_rest_proceeds(collection, photo_files, tmp_path):
    (tmp_path / "text.jpg").write_text("hello")
    data = photo_files[1].read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    Image.open(photo_files[0]).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "tiny.png")
    report = collection.add([tmp_path / "text.jpg", tmp_path / "cut.jpg", tmp_path / "cmyk.jpg",
                             tmp_path / "tiny.png", tmp_path / "absent.png", photo_files[2]])
    assert len(report.records) == 2  # the CMYK JPEG and the real photo
    errors = dict(report.failed)
    assert set(errors) == {str(tmp_path / n) for n in ["text.jpg", "cut.jpg", "tiny.png", "absent.png"]}
    assert all("\n" not in e for e in errors.values())
    assert collection.catalog.count() == collection.indexed_images == 2


def test_index_behind_catalog_is_caught_up_on_open(collection, photo_files, tmp_path):
    """A process killed between the catalog commit and the index rename."""
    collection.add(photo_files[:2])
    stale = (collection.root / "index.faiss").read_bytes()
    collection.add(photo_files[2:4])
    (collection.root / "index.faiss").write_bytes(stale)
    reopened = Collection.open(collection.root)
    assert reopened.indexed_images == reopened.catalog.count() == 4
    assert reopened.search(load_image(photo_files[3]), k=1)[0][0].original_path == str(photo_files[3].resolve())


def test_untrained_collection_refuses_writes(tmp_path, photo_files):
    col = Collection.create(tmp_path / "new", "IVF8,PQ8x4", device="cpu")
    with pytest.raises(InvalidInputError, match="not trained yet"):
        col.add(photo_files[:1])


def test_retraining_with_images_is_refused(collection, photo_files, training_npy):
    collection.add(photo_files[:1])
    with pytest.raises(InvalidInputError, match="re-training would orphan"):
        collection.train(training_npy)


def test_another_codec_is_refused(collection, tmp_path, training_vectors):
    other = Collection.create(tmp_path / "other", TEST_FACTORY, device="cpu")
    other.train(training_vectors[::-1].copy())
    shutil.copy(other.root / "index.faiss", collection.root / "index.faiss")
    with pytest.raises(CodecMismatchError, match="another codec"):
        Collection.open(collection.root)


def test_another_model_is_refused(collection, tmp_path):
    with pytest.raises(ModelMismatchError, match="was built with model sscd"):
        Collection.open(collection.root, model=scripted_model(tmp_path / "net.pt", 512))


def test_not_a_collection(tmp_path):
    with pytest.raises(CorruptCollectionError, match="not a collection"):
        Collection.open(tmp_path)
    with pytest.raises(InvalidInputError, match="not empty"):
        Collection.create(tmp_path.parent, "IVF8,PQ8x4")


def test_concurrent_writer_is_refused(collection, photo_files):
    with collection._writing():
        other = Collection.open(collection.root)
        other.lock_timeout = 0.3
        with pytest.raises(CollectionLockedError, match="another process is writing"):
            other.add(photo_files[:1])
    assert other.add(photo_files[:1]).records  # free again


def test_catalog_rows_hold_the_original_descriptor_in_float16(collection, photo_files, extractor):
    collection.add(photo_files[:2])
    with sqlite3.connect(collection.root / "catalog.sqlite") as db:
        blob = db.execute("SELECT descriptor FROM images ORDER BY id").fetchone()[0]
    stored, exact = np.frombuffer(blob, np.float16).astype(np.float32), extractor.encode(photo_files[0])
    assert len(blob) == 2 * 512
    np.testing.assert_allclose(stored, exact, atol=5e-4)
    # the exact re-score of a search uses the stored vector: its similarity moves by < 1e-4
    query = extractor.encode(photo_files[1])
    assert abs(float(stored @ query) - float(exact @ query)) < 1e-4
    match = collection.search(load_image(photo_files[0]), k=1)[0][0]
    assert match.id == 1 and abs(match.similarity - float(stored @ exact)) < 1e-6


def test_collections_with_float32_descriptors_still_open(collection, photo_files):
    """Collections made before float16 storage have no descriptor_dtype in their manifest: float32 rows."""
    collection.add(photo_files[:2])
    manifest = json.loads((collection.root / "manifest.json").read_text())
    del manifest["descriptor_dtype"]
    (collection.root / "manifest.json").write_text(json.dumps(manifest))
    with sqlite3.connect(collection.root / "catalog.sqlite") as db:
        for (id_, blob) in db.execute("SELECT id, descriptor FROM images").fetchall():
            wide = np.frombuffer(blob, np.float16).astype(np.float32).tobytes()
            db.execute("UPDATE images SET descriptor = ? WHERE id = ?", (wide, id_))
    save_index(collection.codec.empty_index(), collection.root / "index.faiss")  # rebuilt from the rows on open
    reopened = Collection.open(collection.root)
    assert sorted(index_ids(reopened.index)) == [1, 2]
    match = reopened.search(load_image(photo_files[1]), k=1)[0][0]
    assert match.id == 2 and match.similarity > 0.99


def test_train_from_a_folder_skips_bad_files(tmp_path, training_paths, caplog):
    folder = tmp_path / "train"
    folder.mkdir()
    for path in training_paths[:40]:
        shutil.copy(path, folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    col = Collection.create(tmp_path / "col", "IVF4,PQ8x4", device="cpu")
    with caplog.at_level("WARNING"):
        assert col.train(folder) == 40
    assert "broken.png" in caplog.text
    assert Collection.open(col.root).manifest["train_size"] == 40


def test_activation_never_overwrites_an_existing_file(collection, photo_files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo0.png").write_bytes(b"the user's own file")
    record = collection.activate(photo_files[:1], out, config=ActivationConfig(iterations=1)).records[0]
    assert (out / "photo0.png").read_bytes() == b"the user's own file"
    assert record.activated_path == str((out / f"photo0-{record.original_sha256[:8]}.png").resolve())


def test_index_lacking_a_middle_id_is_repaired_by_set(collection, photo_files):
    """The reviewer's loss: an index missing id 2 of 1..4 (a stale writer) must get id 2 back, not id 4 twice."""
    for path in photo_files[:4]:
        collection.add([path])
    collection.index.remove_ids(np.array([2], np.int64))
    save_index(collection.index, collection.root / "index.faiss")
    reopened = Collection.open(collection.root)
    assert sorted(index_ids(reopened.index)) == [1, 2, 3, 4]
    assert reopened.search(load_image(photo_files[1]), k=1)[0][0].id == 2


def test_index_with_unknown_or_repeated_ids_is_rebuilt(collection, photo_files):
    collection.add(photo_files[:3])
    vectors = np.random.default_rng(0).standard_normal((2, 512)).astype(np.float32)
    collection.index.add_with_ids(vectors, np.array([99, 1], np.int64))  # an unknown id and a repeated one
    save_index(collection.index, collection.root / "index.faiss")
    reopened = Collection.open(collection.root)
    assert sorted(index_ids(reopened.index)) == [1, 2, 3]
    assert reopened.search(load_image(photo_files[0]), k=1)[0][0].id == 1


def test_a_stale_process_catches_up_before_searching_and_writing(collection, photo_files):
    """Two handles on one folder (as a server and a CLI run): neither loses the other's images."""
    server = Collection.open(collection.root)
    collection.add(photo_files[:1])  # the "CLI" writes
    assert server.search(load_image(photo_files[0]), k=1)[0][0].id == 1  # the server sees it
    server.add(photo_files[1:2])
    reopened = Collection.open(collection.root)
    assert sorted(index_ids(reopened.index)) == [1, 2]
    server.snapshot()  # the server's index file includes the CLI's image
    assert sorted(index_ids(faiss.read_index(str(collection.root / "index.faiss")))) == [1, 2]


def test_index_file_is_a_snapshot_written_when_due(collection, photo_files):
    """Commits do not rewrite index.faiss; it is written at the end of a run that leaves it lacking
    `snapshot_records` images, or when older than `snapshot_interval` seconds; what it lacks is caught up
    from the catalog on open."""
    def in_file() -> list[int]:
        return sorted(index_ids(faiss.read_index(str(collection.root / "index.faiss"))))

    collection.snapshot_records = 3
    collection.add(photo_files[:1])
    collection.add(photo_files[1:2])
    assert in_file() == [] and sorted(index_ids(Collection.open(collection.root).index)) == [1, 2]
    collection.add(photo_files[2:3])  # the third image makes the snapshot due
    assert in_file() == [1, 2, 3]
    collection.snapshot_interval = 0.0
    collection.add(photo_files[3:4])  # an old file lacking any image is due too
    assert in_file() == [1, 2, 3, 4]


def test_damaged_or_missing_catalog_is_one_clear_error(collection, photo_files):
    collection.add(photo_files[:2])
    collection.close()
    catalog = collection.root / "catalog.sqlite"
    with sqlite3.connect(catalog) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(catalog.read_bytes())
    data[4096:] = b"\xff" * (len(data) - 4096)  # every page after the header page
    catalog.write_bytes(bytes(data))
    with pytest.raises(CorruptCollectionError, match="catalog") as error:
        Collection.open(collection.root).info()
    assert "\n" not in str(error.value)
    catalog.unlink()
    with pytest.raises(CorruptCollectionError, match="missing"):
        Collection.open(collection.root)
    assert not catalog.exists()  # never silently re-created empty


def test_searches_share_the_index_and_a_writer_excludes_them():
    """Two readers hold the index at once (each waits for the other inside); a writer waits for both, and
    a waiting writer holds back new readers; the writer may re-enter and read its own index."""
    import threading

    from activeindex.locking import ReadWriteLock

    lock, inside, order = ReadWriteLock(), threading.Barrier(2, timeout=10), []
    reader_may_leave = threading.Event()

    def reader(name):
        with lock.reading():
            inside.wait()  # times out unless both readers are inside together
            order.append(f"{name} in")
            reader_may_leave.wait(10)
            order.append(f"{name} out")  # still holding the lock

    def writer():
        with lock.writing(), lock.writing(), lock.reading():  # re-entry and own reads do not deadlock
            order.append("writer")

    readers = [threading.Thread(target=reader, args=(n,)) for n in ("r1", "r2")]
    for t in readers:
        t.start()
    while len(order) < 2:
        threading.Event().wait(0.01)
    late_reader_done = threading.Event()
    write = threading.Thread(target=writer)
    write.start()
    while not lock._writers_waiting:  # the writer is queued behind the two readers
        threading.Event().wait(0.01)

    def late_reader():
        with lock.reading():
            late_reader_done.set()

    late = threading.Thread(target=late_reader)
    late.start()
    assert not late_reader_done.wait(0.3)  # held back by the waiting writer
    assert "writer" not in order
    reader_may_leave.set()
    for t in (*readers, write, late):
        t.join(10)
    assert sorted(order[:2]) == ["r1 in", "r2 in"] and order.index("writer") > max(order.index("r1 out"),
                                                                                order.index("r2 out"))
    assert late_reader_done.is_set()


def test_concurrent_searches_overlap_in_the_index(collection, photo_files, monkeypatch):
    """Two searches are inside faiss at the same time (each waits there for the other): no global lock."""
    import threading

    from activeindex import live_index as collection_module

    collection.add(photo_files[:3])
    both_inside, real_search = threading.Barrier(2, timeout=10), collection_module.search

    def search_together(index, queries, k):
        both_inside.wait()  # BrokenBarrierError unless the other search is inside too
        return real_search(index, queries, k)

    monkeypatch.setattr(collection_module, "search", search_together)
    query, found = collection.extractor.encode(photo_files[0])[None], []
    threads = [threading.Thread(target=lambda: found.append(collection.search_descriptors(query, 1)[0][0].id))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert found == [1, 1]


def test_stale_staged_files_are_removed_and_live_ones_kept(tmp_path):
    """Staged PNGs of a dead driver on this host, or another host's older than an hour, go; a live run's (even
    an old one) and another host's recent ones stay."""
    import os
    import socket
    import subprocess

    from activeindex import ingest

    exited = subprocess.Popen(["true"])
    exited.wait()  # its pid names a driver that is gone
    sha = "0" * 16
    names = {"live": f".{sha}~{ingest.run_tag()}.staged.png", "live_old": f".{sha}~{ingest.run_tag()}.staged.jpg",
             "dead": f".{sha}~{socket.gethostname()}~{exited.pid}~abcd.staged.png",
             "other_host": f".{sha}~elsewhere~1~abcd.staged.png",
             "old": f".{sha}~elsewhere~2~abcd.staged.png"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"png")
    os.utime(tmp_path / names["old"], (0, 0))
    os.utime(tmp_path / names["live_old"], (0, 0))
    assert ingest.remove_stale_staged(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["live"], names["live_old"], names["other_host"]])


def test_collections_of_different_codecs_releasing_one_photo_into_one_folder_each_keep_their_file(
        photo_files, tmp_path, training_npy):
    """Three codecs activate the same photo into one --out folder: no run replaces another's released file."""
    out, records = tmp_path / "published", []
    for factory in ("IVF4,PQ8x4", "IVF8,PQ8x4", "IVF2,PQ8x4"):
        col = Collection.create(tmp_path / factory.replace(",", "_"), factory, device="cpu")
        col.train(training_npy)
        records.append(col.activate(photo_files[:1], out, config=ActivationConfig(iterations=1)).records[0])
    assert len({r.activated_path for r in records}) == 3
    assert len({r.activated_sha256 for r in records}) == 3  # three codecs, three different activations
    for record in records:
        assert sha256_file(record.activated_path) == record.activated_sha256
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(r.activated_path).name for r in records)


def test_re_activating_a_removed_image_keeps_the_file_it_left(collection, photo_files, tmp_path):
    out = tmp_path / "out"
    first = collection.activate(photo_files[:1], out, config=ActivationConfig(iterations=1)).records[0]
    collection.remove([first.id])  # its released file stays where it is
    kept = Path(first.activated_path).read_bytes()
    second = collection.activate(photo_files[:1], out, config=ActivationConfig(iterations=2)).records[0]
    assert Path(first.activated_path).read_bytes() == kept
    assert second.activated_path != first.activated_path
    assert sha256_file(second.activated_path) == second.activated_sha256 != first.activated_sha256


def test_a_commit_killed_after_moving_its_files_leaves_no_unregistered_file(collection, photo_files, tmp_path):
    """A file moved into place under a note whose catalog row never came (a kill between the two) is deleted
    by the next commit; a noted name now holding other bytes (not that commit's file) is left alone."""
    out = tmp_path / "out"
    out.mkdir()
    orphan, foreign = out / "orphan.png", out / "foreign.png"
    orphan.write_bytes(b"what a killed commit moved in")
    foreign.write_bytes(b"someone's own file")
    collection.catalog.note_pending(str(orphan.resolve()), sha256_file(orphan))
    collection.catalog.note_pending(str(foreign.resolve()), "0" * 64)
    collection.activate(photo_files[:1], out, config=ActivationConfig(iterations=1))
    assert not orphan.exists() and foreign.read_bytes() == b"someone's own file"
    assert collection.catalog.pending() == []


def test_a_copied_collection_uses_and_deletes_only_its_own_files(collection, photo_files, tmp_path):
    """Files inside the collection's folder are recorded relative to it: a copy finds its own copies, and a
    takedown with file deletion in the copy leaves the original collection's released file alone."""
    inside = collection.root / "activated"
    record = collection.activate(photo_files[:1], inside, config=ActivationConfig(iterations=1)).records[0]
    collection.close()
    copy_root = tmp_path / "copy"
    shutil.copytree(collection.root, copy_root)
    copy = Collection.open(copy_root, device="cpu")
    [found] = copy.catalog.get([record.id]).values()
    assert found.activated_path == str((copy_root / "activated" / Path(record.activated_path).name).resolve())
    assert copy.search(str(found.activated_path), k=1)[0][0].activated_path == found.activated_path
    assert copy.remove([record.id], delete_files=True).deleted_files == [found.activated_path]
    assert Path(record.activated_path).is_file()  # the original collection's file
    copy.close()


def test_a_passive_reference_keeps_only_its_network_input_while_it_waits(photo_files, extractor):
    """Registering a reference holds the uint8 network input of each file, never the decoded image, and
    embeds it to exactly the descriptor the query path gives."""
    from activeindex.imageio import sha256_file as sha
    from activeindex.ingest import read_planned

    item = read_planned((str(photo_files[0]), sha(photo_files[0]), None), extractor.limits, extractor.preprocessing)
    assert item.image is None and item.network_input.dtype == torch.uint8
    assert min(item.network_input.shape[-2:]) == extractor.preprocessing.short_side
    assert item.shape == load_image(photo_files[0]).shape[:2]
    np.testing.assert_array_equal(extractor.encode_network_inputs([item.network_input])[0],
                                  extractor.encode(photo_files[0]))


def test_the_temp_file_of_a_killed_snapshot_is_removed_by_the_next_one(collection, photo_files):
    import os
    import subprocess

    exited = subprocess.Popen(["true"])
    exited.wait()  # its pid names a writer that is gone
    dead = collection.root / f".index.faiss.{exited.pid}.1.tmp"
    live = collection.root / f".index.faiss.{os.getpid()}.999.tmp"  # this process's: a snapshot in progress
    dead.write_bytes(b"a partial index")
    live.write_bytes(b"a partial index")
    collection.add(photo_files[:1])
    collection.snapshot()
    assert not dead.exists() and live.exists()
