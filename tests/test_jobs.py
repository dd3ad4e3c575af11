"""Activation jobs: the durable queue (`JobQueue`) on a real catalog file, and the service's jobs through a real
uvicorn server on loopback with its real worker process (real model, real faiss, real photos)."""
from __future__ import annotations

import io
import itertools
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from activeindex import ActivationConfig, Collection
from activeindex.catalog import Catalog
from activeindex.credentials import SigningMaterial, manifest_store, validation
from activeindex.errors import CorruptCollectionError, InvalidInputError, StorageFullError
from activeindex.faults import ENVIRONMENT
from activeindex.locking import FolderLock, LifetimeLock
from activeindex.service.jobs import RUNNER_LOCK, ActivationWorker
from activeindex.service.queue import JobQueue, JobSettings, UnknownJobError, WorkerBusy, job_error

from .conftest import TEST_FACTORY, TOKEN, free_port, serving
from .test_credentials import make_pki

AUTH = {"Authorization": f"Bearer {TOKEN}"}
# a real server whose jobs activate with 2 iterations (the default batch size), that waits only for images up to
# 40,000 pixels, and that gives requests 3 s to finish when stopped (as `activeindex serve` does); given a
# certificate chain, its key and their root, it signs (as `serve --c2pa-sign` does)
SERVE = """
import sys
import uvicorn
from activeindex import ActivationConfig, Collection
from activeindex.credentials import SigningMaterial
from activeindex.service import ServiceConfig, create_app
root, port, token, *pki = sys.argv[1:]
signing = SigningMaterial.load(pki[0], pki[1], trust_anchors=pki[2]) if pki else None
config = ServiceConfig(token=token, activation=ActivationConfig(iterations=2), sync_max_pixels=40_000,
                       signing=signing)
uvicorn.run(create_app(Collection.open(root, device="cpu"), config), host="127.0.0.1", port=int(port),
            log_level="warning", timeout_graceful_shutdown=3)
"""


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _start(root: Path, port: int | None = None, env: dict | None = None,
           signing: SigningMaterial | None = None) -> tuple[subprocess.Popen, str]:
    """The app with the settings above under a real uvicorn (signing with ``signing``), returned once /healthz
    answers."""
    port = port or free_port()
    pki = [signing.certificate_chain, signing.private_key, signing.trust_anchors] if signing else []
    return serving([sys.executable, "-c", SERVE, str(root), str(port), TOKEN, *map(str, pki)], port, env)


def _follow(url: str, job_id: int, timeout: float = 240) -> tuple[dict, list[tuple[str, int]]]:
    """Poll a job every 0.2 s until it is done or failed: (its last JSON, the (state, done) pairs seen)."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30, headers=AUTH).json()
        if not seen or seen[-1] != (job["state"], job["done"]):
            seen.append((job["state"], job["done"]))
        if job["state"] in ("done", "failed"):
            return job, seen
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished after {timeout} s: {seen}")


def _wait_running(url: str, job_id: int) -> None:
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30, headers=AUTH).json()["state"] == "queued":
        assert time.monotonic() < deadline, f"job {job_id} did not start"
        time.sleep(0.1)


def _new_photos(photos: list[np.ndarray], variant: int, n: int, side: int = 192) -> list[tuple[str, bytes]]:
    """``n`` real photos turned into images the collection has not seen (rotated by ``variant`` quarter turns)."""
    images = [np.ascontiguousarray(np.rot90(p, variant))[:side, :side] for p in photos[:n]]
    return [(f"new{variant}-{i}.png", _png(image)) for i, image in enumerate(images)]


@pytest.fixture(scope="module")
def served(tmp_path_factory, training_npy, photo_paths) -> tuple[Path, str]:
    """A trained collection holding the first two test photos (passive, ids 1, 2), served with jobs of 2 iterations."""
    root = tmp_path_factory.mktemp("jobs") / "col"
    collection = Collection.create(root, TEST_FACTORY, device="cpu")
    collection.train(training_npy)
    collection.add(photo_paths[:2])
    collection.close()
    process, url = _start(root)
    yield root, url
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture
def queue(tmp_path) -> JobQueue:
    Catalog(tmp_path / "catalog.sqlite", create=True).close()
    queue = JobQueue(tmp_path)
    yield queue
    queue.close()


# --- the queue ------------------------------------------------------------------------------------------------

def test_queue_submit_claim_progress_finish(queue, tmp_path):
    config = ActivationConfig(iterations=3)
    job = queue.submit([tmp_path / "a.png", tmp_path / "b.png"], tmp_path / "out", config)
    assert (job.state, job.done, job.total) == ("queued", 0, 2)
    assert job.inputs == [str(tmp_path / "a.png"), str(tmp_path / "b.png")] and job.out_dir == str(tmp_path / "out")
    assert ActivationConfig.from_dict(job.config) == config
    other = queue.submit([tmp_path / "c.png"], tmp_path / "out")
    assert queue.pending() == 2 and queue.pending_inputs() == {*job.inputs, *other.inputs}
    claimed = queue.claim_next("runner-1")
    assert claimed.id == job.id and claimed.state == "running" and claimed.runs == 1  # the oldest first
    queue.progress(job.id, 1, 2)
    assert queue.get(job.id).done == 1
    report = {"records": [], "skipped": [{"path": job.inputs[0], "reason": "already registered (id 1)"}],
              "failed": [{"path": job.inputs[1], "error": "b.png: not an image"}]}
    queue.finish(job.id, result=report)
    done = queue.get(job.id)
    assert (done.state, done.done, done.result, done.error) == ("done", 2, report, None)
    assert queue.claim_next("runner-1").id == other.id and queue.claim_next("runner-1") is None
    assert not queue.finish(other.id, error=StorageFullError("disk full"), runner="runner-2")  # not its job
    assert queue.finish(other.id, error=StorageFullError("disk full"), runner="runner-1")
    failed = queue.get(other.id)
    assert (failed.state, failed.error, failed.finished) == ("failed", "disk full", True)
    assert isinstance(job_error(failed), StorageFullError)  # the kind survives: the service answers 507
    assert queue.pending() == 0


def test_a_job_keeps_the_settings_of_the_server_that_queued_it(queue, tmp_path):
    """Signing material (by absolute path), memory budget and Ray address survive the queue; a job that a version
    without them queued reads None, and the queue that lacked the columns gains them."""
    signing = SigningMaterial(Path("chain.pem"), Path("key.pem"), "es384", "http://tsa.example", Path("root.pem"))
    settings = JobSettings(signing, 2e9, "auto")
    job = queue.submit([tmp_path / "a.png"], tmp_path / "out", settings=settings,
                       refused=[{"filename": "bad.png", "error": "bad.png: not an image"}])
    stored = queue.get(job.id).settings
    assert stored.signing.certificate_chain == Path("chain.pem").resolve() and stored.signing.private_key.is_absolute()
    assert stored.signing.trust_anchors == Path("root.pem").resolve() and stored.signing.algorithm == "es384"
    assert (stored.signing.timestamp_url, stored.memory, stored.ray) == ("http://tsa.example", 2e9, "auto")
    assert queue.get(job.id).refused == [{"filename": "bad.png", "error": "bad.png: not an image"}]
    assert queue.get(queue.submit([tmp_path / "b.png"], tmp_path).id).settings == JobSettings()
    old = tmp_path / "old"
    old.mkdir()
    Catalog(old / "catalog.sqlite", create=True).close()
    with sqlite3.connect(old / "catalog.sqlite") as db:  # a queue of a version that kept no settings
        db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT NOT NULL, created_at TEXT NOT NULL, "
                   "updated_at TEXT NOT NULL, total INTEGER NOT NULL, done INTEGER NOT NULL DEFAULT 0, "
                   "inputs TEXT NOT NULL, out_dir TEXT NOT NULL, config TEXT NOT NULL, result TEXT, error TEXT)")
        db.execute("INSERT INTO jobs VALUES (7, 'queued', 'now', 'now', 1, 0, '[\"a.png\"]', 'out', '{}', NULL, NULL)")
    db.close()
    reopened = JobQueue(old)
    assert (reopened.get(7).settings, reopened.get(7).refused) == (None, [])
    reopened.close()


def _write_job_ids(current) -> None:
    """Assign job ids to the shared value as fast as possible (the runner's ``current.value = job.id``)."""
    for job_id in itertools.cycle(range(1, 1000)):
        current.value = job_id


def test_a_runner_killed_while_it_writes_its_job_id_never_blocks_the_server(queue, tmp_path):
    """The server's watcher reads the job id its runner is working on, on the event loop: a runner killed by
    SIGKILL in the middle of writing it (20 times, at random moments) never leaves that read waiting."""
    worker = ActivationWorker(tmp_path, "sscd", "cpu")
    fork, rng = multiprocessing.get_context("fork"), np.random.default_rng(0)
    try:
        for _ in range(20):
            writer = fork.Process(target=_write_job_ids, args=(worker._current,), daemon=True)
            writer.start()
            time.sleep(rng.uniform(0.01, 0.05))
            os.kill(writer.pid, signal.SIGKILL)
            writer.join()
            read = threading.Thread(target=lambda: worker._current.value, daemon=True)  # a hung one is left behind
            read.start()
            read.join(2)
            assert not read.is_alive(), "reading the runner's job id hangs"
    finally:
        worker.queue.close()


def test_queue_errors_are_one_line(queue, tmp_path):
    with pytest.raises(UnknownJobError, match="no job with id 999"):
        queue.get(999)
    with pytest.raises(InvalidInputError, match="at least one image"):
        queue.submit([], tmp_path)
    queue.submit([tmp_path / "a.png"], tmp_path)
    with pytest.raises(WorkerBusy, match="1 activation jobs are already queued"):
        queue.submit([tmp_path / "b.png"], tmp_path, max_pending=1)
    with pytest.raises(CorruptCollectionError, match="missing"):
        JobQueue(tmp_path / "nowhere")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "catalog.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(CorruptCollectionError, match="job queue"):
        JobQueue(damaged)


def test_a_running_job_is_queued_again_only_by_the_holder_of_the_runner_lock(queue, tmp_path):
    job = queue.submit([tmp_path / "a.png"], tmp_path / "out")
    queue.claim_next("runner-1")
    queue.progress(job.id, 0, 1)
    queue.close()  # the process that ran it died
    reopened, lock = JobQueue(tmp_path), LifetimeLock(tmp_path / RUNNER_LOCK)
    try:
        assert reopened.get(job.id).state == "running"
        with pytest.raises(RuntimeError, match="runner lock"):
            reopened.requeue_running(lock)  # not held: another runner may still work on it
        assert lock.acquire() and not LifetimeLock(tmp_path / RUNNER_LOCK).acquire()  # one holder at a time
        assert reopened.requeue_running(lock) == [job.id]
        again = reopened.get(job.id)
        assert again.state == "queued" and again.inputs == job.inputs and again.config == job.config
        assert reopened.claim_next("runner-2").runs == 2
    finally:
        lock.release()
        reopened.close()


# --- jobs over HTTP ---------------------------------------------------------------------------------------------

def test_a_job_of_three_photos_completes_with_progress(served, photo_paths, small_photos):
    root, url = served
    files = [("images", (name, data)) for name, data in _new_photos(small_photos, 1, 2)]
    files.append(("images", ("known.png", photo_paths[0].read_bytes())))  # registered already (id 1)
    assert httpx.post(f"{url}/v1/jobs", files=files, timeout=60).status_code == 401
    response = httpx.post(f"{url}/v1/jobs", files=files, headers=AUTH, timeout=60)
    assert response.status_code == 202
    accepted = response.json()
    assert accepted == {"id": accepted["id"], "state": "queued", "total": 3, "done": 0, "refused": []}
    assert response.headers["Location"] == f"/v1/jobs/{accepted['id']}"
    job, seen = _follow(url, accepted["id"])
    assert job["state"] == "done" and job["done"] == job["total"] == 3 and job["error"] is None
    assert seen[-1] == ("done", 3) and [done for _, done in seen] == sorted(done for _, done in seen)
    assert sorted(r["original_filename"] for r in job["records"]) == ["new1-0.png", "new1-1.png"]
    assert all(r["kind"] == "active" and r["psnr"] > 30 and "original_path" not in r for r in job["records"])
    assert job["skipped"] == [{"filename": "known.png", "reason": "already registered (id 1)"}]
    assert job["failed"] == [] and job["created_at"] <= job["updated_at"]
    image = httpx.get(f"{url}/v1/images/{job['records'][0]['id']}/activated", timeout=30, headers=AUTH)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    uploads = {p.name for p in (root / "uploads").rglob("*.png")}
    assert {"new1-0.png", "new1-1.png"} <= uploads and "known.png" not in uploads  # the skipped one was not kept


def test_a_job_reports_progress_before_it_is_done(served, small_photos):
    """A job of 4 images at the default batch size (16): ``done`` moves through the values between 0 and 4."""
    _, url = served
    files = [("images", item) for item in _new_photos(small_photos, 1, 4, side=160)]
    job_id = httpx.post(f"{url}/v1/jobs", files=files, headers=AUTH, timeout=60).json()["id"]
    job, seen = _follow(url, job_id)
    assert job["state"] == "done" and len(job["records"]) == 4
    assert any(0 < done < 4 for _, done in seen), seen


def test_a_job_holding_the_same_upload_twice_lists_the_second_as_a_duplicate(served, small_photos):
    _, url = served
    [item] = _new_photos(small_photos[4:], 2, 1)
    job_id = httpx.post(f"{url}/v1/jobs", files=[("images", item), ("images", item)], headers=AUTH,
                        timeout=60).json()["id"]
    job, _ = _follow(url, job_id)
    assert job["state"] == "done" and job["total"] == job["done"] == 2
    assert [r["original_filename"] for r in job["records"]] == [item[0]]
    assert job["skipped"] == [{"filename": item[0], "reason": "duplicate of an earlier file in this run"}]


def test_searches_answer_while_a_job_runs(served, photo_paths, small_photos):
    root, url = served
    files = [("images", item) for item in _new_photos(small_photos, 2, 3)]
    job_id = httpx.post(f"{url}/v1/jobs", files=files, headers=AUTH, timeout=60).json()["id"]
    _wait_running(url, job_id)
    query = photo_paths[1].read_bytes()
    latencies = []
    with FolderLock(root / ".lock").held(timeout=10):  # the job cannot commit, so it runs while we search
        for _ in range(5):
            start = time.monotonic()
            response = httpx.post(f"{url}/v1/search", files={"images": ("q.png", query)}, timeout=60)
            latencies.append(time.monotonic() - start)
            assert response.status_code == 200 and response.json()["results"][0]["matches"][0]["id"] == 2
        assert httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30, headers=AUTH).json()["state"] == "running"
    print(f"search latencies while the job ran: {', '.join(f'{s:.2f}' for s in latencies)} s")
    job, _ = _follow(url, job_id)
    assert job["state"] == "done" and len(job["records"]) == 3


def test_a_large_activation_is_answered_202_and_becomes_a_job(served, small_photos):
    _, url = served
    [(name, data)] = _new_photos(small_photos[2:], 3, 1, side=256)  # 192 x 256 > the server's 40,000 pixels
    response = httpx.post(f"{url}/v1/activate", files={"image": (name, data)}, headers=AUTH, timeout=60)
    assert response.status_code == 202 and response.headers["Location"] == f"/v1/jobs/{response.json()['id']}"
    job, _ = _follow(url, response.json()["id"])
    assert job["state"] == "done" and [r["original_filename"] for r in job["records"]] == [name]


def _new_collection(root: Path, training_npy: Path) -> Path:
    collection = Collection.create(root, TEST_FACTORY, device="cpu")
    collection.train(training_npy)
    collection.close()
    return root


def _runner_of(server: subprocess.Popen) -> psutil.Process:
    """The server's job runner process."""
    deadline = time.monotonic() + 60
    while not (runners := [c for c in psutil.Process(server.pid).children() if "spawn_main" in " ".join(c.cmdline())]):
        assert time.monotonic() < deadline, "no job runner started"
        time.sleep(0.1)
    return runners[0]


def test_a_job_killed_after_a_commit_resumes_and_lists_the_records_of_both_runs(tmp_path, training_npy,
                                                                                 small_photos):
    """kill -9 of the server right after the job's first commit: its runner dies with it; the restarted server
    resumes the job, which lists both images (the first one registered by the killed run)."""
    root = _new_collection(tmp_path / "col", training_npy)
    process, url = _start(root, env={ENVIRONMENT: f"after_commit:{tmp_path}"})
    port = int(url.rsplit(":", 1)[1])
    try:
        files = [("images", item) for item in _new_photos(small_photos, 0, 2)]
        job_id = httpx.post(f"{url}/v1/jobs", files=files, headers=AUTH, timeout=60).json()["id"]
        while not (tmp_path / "after_commit").exists():  # the first image is committed; the runner waits there
            assert process.poll() is None
            time.sleep(0.05)
        runner = psutil.Process(int((tmp_path / "after_commit").read_text()))
        process.send_signal(signal.SIGKILL)
        process.wait()
        runner.wait(timeout=10)  # it dies with its server (no lingering runner beside the next one)
        process, url = _start(root, port)  # its runner queues the job again, and runs it
        job, _ = _follow(url, job_id)
        assert job["state"] == "done" and sorted(r["original_filename"] for r in job["records"]) == [
            "new0-0.png", "new0-1.png"] and job["skipped"] == []
        queue = JobQueue(root)
        assert queue.get(job_id).runs == 2
        queue.close()
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)
    collection = Collection.open(root, device="cpu")
    assert collection.catalog.count() == collection.indexed_images == 2
    collection.close()


def test_two_servers_run_every_job_once_and_answer_every_request(tmp_path, training_npy, small_photos):
    """Jobs on both servers: one runner runs them all, each once, each result lists its records; a server stopped
    while a synchronous activation waits exits within seconds, and the other server's runner finishes the job."""
    root = _new_collection(tmp_path / "col", training_npy)
    (a, url_a), (b, url_b) = _start(root), _start(root)
    try:
        jobs = [httpx.post(f"{url}/v1/jobs", files=[("images", item) for item in _new_photos(small_photos, v, 2)],
                           headers=AUTH, timeout=60).json()["id"] for url, v in ((url_a, 0), (url_b, 1), (url_b, 2))]
        [(name, data)] = _new_photos(small_photos[3:], 3, 1)
        synchronous = httpx.post(f"{url_a}/v1/activate", files={"image": (name, data)}, headers=AUTH, timeout=300)
        assert synchronous.status_code == 200 and synchronous.headers["content-type"] == "image/png"
        for job_id in jobs:
            job, _ = _follow(url_b, job_id)
            assert job["state"] == "done" and len(job["records"]) == 2 and job["skipped"] == [], job
        queue = JobQueue(root)
        assert [queue.get(job_id).runs for job_id in jobs] == [1, 1, 1]

        [(name, data)] = _new_photos(small_photos[4:], 3, 1)
        with FolderLock(root / ".lock").held(timeout=10), ThreadPoolExecutor(1) as pool:  # no commit meanwhile
            waiting = pool.submit(httpx.post, f"{url_a}/v1/activate", files={"image": (name, data)}, headers=AUTH,
                                  timeout=120)
            while not queue.counts()["running"]:
                time.sleep(0.05)
            started = time.monotonic()
            a.terminate()  # SIGTERM
            a.wait(timeout=30)
            stopped_in = time.monotonic() - started
            with pytest.raises(httpx.HTTPError):  # cut off, not left hanging
                waiting.result().raise_for_status()
        assert stopped_in < 10, f"the server took {stopped_in:.1f} s to stop"
        job, _ = _follow(url_b, queue.latest().id)  # b's runner (or the one it stood in for) finishes it
        assert job["state"] == "done" and len(job["records"]) == 1
        queue.close()
    finally:
        for process in (a, b):
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=60)
    collection = Collection.open(root, device="cpu")
    shas = [r.original_sha256 for r in collection.catalog.get(collection.catalog.ids().tolist()).values()]
    assert collection.catalog.count() == collection.indexed_images == len(set(shas)) == 8
    collection.close()


def _submit(url: str, images: list[tuple[str, bytes]]) -> int:
    """Queue a job of these images; its id."""
    response = httpx.post(f"{url}/v1/jobs", files=[("images", item) for item in images], headers=AUTH, timeout=60)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _released_by(root: Path, job: dict) -> list[Path]:
    """The released files of a finished job's records."""
    return [root / "activated" / record["activated_filename"] for record in job["records"]]


def test_a_job_is_signed_as_its_server_was_started_whichever_runner_runs_it(tmp_path, training_npy, small_photos):
    """Two servers on one collection, only the second started with signing, the first one's runner holding the
    runner lock: the jobs queued to the second come out signed (valid against the test root), the first's not."""
    root = _new_collection(tmp_path / "col", training_npy)
    pki = make_pki(tmp_path / "pki")
    plain, url_plain = _start(root)
    servers, submitted = [plain], []
    try:
        submitted.append((url_plain, _submit(url_plain, _new_photos(small_photos, 0, 1))))
        _follow(*submitted[0])  # its runner holds the runner lock now; the next server's stands by
        signing, url_signing = _start(root, signing=pki)
        servers.append(signing)
        submitted += [(url_signing, _submit(url_signing, _new_photos(small_photos, 1, 1))),
                      (url_plain, _submit(url_plain, _new_photos(small_photos, 2, 1)))]
        jobs = [_follow(url, job_id)[0] for url, job_id in submitted]
    finally:
        for process in servers:
            process.terminate()
            process.wait(timeout=60)
    assert all(job["state"] == "done" and len(job["records"]) == 1 for job in jobs), jobs
    [before], [signed], [after] = (_released_by(root, job) for job in jobs)
    assert manifest_store(signed) is not None and jobs[1]["records"][0]["manifest_id"]
    assert validation(signed, pki.trust_anchors)["validation_state"] in ("Valid", "Trusted")
    assert manifest_store(before) is None and manifest_store(after) is None
    assert jobs[0]["records"][0]["manifest_id"] is None and jobs[2]["records"][0]["manifest_id"] is None


def test_job_ids_are_random_and_the_queue_keeps_its_order(queue, tmp_path):
    """Nobody can list the jobs by counting: ids are drawn at random (53 bits, exact in JavaScript)."""
    ids = [queue.submit([tmp_path / f"{i}.png"], tmp_path).id for i in range(6)]
    assert len(set(ids)) == 6 and all(1 <= i < 2**53 for i in ids)
    assert all(abs(a - b) > 1 for a, b in itertools.pairwise(ids))  # not a sequence
    assert max(ids) > 2**40  # drawn from the whole range (all six below 2**40: odds 2**-78)
    assert [queue.claim_next("r").id for _ in ids] == ids and queue.latest().id == ids[-1]  # oldest first
