"""A bounded load test of `activeindex serve` on loopback: N concurrent clients for T seconds.

Each client posts edited copies of real photos to /v1/search in a loop. Prints throughput, p50 / p99
latency and the error count. Starts its own server on a free loopback port unless --url is given:

    python benchmarks/service_load.py COLLECTION [--clients 4] [--seconds 30]
    python benchmarks/service_load.py --url http://127.0.0.1:8000 [--clients 4] [--seconds 30]
"""
from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import skimage
from PIL import Image

from activeindex.edits import apply_edit
from activeindex.imageio import load_image

PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg"]


def queries() -> list[bytes]:
    """JPEG copies (brightness 2.0, then quality 75) of scikit-image's photos."""
    folder = Path(skimage.__file__).parent / "data"
    out = []
    for name in PHOTOS:
        buffer = io.BytesIO()
        Image.fromarray(apply_edit("brightness_2.0", load_image(folder / name))).save(buffer, "JPEG", quality=75)
        out.append(buffer.getvalue())
    return out


def start_server(collection: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "activeindex", "serve", collection, "--port", str(port),
                                "--token", "load-test", "-q"])
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not start")


def client(url: str, bodies: list[bytes], deadline: float, latencies: list[float], errors: list[str]) -> None:
    with httpx.Client(timeout=60) as http:
        i = 0
        while time.monotonic() < deadline:
            start = time.monotonic()
            try:
                response = http.post(f"{url}/v1/search", files={"images": ("q.jpg", bodies[i % len(bodies)])})
                if response.status_code != 200:
                    errors.append(f"HTTP {response.status_code}")
            except httpx.HTTPError as e:
                errors.append(type(e).__name__)
            latencies.append(time.monotonic() - start)
            i += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("collection", nargs="?", help="collection to serve (a server is started)")
    parser.add_argument("--url", help="an already running server instead")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    if not (args.collection or args.url):
        parser.error("give a COLLECTION or --url")
    process, url = (None, args.url) if args.url else start_server(args.collection)
    try:
        bodies = queries()
        latencies: list[float] = []
        errors: list[str] = []
        deadline = time.monotonic() + args.seconds
        threads = [threading.Thread(target=client, args=(url, bodies, deadline, latencies, errors))
                   for _ in range(args.clients)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
    finally:
        if process:
            process.terminate()
            process.wait(timeout=30)
    ms = np.array(latencies) * 1000
    print(f"{args.clients} clients, {elapsed:.1f} s, {len(latencies)} requests (one image each, JPEG ~"
          f"{np.mean([len(b) for b in bodies]) / 1024:.0f} kB): {len(latencies) / elapsed:.1f} req/s, "
          f"p50 {np.percentile(ms, 50):.0f} ms, p99 {np.percentile(ms, 99):.0f} ms, errors {len(errors)}"
          + (f" ({', '.join(sorted(set(errors)))})" if errors else ""))


if __name__ == "__main__":
    main()
