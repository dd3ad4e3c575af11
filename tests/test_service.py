"""The HTTP service through a real uvicorn server on loopback, and the web page in headless Chromium."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
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

from activeindex import Collection
from activeindex.calibrate import _scores
from activeindex.edits import apply_edit
from activeindex.imageio import load_image
from activeindex.locking import FolderLock
from activeindex.service.queue import JobQueue

from .conftest import TEST_FACTORY, TOKEN, free_port, served_collection, serving, start_server, stop_server

READ = {"Authorization": f"Bearer {TOKEN}"}  # reads are private by default


@pytest.fixture(scope="module")
def served(tmp_path_factory, training_npy, small_photos):
    root = tmp_path_factory.mktemp("served") / "col"
    paths = served_collection(root, tmp_path_factory.mktemp("originals"), small_photos, training_npy)
    process, url = start_server(root)
    yield root, url, paths
    stop_server(process)


def _png(image: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_search_finds_the_source_of_an_edited_copy(served):
    root, url, _ = served
    activated = load_image(root / "activated" / "photo1.png")
    copy = _png(apply_edit("hue_0.2", activated), "JPEG", quality=80)
    response = httpx.post(f"{url}/v1/search", files={"images": ("suspect.jpg", copy, "image/jpeg")},
                          data={"k": "3"}, timeout=60)
    assert response.status_code == 200
    result = response.json()["results"][0]
    assert result["filename"] == "suspect.jpg" and result["is_copy"] is True
    assert result["matches"][0]["id"] == 2 and result["matches"][0]["filename"] == "photo1.png"
    assert len(result["matches"]) + result["below_threshold"] == 3  # without the token: the others counted


def test_unrelated_image_is_not_a_copy(served):
    _, url, _ = served
    noise = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    result = httpx.post(f"{url}/v1/search", files={"images": ("noise.png", _png(noise))}, timeout=60).json()
    assert result["results"][0]["is_copy"] is False


def test_one_verdict_from_every_interface(served, small_photos, tmp_path):
    """The same images get the same verdict from the Python API, the CLI, /v1/search, C2PA byContent and the
    rule calibrate scores with (decision.py)."""
    root, url, _ = served
    activated = load_image(root / "activated" / "photo1.png")
    queries = {"copy.png": _png(apply_edit("brightness_2.0", activated)),
               "turned.png": _png(apply_edit("rotation_25", activated)), "cropped.png": _png(
                   apply_edit("center_crop_0.5", load_image(root / "activated" / "photo0.png"))),
               "unrelated.png": _png(small_photos[5])}
    paths = [tmp_path / name for name in queries]
    for path, data in zip(paths, queries.values()):
        path.write_bytes(data)
    collection = Collection.open(root, device="cpu")
    api = collection.verdicts(paths, k=5)
    scores = _scores(collection, [(p, None) for p in paths], {"unedited": ("none",)}, 0, "test", False)["unedited"]
    command = [sys.executable, "-m", "activeindex", "search", str(root), *map(str, paths), "--json", "-q"]
    cli = json.loads(subprocess.run(command, capture_output=True, text=True, timeout=600).stdout)
    web = httpx.post(f"{url}/v1/search", files=[("images", (n, d)) for n, d in queries.items()], headers=READ,
                     timeout=120).json()["results"]
    for verdict, (score, _), by_cli, by_web, data in zip(api, scores, cli, web, queries.values()):
        content = httpx.post(f"{url}/c2pa/v1/matches/byContent", content=data, headers={"Content-Type": "image/png"},
                             timeout=120).json()["matches"]
        expected = (verdict.is_copy, verdict.match.id)
        assert (by_cli["is_copy"], by_cli["matches"][0]["id"]) == expected
        assert (by_web["is_copy"], by_web["matches"][0]["id"]) == expected
        assert score == pytest.approx(verdict.match.similarity, abs=1e-5)
        assert (score >= collection.threshold) == verdict.is_copy
        assert [m["manifestId"].rsplit(":", 1)[1] for m in content[:1]] == ([str(verdict.match.id)]
                                                                           if verdict.is_copy else [])
    assert api[0].is_copy and not api[-1].is_copy
    collection.close()


def test_a_search_without_the_token_names_only_the_copies(served, small_photos):
    """Anonymous: the candidates below the threshold are only counted, never named; k is capped. With the
    token: every candidate, as before."""
    root, url, _ = served
    unrelated = {"images": ("unrelated.png", _png(small_photos[5]))}
    public = httpx.post(f"{url}/v1/search", files=unrelated, data={"k": "3"}, timeout=120)
    [result] = public.json()["results"]
    assert (result["is_copy"], result["matches"], result["below_threshold"]) == (False, [], 3)
    assert "photo" not in public.text and '"id"' not in public.text  # no registered file is named
    private = httpx.post(f"{url}/v1/search", files=unrelated, data={"k": "3"}, headers=READ, timeout=120).json()
    assert [m["filename"] for m in private["results"][0]["matches"]] and "below_threshold" not in private["results"][0]
    copy = {"images": ("copy.png", _png(apply_edit("hue_0.2", load_image(root / "activated" / "photo1.png"))))}
    [shown] = httpx.post(f"{url}/v1/search", files=copy, data={"k": "3"}, timeout=120).json()["results"]
    assert shown["is_copy"] and shown["matches"][0]["filename"] == "photo1.png"
    assert all(m["similarity"] >= shown["threshold"] for m in shown["matches"])
    assert shown["below_threshold"] == 3 - len(shown["matches"])
    capped = httpx.post(f"{url}/v1/search", files=copy, data={"k": "11"}, timeout=120)
    assert capped.status_code == 422 and "between 1 and 10 without the token" in capped.json()["detail"]
    assert httpx.post(f"{url}/v1/search", files=copy, data={"k": "11"}, headers=READ, timeout=120).status_code == 200
    wrong = httpx.post(f"{url}/v1/search", files=copy, headers={"Authorization": "Bearer nope"}, timeout=120)
    assert wrong.status_code == 401


def test_evidence_of_a_copy_and_its_overlay(served, small_photos):
    """?evidence=1: where a crop sits in the original (corners within 3 % of the true box), the original's
    size for drawing it; the overlay PNG behind the token; an image that does not align is a 422 with why."""
    root, url, _ = served
    activated = load_image(root / "activated" / "photo1.png")
    h, w = activated.shape[:2]
    box = np.array([[w // 6, h // 8], [w - w // 6, h // 8], [w - w // 6, h - h // 8], [w // 6, h - h // 8]])
    crop = _png(activated[h // 8:h - h // 8, w // 6:w - w // 6])
    response = httpx.post(f"{url}/v1/search", params={"evidence": "1"}, files={"images": ("crop.png", crop)},
                          timeout=120)
    [result] = response.json()["results"]
    first = result["matches"][0]
    assert result["is_copy"] and first["id"] == 2 and first["evidence_reason"] is None
    assert (first["width"], first["height"]) == (w, h)
    assert np.abs(np.array(first["evidence"]["corners"]) - box).max() <= 0.03 * max(w, h)
    plain = httpx.post(f"{url}/v1/search", files={"images": ("crop.png", crop)}, timeout=120).json()["results"][0]
    assert "evidence" not in plain["matches"][0]  # only when asked for
    overlay = f"{url}/v1/images/2/overlay"
    assert httpx.post(overlay, files={"image": ("crop.png", crop)}, timeout=120).status_code == 401
    drawn = httpx.post(overlay, files={"image": ("crop.png", crop)}, headers=READ, timeout=120)
    assert drawn.status_code == 200 and drawn.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(drawn.content)).size[1] == 720
    noise = np.random.default_rng(5).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    refused = httpx.post(overlay, files={"image": ("noise.png", _png(noise))}, headers=READ, timeout=120)
    assert refused.status_code == 422 and "does not align with image 2" in refused.json()["detail"]


def test_activate_round_trip_and_records(served, small_photos):
    root, url, _ = served
    upload = _png(small_photos[4])
    denied = httpx.post(f"{url}/v1/activate", files={"image": ("new.png", upload)}, timeout=60)
    assert denied.status_code == 401 and "token" in denied.json()["detail"]
    response = httpx.post(f"{url}/v1/activate", files={"image": ("../../etc/new photo.png", upload)},
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image_id = int(response.headers["X-Image-Id"])
    assert float(response.headers["X-PSNR"]) > 38
    activated = np.asarray(Image.open(io.BytesIO(response.content)))
    assert activated.shape == small_photos[4].shape and not np.array_equal(activated, small_photos[4])
    record = httpx.get(f"{url}/v1/images/{image_id}", headers=READ).json()
    assert record["kind"] == "active" and record["original_filename"].endswith("new_photo.png")
    assert "/" not in record["original_filename"] and "original_path" not in record
    assert not (root.parent.parent / "etc").exists()  # the client's path was never used
    assert httpx.get(f"{url}/v1/images/{image_id}/activated", headers=READ).content == response.content
    again = httpx.post(f"{url}/v1/activate", files={"image": ("again.png", upload)},
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert again.headers["X-Image-Id"] == str(image_id)  # idempotent: registered once
    status = httpx.get(f"{url}/v1/status").json()
    assert status["active"] == 3 and status["factory"] == TEST_FACTORY and len(status["codec_fingerprint"]) == 64


def test_activation_settings_per_request(served, small_photos):
    """A preset and a PSNR floor as form fields: the floor is met and the scaling it chose is reported."""
    _, url, _ = served
    token = {"Authorization": f"Bearer {TOKEN}"}
    upload = {"image": ("floor.png", _png(np.ascontiguousarray(small_photos[2][::-1])))}
    response = httpx.post(f"{url}/v1/activate", files=upload, data={"preset": "default", "psnr": "45"},
                          headers=token, timeout=300)
    assert response.status_code == 200, response.text
    assert float(response.headers["X-PSNR"]) >= 45 and float(response.headers["X-Scaling"]) > 0
    for field, value in [("preset", "fastest"), ("psnr", "5"), ("psnr", "loud")]:
        refused = httpx.post(f"{url}/v1/jobs", files={"images": upload["image"]}, data={field: value},
                             headers=token, timeout=60)
        assert refused.status_code == 422 and field in refused.json()["detail"]


def test_bad_input_gets_clear_json_errors(served):
    _, url, _ = served
    bad = httpx.post(f"{url}/v1/search", files={"images": ("cat.jpg", b"this is not a jpeg")}, timeout=30)
    assert bad.status_code == 400 and "cat.jpg: not an image" in bad.json()["detail"]
    huge = httpx.post(f"{url}/v1/search", files={"images": ("big.png", b"0" * (21 * 1024 * 1024))}, timeout=60)
    assert huge.status_code == 413
    bomb = _png(np.zeros((10, 10, 3), np.uint8))
    bomb_image = Image.new("L", (12000, 12000))
    buffer = io.BytesIO()
    bomb_image.save(buffer, format="PNG")
    for path, files in [("/v1/search", {"images": ("bomb.png", buffer.getvalue())}),
                        ("/v1/jobs", {"images": ("bomb.png", buffer.getvalue())}),
                        ("/v1/activate", {"image": ("bomb.png", buffer.getvalue())})]:  # 144 MP: PIL will not open it
        response = httpx.post(f"{url}{path}", files=files, headers=READ, timeout=60)
        assert response.status_code == 413, (path, response.text)
        assert response.json()["detail"].startswith("bomb.png: far more pixels than the limit"), path
    response = httpx.post(f"{url}/c2pa/v1/matches/byContent", content=buffer.getvalue(),
                          headers={"Content-Type": "image/png"}, timeout=60)
    assert response.status_code == 413 and "pixels" in response.json()["detail"]
    tiny = httpx.post(f"{url}/v1/search", files={"images": ("tiny.png", bomb)}, timeout=30)
    assert tiny.status_code == 400 and "minimum side" in tiny.json()["detail"]
    assert httpx.get(f"{url}/v1/images/999", headers=READ).status_code == 404
    assert httpx.get(f"{url}/v1/images/3/activated", headers=READ).status_code == 404  # passive: no activated file
    assert httpx.post(f"{url}/v1/search", data={"k": "3"}, timeout=30).status_code == 422


def test_concurrent_searches(served, small_photos):
    _, url, _ = served
    queries = [_png(apply_edit("jpeg_50", small_photos[i % 4])) for i in range(12)]

    def one(data: bytes) -> int:  # with the token: the nearest image whether or not it is called a copy
        response = httpx.post(f"{url}/v1/search", files={"images": ("q.png", data)}, headers=READ, timeout=120)
        return response.json()["results"][0]["matches"][0]["id"] if response.status_code == 200 else -1

    with ThreadPoolExecutor(6) as pool:
        found = list(pool.map(one, queries))
    assert found == [[1, 2, 3, 4][i % 4] for i in range(12)]


def test_openapi_docs(served):
    _, url, _ = served
    spec = httpx.get(f"{url}/openapi.json").json()
    paths = {"/v1/search", "/v1/activate", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/status", "/healthz"}
    assert paths <= set(spec["paths"])
    assert httpx.get(f"{url}/docs").status_code == 200


def test_refuses_writes_without_token_off_loopback(served, tmp_path):
    root, _, _ = served
    env = {k: v for k, v in os.environ.items() if k != "ACTIVEINDEX_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "activeindex", "serve", str(root), "--host", "0.0.0.0", "-q"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1 and "without a token" in result.stderr


def test_killed_server_loses_no_registered_image(tmp_path, training_npy, small_photos):
    root = tmp_path / "col"
    collection = Collection.create(root, TEST_FACTORY, device="cpu")
    collection.train(training_npy)
    collection.close()
    process, url = start_server(root)
    response = httpx.post(f"{url}/v1/activate", files={"image": ("a.png", _png(small_photos[5]))},
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300)
    assert response.status_code == 200
    process.send_signal(signal.SIGKILL)
    process.wait()
    reopened = Collection.open(root)
    assert reopened.catalog.count() == reopened.indexed_images == 1


def _big_jpeg(side: int = 8000) -> bytes:
    """A smooth side x side photo-like JPEG: large when decoded (side^2 pixels), small on the wire."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    image = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, 255 - ramp) / 2,
                      np.full((side, side), 128, np.float32)], axis=2).astype(np.uint8)
    return _png(image, "JPEG", quality=60)


def _rss(pid: int) -> int:
    """Resident memory of a process and its children (the activation worker), in bytes."""
    process = psutil.Process(pid)
    return process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))


def _peak_rss(pid: int, request) -> tuple[int, object]:
    """(peak resident memory of the process and its children in bytes while `request()` runs, its result)."""
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = request()
    finally:
        done.set()
        sampler.join()
    return peak[0], result


def test_memory_is_bounded_by_the_request_pixel_limit(served):
    """8 x 64 MP JPEGs (the reviewer's 8 GB request) are refused from their headers; one is served in bounds."""
    root, url, _ = served
    pid = next(c.pid for c in psutil.Process().children() if str(root) in " ".join(c.cmdline()))
    big = _big_jpeg()
    baseline = _rss(pid)
    files = [("images", (f"big{i}.jpg", big, "image/jpeg")) for i in range(8)]
    peak, response = _peak_rss(pid, lambda: httpx.post(f"{url}/v1/search", files=files, timeout=120))
    assert response.status_code == 413 and "pixels" in response.json()["detail"]
    assert peak - baseline < 200 * 2**20, f"refused request grew the server by {(peak - baseline) / 2**20:.0f} MB"
    peak, response = _peak_rss(pid, lambda: httpx.post(f"{url}/v1/search", files=files[:1], timeout=300))
    assert response.status_code == 200
    growth = (peak - baseline) / 2**20
    print(f"one 64 MP query: server peak RSS +{growth:.0f} MB over {baseline / 2**20:.0f} MB")
    assert growth < 900, f"one 64 MP query grew the server by {growth:.0f} MB (docs/service.md states < 0.9 GB)"


def test_requests_are_limited_before_work(served):
    _, url, _ = served
    # a declared 200 MB body is refused from its Content-Length, before the body is sent
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(f"POST /v1/search HTTP/1.1\r\nHost: {host}\r\nContent-Length: {200 * 2**20}\r\n"
                    "Content-Type: multipart/form-data; boundary=x\r\n\r\n--x\r\n".encode())
        assert raw.recv(200).startswith(b"HTTP/1.1 413")
    # no token: 401 before an activation's (large) body is read
    start = time.monotonic()
    denied = httpx.post(f"{url}/v1/activate", files={"image": ("a.png", b"0" * (15 * 2**20))}, timeout=60)
    assert denied.status_code == 401 and time.monotonic() - start < 10
    token = {"Authorization": f"Bearer {TOKEN}"}
    two = httpx.post(f"{url}/v1/activate", headers=token, timeout=60,
                     files=[("image", ("a.png", b"1")), ("image", ("b.png", b"2"))])
    assert two.status_code == 422 and "exactly one file" in two.json()["detail"]
    not_a_file = httpx.post(f"{url}/v1/search", data={"images": "x" * 150_000}, timeout=60)
    assert not_a_file.status_code == 422 and len(not_a_file.text) < 300  # the upload is not echoed back
    assert httpx.post(f"{url}/v1/search", data={"k": "0"}, files={"images": ("q.png", b"1")},
                      timeout=30).status_code == 422


def test_ids_hosts_and_missing_files_get_clear_answers(served):
    root, url, _ = served
    for suffix in ("", "/activated", "/thumbnail"):
        for image_id in ("99999999999999999999", "0", "-3"):
            response = httpx.get(f"{url}/v1/images/{image_id}{suffix}", timeout=30, headers=READ)
            assert response.status_code == 422 and "detail" in response.json()
    assert httpx.get(f"{url}/v1/status", headers={"Host": "evil.example"}, timeout=30).status_code == 400
    activated = root / "activated" / "photo0.png"
    hidden = activated.with_name("hidden.tmp")
    activated.rename(hidden)
    try:
        response = httpx.get(f"{url}/v1/images/1/activated", timeout=30, headers=READ)
        assert response.status_code == 404 and "missing on the server" in response.json()["detail"]
    finally:
        hidden.rename(activated)


def test_non_ascii_names_survive(served, small_photos):
    _, url, _ = served
    response = httpx.post(f"{url}/v1/search", files={"images": ("café 東京.png", _png(small_photos[0]))}, timeout=60)
    assert response.json()["results"][0]["filename"] == "café_東京.png"


def test_docs_work_offline(served):
    _, url, _ = served
    page = httpx.get(f"{url}/docs", timeout=30).text
    assert "/docs-assets/swagger-ui-bundle.js" in page and "cdn" not in page
    assert httpx.get(f"{url}/docs-assets/swagger-ui-bundle.js", timeout=30).status_code == 200
    spec = httpx.get(f"{url}/openapi.json", timeout=30).json()
    activate = spec["paths"]["/v1/activate"]["post"]
    assert {"200", "202", "400", "401", "413", "503"} <= set(activate["responses"])
    assert "Location" in activate["responses"]["202"]["headers"]
    assert {"202", "401", "413", "503"} <= set(spec["paths"]["/v1/jobs"]["post"]["responses"])
    assert "image/png" in activate["responses"]["200"]["content"]
    assert "multipart/form-data" in activate["requestBody"]["content"]


def test_full_queues_answer_503_with_retry_after(served):
    from fastapi.testclient import TestClient

    from activeindex.service import ServiceConfig, create_app

    root, _, _ = served
    collection = Collection.open(root, device="cpu")
    app = create_app(collection, ServiceConfig(max_pending_searches=0, allowed_hosts=("testserver",)))
    with TestClient(app) as client:
        response = client.post("/v1/search", files={"images": ("q.png", b"1")})
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    app = create_app(collection, ServiceConfig(token=TOKEN, max_pending_activations=0, allowed_hosts=("testserver",)))
    upload = _png(np.asarray(Image.open(root / "activated" / "photo0.png"))[:, ::-1])  # new bytes
    with TestClient(app) as client:
        response = client.post("/v1/jobs", files={"images": ("waiting.png", upload)},
                               headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 503 and "already queued" in response.json()["detail"]
    assert "Retry-After" in response.headers
    assert not list((root / "uploads").rglob("waiting.png"))  # the upload was not kept
    collection.close()


def test_job_endpoints_answer_clear_errors(served):
    _, url, _ = served
    token = {"Authorization": f"Bearer {TOKEN}"}
    missing = httpx.get(f"{url}/v1/jobs/999999", timeout=30, headers=READ)
    assert missing.status_code == 404 and missing.json()["detail"] == "no job with id 999999"
    assert httpx.get(f"{url}/v1/jobs/0", timeout=30, headers=READ).status_code == 422
    assert httpx.post(f"{url}/v1/jobs", files={"images": ("a.png", b"1")}, timeout=30).status_code == 401
    none = httpx.post(f"{url}/v1/jobs", data={"k": "1"}, headers=token, timeout=30)
    assert none.status_code == 422 and "images" in none.json()["detail"]
    many = httpx.post(f"{url}/v1/jobs", files=[("images", (f"{i}.png", b"1")) for i in range(17)], headers=token,
                      timeout=30)
    assert many.status_code == 422 and "at most 16 images" in many.json()["detail"]  # the schema's maxItems
    bad = httpx.post(f"{url}/v1/jobs", files={"images": ("notes.txt", b"not an image")}, headers=token, timeout=30)
    assert bad.status_code == 400 and "notes.txt: not an image" in bad.json()["detail"]


def test_openapi_schema_holds_under_property_based_testing(tmp_path, training_npy, small_photos):
    """Schemathesis (bounded, seeded) finds no server error and no response off the published schema.

    `positive_data_acceptance` is left out: a schema cannot say "these bytes must be a decodable image",
    so schemathesis's random bytes are rightly answered 400. It runs on a collection of its own: with the token
    it deletes images and their activated files.
    """
    (tmp_path / "originals").mkdir()
    served_collection(tmp_path / "col", tmp_path / "originals", small_photos, training_npy)
    process, url = start_server(tmp_path / "col")
    result = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/openapi.json", "--checks", "all",
         "--exclude-checks", "positive_data_acceptance", "--header", f"Authorization: Bearer {TOKEN}",
         "--max-examples", "15", "--workers", "1", "--seed", "0", "--phases", "examples,coverage,fuzzing"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)  # its .schemathesis/ cache stays out of the repo
    stop_server(process)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "passed" in result.stdout and "failed" not in result.stdout.split("SUMMARY")[-1]


def test_a_killed_activation_worker_is_a_503_and_the_next_activation_works(served, small_photos):
    root, url, _ = served
    server = next(c for c in psutil.Process().children() if str(root) in " ".join(c.cmdline()))
    [runner] = [c for c in server.children() if "spawn_main" in " ".join(c.cmdline())]
    photo = np.asarray(Image.fromarray(small_photos[3][:, ::-1]).resize((1920, 1280)))  # new bytes
    upload = {"image": ("big-new.png", _png(photo))}
    token = {"Authorization": f"Bearer {TOKEN}"}
    queue = JobQueue(root)
    with ThreadPoolExecutor(1) as pool, FolderLock(root / ".lock").held(timeout=10):  # it cannot finish meanwhile
        pending = pool.submit(httpx.post, f"{url}/v1/activate", files=upload, headers=token, timeout=300)
        while not queue.counts()["running"]:
            time.sleep(0.05)
        runner.kill()  # mid-job
        response = pending.result()
    queue.close()
    assert response.status_code == 503 and "stopped unexpectedly" in response.json()["detail"]
    assert "Retry-After" in response.headers
    again = httpx.post(f"{url}/v1/activate", files=upload, headers=token, timeout=300)
    assert again.status_code == 200 and again.headers["content-type"] == "image/png"
    status = httpx.get(f"{url}/v1/status", timeout=30).json()
    assert status["images"] == status["indexed_images"]


def test_delete_takes_an_image_down_for_every_search(served, small_photos):
    """DELETE /v1/images/{id}: token required; at once no search returns it, its record is gone, and its
    activated file goes only when asked; the same image can then be activated again."""
    root, url, _ = served
    token = {"Authorization": f"Bearer {TOKEN}"}
    photo = np.ascontiguousarray(small_photos[5][:, ::-1])
    upload = {"image": ("takedown.png", _png(photo))}
    image_id = int(httpx.post(f"{url}/v1/activate", files=upload, headers=token, timeout=300).headers["X-Image-Id"])
    query = {"images": ("q.png", _png(photo))}
    assert httpx.post(f"{url}/v1/search", files=query, timeout=60).json()["results"][0]["matches"][0]["id"] == image_id
    activated = root / "activated" / "takedown.png"
    assert httpx.delete(f"{url}/v1/images/{image_id}", timeout=30).status_code == 401
    removed = httpx.delete(f"{url}/v1/images/{image_id}", params={"delete_file": "true"}, headers=token, timeout=30)
    assert removed.status_code == 200 and removed.json()["removed"]["id"] == image_id
    assert removed.json()["file_deleted"] is True and not activated.exists()
    matches = httpx.post(f"{url}/v1/search", files=query, timeout=60).json()["results"][0]["matches"]
    assert image_id not in [m["id"] for m in matches]
    assert httpx.get(f"{url}/v1/images/{image_id}", timeout=30, headers=READ).status_code == 404
    assert httpx.delete(f"{url}/v1/images/{image_id}", headers=token, timeout=30).status_code == 404
    again = httpx.post(f"{url}/v1/activate", files=upload, headers=token, timeout=300)
    assert again.status_code == 200 and int(again.headers["X-Image-Id"]) > image_id
    status = httpx.get(f"{url}/v1/status", timeout=30).json()
    assert status["removed"] == 1 and status["images"] == status["indexed_images"] - 1  # one removed, not yet compacted


def test_reads_need_the_token_unless_the_server_opens_them(served, tmp_path):
    """Records, files, thumbnails, jobs and /metrics: 401 without the token; --public-reads and --public-metrics
    open them, but a passive reference's thumbnail (never published) still needs it."""
    root, url, _ = served
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    job = httpx.post(f"{url}/v1/jobs", files={"images": ("noise.png", _png(noise))}, headers=READ, timeout=60)
    _quiet(root)
    reads = ["/v1/images/1", "/v1/images/1/activated", "/v1/images/1/thumbnail", "/v1/images/3/thumbnail",
             f"/v1/jobs/{job.json()['id']}", "/metrics"]
    for path in reads:
        assert httpx.get(f"{url}{path}", timeout=30).status_code == 401, path
        assert httpx.get(f"{url}{path}", headers=READ, timeout=30).status_code == 200, path
    for path in ("/healthz", "/v1/status", "/", "/openapi.json"):
        assert httpx.get(f"{url}{path}", timeout=30).status_code == 200, path
    process, opened = start_server(shutil.copytree(root, tmp_path / "col"), None, "--public-reads", "--public-metrics")
    try:
        for path in [p for p in reads if p != "/v1/images/3/thumbnail"]:
            assert httpx.get(f"{opened}{path}", timeout=30).status_code == 200, path
        assert httpx.get(f"{opened}/v1/images/3/thumbnail", timeout=30).status_code == 401  # passive: never public
    finally:
        stop_server(process)


def test_metrics_parse_and_move_with_requests(served, small_photos):
    """/metrics in the Prometheus text format, read with the Prometheus client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    _, url, _ = served

    def scrape() -> dict[tuple, float]:
        text = httpx.get(f"{url}/metrics", headers=READ, timeout=30).text
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples}

    search = ("activeindex_http_requests_total", (("method", "POST"), ("route", "/v1/search"), ("status", "200")))
    _quiet(served[0])  # no job of an earlier test ends during the count
    before = scrape()
    for _ in range(2):
        assert httpx.post(f"{url}/v1/search", files={"images": ("q.png", _png(small_photos[0]))},
                          timeout=60).status_code == 200
    noise = np.random.default_rng(2).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    assert httpx.post(f"{url}/v1/activate", files={"image": ("n.png", _png(noise))}, headers=READ,
                      timeout=300).status_code == 200
    after = scrape()
    assert after[search] == before.get(search, 0) + 2
    latency = ("activeindex_http_request_duration_seconds_count", (("method", "POST"), ("route", "/v1/search")))
    assert after[latency] == before.get(latency, 0) + 2
    status = httpx.get(f"{url}/v1/status", timeout=30).json()
    assert after[("activeindex_images", (("kind", "active"),))] == status["active"]
    assert after[("activeindex_images", (("kind", "removed"),))] == status["removed"]
    done, count = ("activeindex_jobs", (("state", "done"),)), ("activeindex_activation_seconds_per_image_count", ())
    assert after[done] == before[done] + 1 and after[count] == before[count] + 1
    assert after[("activeindex_activation_seconds_per_image_sum", ())] > before[
        ("activeindex_activation_seconds_per_image_sum", ())]
    assert ("activeindex_searches_in_flight", ()) in after


def test_an_image_activated_before_the_scaling_column_is_answered_without_it(served):
    """Re-activating an image recorded by an earlier version (no scaling stored) answers 200, not 500."""
    import sqlite3

    root, url, paths = served
    with sqlite3.connect(root / "catalog.sqlite") as db:
        db.execute("UPDATE images SET scaling = NULL WHERE id = 1")
    response = httpx.post(f"{url}/v1/activate", files={"image": ("again.png", paths[0].read_bytes())},
                          headers=READ, timeout=120)
    assert response.status_code == 200 and response.headers["X-Image-Id"] == "1"
    assert "X-Scaling" not in response.headers and float(response.headers["X-PSNR"]) > 30


def test_the_released_format_per_request(served, small_photos):
    """format and quality fields: the answer is the released JPEG, its record says so; a bad one is 422."""
    _, url, _ = served
    upload = {"image": ("as-jpeg.png", _png(np.ascontiguousarray(small_photos[1][:, ::-1])))}
    response = httpx.post(f"{url}/v1/activate", files=upload, data={"format": "jpeg", "quality": "85"},
                          headers=READ, timeout=300)
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).format == "JPEG"
    record = httpx.get(f"{url}/v1/images/{response.headers['X-Image-Id']}", headers=READ, timeout=30).json()
    assert record["format"] == "jpeg" and record["activated_filename"] == "as-jpeg.jpg"
    for field, value in [("format", "gif"), ("quality", "0"), ("quality", "high")]:
        refused = httpx.post(f"{url}/v1/jobs", files={"images": upload["image"]}, data={field: value},
                             headers=READ, timeout=60)
        assert refused.status_code == 422 and field in refused.json()["detail"]


def _quiet(root: Path) -> None:
    """Wait until the collection's job queue is empty."""
    queue, deadline = JobQueue(root), time.monotonic() + 300
    while queue.pending():
        assert time.monotonic() < deadline, "jobs still pending"
        time.sleep(0.1)
    queue.close()


def test_an_activation_larger_than_the_memory_budget_is_refused(tmp_path, training_npy, small_photos):
    """--activation-memory: an image whose activation would need more is refused from its header (413)."""
    (tmp_path / "originals").mkdir()
    served_collection(tmp_path / "col", tmp_path / "originals", small_photos, training_npy)
    process, url = start_server(tmp_path / "col", None, "--activation-memory", "0.5")
    try:
        big = np.asarray(Image.fromarray(small_photos[0]).resize((3000, 3000)))  # ~0.7 GB to activate
        refused = httpx.post(f"{url}/v1/jobs", files={"images": ("big.jpg", _png(big, "JPEG"))}, headers=READ,
                             timeout=60)
        assert refused.status_code == 413
        assert refused.json()["detail"].startswith("big.jpg: activating 3000x3000 pixels needs about 0.7 GB; "
                                                   "this server allows 0.5 GB (--activation-memory)")
        small = httpx.post(f"{url}/v1/jobs", files={"images": ("small.png", _png(small_photos[4]))},
                           headers=READ, timeout=60)
        assert small.status_code == 202
    finally:
        stop_server(process)


def _finished(url: str, job_id: int, timeout: float = 600) -> dict:
    """The job once it is done or failed."""
    deadline = time.monotonic() + timeout
    while (job := httpx.get(f"{url}/v1/jobs/{job_id}", headers=READ, timeout=30).json())["state"] not in (
            "done", "failed"):
        assert time.monotonic() < deadline, f"job {job_id} not finished"
        time.sleep(0.2)
    return job


def _sha256s(folder: Path) -> set[str]:
    return {hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.rglob("*") if path.is_file()}


def test_a_takedown_leaves_no_file_of_the_image_and_its_job_no_longer_lists_it(served, small_photos):
    """DELETE ?delete_file=true after a job: neither the released file nor the server's copy of the upload
    (nor its folder) stays under the collection, and the job's result stops listing the record."""
    root, url, _ = served
    photo = np.ascontiguousarray(np.rot90(small_photos[4]))[:160, :160]
    response = httpx.post(f"{url}/v1/jobs", files={"images": ("erase-me.png", _png(photo))}, headers=READ,
                          timeout=60)
    job = _finished(url, response.json()["id"])
    [record] = job["records"]
    assert job["removed"] == 0 and any((root / "uploads").rglob("erase-me.png"))
    removed = httpx.delete(f"{url}/v1/images/{record['id']}", params={"delete_file": "true"}, headers=READ,
                           timeout=30)
    assert removed.status_code == 200 and removed.json()["file_deleted"] is True
    assert not {record["original_sha256"], record["activated_sha256"]} & _sha256s(root)
    assert not [path for path in root.rglob("*") if path.name.startswith("erase-me")]
    assert all(any(folder.iterdir()) for folder in (root / "uploads").iterdir())  # no empty folder left
    again = httpx.get(f"{url}/v1/jobs/{job['id']}", headers=READ, timeout=30).json()
    assert again["records"] == [] and again["removed"] == 1 and again["state"] == "done"


def test_a_job_with_one_bad_file_queues_the_good_ones_and_names_the_bad_one(served, small_photos):
    _, url, _ = served
    good = [(f"good{i}.png", _png(np.ascontiguousarray(np.rot90(photo, 3))[:96, :128]))
            for i, photo in enumerate(small_photos[:5])]
    files = [("images", item) for item in [*good[:2], ("broken.jpg", b"not a jpeg at all"), *good[2:]]]
    response = httpx.post(f"{url}/v1/jobs", files=files, headers=READ, timeout=60)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["total"] == 5 and [r["filename"] for r in accepted["refused"]] == ["broken.jpg"]
    assert accepted["refused"][0]["error"].startswith("broken.jpg: not an image")
    job = _finished(url, accepted["id"])
    assert job["state"] == "done" and sorted(r["original_filename"] for r in job["records"]) == [
        name for name, _ in good]
    assert job["refused"] == accepted["refused"] and job["failed"] == []
    alone = httpx.post(f"{url}/v1/jobs", files=[("images", ("broken.jpg", b"not a jpeg at all"))], headers=READ,
                       timeout=60)
    assert alone.status_code == 400 and alone.json()["detail"].startswith("broken.jpg: not an image")


# a real server whose commits give up after 1 s when another process holds the collection's folder lock
SERVE_IMPATIENT = """
import sys
import uvicorn
from activeindex import Collection
from activeindex.service import ServiceConfig, create_app
root, port, token = sys.argv[1:]
collection = Collection.open(root, device="cpu")
collection.lock_timeout = 1.0
uvicorn.run(create_app(collection, ServiceConfig(token=token)), host="127.0.0.1", port=int(port), log_level="warning")
"""


def test_a_busy_collection_is_a_503_that_names_no_server_path(served, tmp_path):
    root = shutil.copytree(served[0], tmp_path / "col")
    port = free_port()
    process, url = serving([sys.executable, "-c", SERVE_IMPATIENT, str(root), str(port), TOKEN], port)
    try:
        with FolderLock(root / ".lock").held(timeout=10):  # another writer, for longer than the server waits
            response = httpx.delete(f"{url}/v1/images/3", headers=READ, timeout=30)
    finally:
        stop_server(process)
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert str(tmp_path) not in response.text and "/" not in response.json()["detail"], response.text
    assert "busy" in response.json()["detail"]
