"""A bounded load test of `activeindex serve` on loopback: search latency with and without activations, and
how long a small activation job takes while clients search.

N clients post edited copies of real photos to /v1/search in a loop, for T seconds WITHOUT any
activation, then T seconds while another client keeps the server activating new photos. A probe
calls /healthz every 0.25 s throughout. Prints, for each phase: throughput, p50 / p99 search latency,
errors, and the slowest /healthz answer; then the p99 ratio (the goal: <= 2x), each p99 with a 95 %
bootstrap interval (requests resampled, seeded). Last, fair progress: the N clients search while one
small job (one 224x168 photo, as POST /v1/jobs) runs, from submission to done (the goal: <= 2 min), three
times. The server runs on a COPY of the collection (activations write to it), on a free loopback port:

    python benchmarks/service_load.py COLLECTION [--clients 4] [--seconds 30]
"""
from __future__ import annotations

import argparse
import io
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import skimage
from PIL import Image

from activeindex.edits import apply_edit
from activeindex.imageio import load_image

PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg"]
TOKEN = "load-test"


def photos() -> list[np.ndarray]:
    folder = Path(skimage.__file__).parent / "data"
    return [load_image(folder / name) for name in PHOTOS]


def jpeg(image: np.ndarray, quality: int = 75) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def queries() -> list[bytes]:
    """JPEG copies (brightness 2.0, then quality 75) of scikit-image's photos."""
    return [jpeg(apply_edit("brightness_2.0", image)) for image in photos()]


def new_photos(n: int, seed: int = 0) -> list[bytes]:
    """n distinct photos to activate: seeded random crops (60-90 % of each side) of the real photos."""
    rng, images, out = np.random.default_rng(seed), photos(), []
    for i in range(n):
        image = images[i % len(images)]
        h, w = (int(s * rng.uniform(0.6, 0.9)) for s in image.shape[:2])
        y, x = rng.integers(0, image.shape[0] - h + 1), rng.integers(0, image.shape[1] - w + 1)
        out.append(jpeg(image[y:y + h, x:x + w], quality=95))
    return out


def small_photos(n: int, seed: int = 1) -> list[bytes]:
    """n distinct small photos (224x168, as a phone thumbnail): seeded crops of the real photos, resized."""
    return [jpeg(np.asarray(Image.open(io.BytesIO(data)).resize((224, 168))), quality=95)
            for data in new_photos(n, seed)]


def start_server(collection: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "activeindex", "serve", str(collection), "--port", str(port),
                                "--token", TOKEN, "-q"])
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not start")


@dataclass
class Phase:
    """What one phase measured."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    health: list[float] = field(default_factory=list)
    activations: int = 0
    seconds: float = 0.0


def search_client(url: str, bodies: list[bytes], stop: threading.Event, phase: Phase) -> None:
    with httpx.Client(timeout=120) as http:
        i = 0
        while not stop.is_set():
            start = time.monotonic()
            try:
                response = http.post(f"{url}/v1/search", files={"images": ("q.jpg", bodies[i % len(bodies)])})
                if response.status_code != 200:
                    phase.errors.append(f"HTTP {response.status_code}")
            except httpx.HTTPError as e:
                phase.errors.append(type(e).__name__)
            phase.latencies.append(time.monotonic() - start)
            i += 1


def health_probe(url: str, stop: threading.Event, phase: Phase) -> None:
    with httpx.Client(timeout=30) as http:
        while not stop.is_set():
            start = time.monotonic()
            try:
                http.get(f"{url}/healthz")
                phase.health.append(time.monotonic() - start)
            except httpx.HTTPError as e:
                phase.errors.append(f"healthz {type(e).__name__}")
            stop.wait(0.25)


def activation_client(url: str, uploads: list[bytes], stop: threading.Event, phase: Phase) -> None:
    with httpx.Client(timeout=900, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        for i, data in enumerate(uploads):
            if stop.is_set():
                return
            response = http.post(f"{url}/v1/activate", files={"image": (f"new{i}.jpg", data)})
            if response.status_code == 200:
                phase.activations += 1
            else:
                phase.errors.append(f"activate HTTP {response.status_code}")


def small_job_under_load(url: str, clients: int, upload: bytes) -> tuple[float, Phase]:
    """Seconds from submitting a one-photo job to its end while ``clients`` search without pause."""
    phase, stop, bodies = Phase(), threading.Event(), queries()
    threads = [threading.Thread(target=search_client, args=(url, bodies, stop, phase)) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(2)  # the searches are under way
    start = time.monotonic()
    response = httpx.post(f"{url}/v1/jobs", files={"images": ("small.jpg", upload)},
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    job_url = f"{url}{response.headers['Location']}"
    while (state := httpx.get(job_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60).json()["state"]) \
            not in ("done", "failed"):
        time.sleep(0.5)
    took = time.monotonic() - start
    stop.set()
    for t in threads:
        t.join()
    phase.seconds = took
    if state != "done":
        phase.errors.append(f"job {state}")
    return took, phase


def run_phase(url: str, clients: int, seconds: float, uploads: list[bytes] | None) -> Phase:
    phase, stop, bodies = Phase(), threading.Event(), queries()
    threads = [threading.Thread(target=search_client, args=(url, bodies, stop, phase)) for _ in range(clients)]
    threads.append(threading.Thread(target=health_probe, args=(url, stop, phase)))
    if uploads:
        threads.append(threading.Thread(target=activation_client, args=(url, uploads, stop, phase)))
    start = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads[:clients + 1]:
        t.join()
    phase.seconds = time.monotonic() - start
    for t in threads[clients + 1:]:  # the activation in flight finishes (not counted in the latencies)
        t.join()
    return phase


def p99_samples(ms: np.ndarray, rounds: int = 2000, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of the p99 latency (requests resampled with replacement, seeded)."""
    rng = np.random.default_rng(seed)
    return np.percentile(rng.choice(ms, size=(rounds, len(ms))), 99, axis=1)


def interval(samples: np.ndarray) -> str:
    low, high = np.percentile(samples, [2.5, 97.5])
    return f"[{low:.0f}, {high:.0f}]" if high > 10 else f"[{low:.2f}, {high:.2f}]"


def report(name: str, clients: int, phase: Phase) -> np.ndarray:
    """Print one phase; returns the bootstrap samples of its p99 (ms)."""
    ms, health = np.array(phase.latencies) * 1000, np.array(phase.health) * 1000
    samples = p99_samples(ms)
    print(f"{name:18} {clients} clients, {phase.seconds:.0f} s, {len(ms)} searches: {len(ms) / phase.seconds:.1f} "
          f"req/s, p50 {np.percentile(ms, 50):.0f} ms, p99 {np.percentile(ms, 99):.0f} ms {interval(samples)}, "
          f"errors {len(phase.errors)}"
          + (f" ({', '.join(sorted(set(phase.errors)))})" if phase.errors else "")
          + f"; /healthz max {health.max():.0f} ms over {len(health)} probes"
          + (f"; {phase.activations} activations completed" if phase.activations else ""))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("collection", type=Path, help="a trained collection (served from a temporary copy)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "collection"
        shutil.copytree(args.collection, copy)
        process, url = start_server(copy)
        try:
            warm = Phase()
            activation_client(url, new_photos(1, seed=99), threading.Event(), warm)  # starts the worker process
            quiet = run_phase(url, args.clients, args.seconds, None)
            busy = run_phase(url, args.clients, args.seconds, new_photos(100))
            small = [small_job_under_load(url, args.clients, upload) for upload in small_photos(3)]
        finally:
            process.terminate()
            process.wait(timeout=60)
    print(f"search bodies: JPEG ~{np.mean([len(b) for b in queries()]) / 1024:.0f} kB, one image each; "
          "activations: seeded crops (60-90 % of each side) of scikit-image's photos, default settings")
    quiet_p99 = report("without activation", args.clients, quiet)
    busy_p99 = report("during activation", args.clients, busy)
    ratio = np.percentile(np.array(busy.latencies), 99) / np.percentile(np.array(quiet.latencies), 99)
    print(f"p99 during / without activation: {ratio:.2f}x {interval(busy_p99 / quiet_p99)} (goal <= 2x; "
          "95 % bootstrap intervals over requests in brackets)")
    for took, phase in small:
        ms = np.array(phase.latencies) * 1000
        print(f"small job (one 224x168 photo) while {args.clients} clients searched: done in {took:.0f} s (goal "
              f"<= 120 s); {len(ms)} searches meanwhile, p50 {np.percentile(ms, 50):.0f} ms, errors "
              f"{len(phase.errors)}" + (f" ({', '.join(sorted(set(phase.errors)))})" if phase.errors else ""))


if __name__ == "__main__":
    main()
