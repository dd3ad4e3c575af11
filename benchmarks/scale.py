"""How the collection holds up as it grows, and what Ray costs on one machine; prints settings and figures.

  (a) register N precomputed descriptors (synthetic unit vectors: this measures the system, not retrieval)
      into a collection in batches, next to raw faiss ``add_with_ids`` of the same vectors in the same
      batches, in the same run; disk size; ``Collection.open`` time and RSS in a fresh process; search
      throughput (batches of queries) and single-query latency next to raw faiss on the same index; search
      throughput with several concurrent clients (threads) vs one; the float16 store's similarity error.
  (b) activation of the same real photos in this process and on a local Ray (started beforehand; its start
      time is printed apart), side by side.

    python benchmarks/scale.py                      # the README's figures: 1M vectors, IVF4096,PQ8x8
    python benchmarks/scale.py --n 100000 --skip-ray  # a quick look
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import skimage
from PIL import Image
from tqdm import tqdm

from activeindex import ActivationConfig, Collection
from activeindex.catalog import Record
from activeindex.codec import search as faiss_search
from activeindex.collection import Prepared

DIM = 512
CHUNK = 65_536  # vectors generated at a time (memory stays bounded at any N)


@functools.lru_cache(maxsize=2)
def _chunk(seed: int, chunk: int) -> np.ndarray:
    x = np.random.default_rng([seed, chunk]).standard_normal((CHUNK, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def vectors(start: int, stop: int, seed: int = 0) -> np.ndarray:
    """Unit vectors start..stop-1 of one reproducible synthetic collection (made CHUNK at a time)."""
    return np.concatenate([_chunk(seed, c)[max(start, c * CHUNK) - c * CHUNK:min(stop, (c + 1) * CHUNK) - c * CHUNK]
                           for c in range(start // CHUNK, (stop - 1) // CHUNK + 1)])


def synthetic_batch(start: int, stop: int) -> list[Prepared]:
    """Prepared items as `Preparer` makes them for passive references, for descriptors start..stop-1."""
    items = []
    for i, descriptor in zip(range(start, stop), vectors(start, stop), strict=True):
        sha = hashlib.sha256(str(i).encode()).hexdigest()
        record = Record(id=None, kind="passive", original_path=f"/synthetic/{i:08d}.jpg", original_sha256=sha,
                        width=768, height=512)
        items.append(Prepared(record.original_path, sha, record=record, descriptor=descriptor))
    return items


def timed(function, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def register(args, root: Path) -> dict:
    """(a): train, then raw faiss and the collection over the same vectors in the same batches."""
    n, batch = args.n, args.batch
    collection = Collection.create(root, args.factory, device="cpu")
    train_seconds, _ = timed(collection.train, vectors(n, n + args.train, seed=1))  # disjoint from the data
    print(f"trained {args.factory} on {args.train:,} vectors in {train_seconds:.0f} s")

    raw = collection.codec.empty_index()
    raw_seconds = collection_seconds = 0.0
    for start in tqdm(range(0, n, batch), desc="register", unit="batch", mininterval=10):
        # interleaved batch by batch, so that both see the same machine load
        items = synthetic_batch(start, min(n, start + batch))
        x, ids = np.stack([item.descriptor for item in items]), np.arange(start + 1, start + 1 + len(items))
        raw_seconds += timed(raw.add_with_ids, x, ids)[0]
        collection_seconds += timed(collection.commit, items)[0]
    collection_seconds += timed(collection.snapshot)[0]
    sizes = {name: (root / name).stat().st_size for name in ("index.faiss", "catalog.sqlite")}
    figures = {"raw_add_s": raw_seconds, "collection_add_s": collection_seconds,
               "add_ratio": collection_seconds / raw_seconds, **{f"{k}_bytes": v for k, v in sizes.items()}}
    figures |= opened(root)
    figures |= searches(collection, raw, args)
    figures |= float16_error(collection)
    collection.close()
    return figures


def opened(root: Path) -> dict:
    """Open time and RSS in a fresh process (RSS also measured before opening, after importing activeindex)."""
    code = f"""
import json, time, psutil
import activeindex
process = psutil.Process()
before = process.memory_info().rss
start = time.perf_counter()
collection = activeindex.Collection.open({str(root)!r}, device="cpu")
seconds = time.perf_counter() - start
print(json.dumps({{"open_s": seconds, "rss_before_open": before, "rss_open": process.memory_info().rss,
                  "ntotal": collection.index.ntotal}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def searches(collection: Collection, raw: faiss.Index, args) -> dict:
    """Throughput and single-query latency, collection vs raw faiss, and concurrent clients."""
    rng = np.random.default_rng(2)
    targets = np.sort(rng.choice(args.n, args.queries, replace=False))  # in order: each chunk is made once
    queries = np.concatenate([vectors(int(i), int(i) + 1) for i in targets])
    queries = queries + 0.02 * rng.standard_normal(queries.shape).astype(np.float32)  # near-copies
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    k, chunk = 10, 100
    raw_batch, _ = timed(lambda: [faiss_search(raw, queries[i:i + chunk], k) for i in range(0, len(queries), chunk)])
    col_batch, _ = timed(lambda: [collection.search_descriptors(queries[i:i + chunk], k)
                                  for i in range(0, len(queries), chunk)])
    raw_single, _ = timed(lambda: [faiss_search(raw, queries[i:i + 1], k) for i in range(len(queries))])
    col_single, found = timed(lambda: [collection.search_descriptors(queries[i:i + 1], k)[0]
                                       for i in range(len(queries))])
    recall = float(np.mean([bool(m) and m[0].id == t + 1 for m, t in zip(found, targets)]))

    def clients(count: int) -> float:
        """Queries per second with ``count`` threads each searching its share one query at a time."""
        shares = np.array_split(np.arange(len(queries)), count)
        threads = [threading.Thread(target=lambda s=s: [collection.search_descriptors(queries[i:i + 1], k)
                                                          for i in s]) for s in shares]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return len(queries) / (time.perf_counter() - start)

    q = len(queries)
    return {"raw_qps": q / raw_batch, "collection_qps": q / col_batch, "qps_ratio": raw_batch / col_batch,
            "raw_latency_ms": 1e3 * raw_single / q, "collection_latency_ms": 1e3 * col_single / q,
            "latency_ratio": raw_single / col_single, "top1_near_copy": recall,
            "qps_1_client": clients(1), "qps_4_clients": clients(4)}


def float16_error(collection: Collection) -> dict:
    """How far the float16 store moves similarities: stored vs exact descriptors of 10,000 registered ones."""
    ids = np.arange(1, 10_001)
    exact = vectors(0, 10_000)
    stored = collection.catalog.descriptors_of(list(ids))
    stored = np.stack([stored[int(i)] for i in ids])
    queries = vectors(0, 100, seed=3)
    error = np.abs(queries @ stored.T - queries @ exact.T)
    return {"float16_max_similarity_error": float(error.max()), "float16_mean_similarity_error": float(error.mean())}


def ray_vs_in_process(args, root: Path) -> dict:
    """(b): the same photos activated in this process and on a local Ray, each into a copy of one collection."""
    import ray

    from activeindex.pipeline import connect

    photos = root / "photos"
    photos.mkdir(parents=True)
    folder = Path(skimage.__file__).parent / "data"
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg"]
    for i in range(args.photos):  # 16 distinct images: six photos, flipped and rotated
        image = Image.open(folder / names[i % 6]).convert("RGB").resize((768, 512), Image.BICUBIC)
        image = image.transpose(Image.FLIP_LEFT_RIGHT) if i // 6 == 1 else image.rotate(180) if i // 6 == 2 else image
        image.save(photos / f"photo{i:02d}.png")
    trained = Collection.create(root / "trained", "IVF256,PQ8x8", device="cpu")
    trained.train(vectors(0, 256 * 39, seed=4))
    trained.close()
    config = ActivationConfig(batch_size=args.photos)
    copies = [shutil.copytree(trained.root, root / name) for name in ("in-process", "ray")]
    in_process, local = timed(lambda: Collection.open(copies[0], device="cpu").activate(
        [photos], root / "out-1", config))
    start_seconds, _ = timed(connect, "local")
    on_ray, remote = timed(lambda: Collection.open(copies[1], device="cpu").activate(
        [photos], root / "out-2", config, ray="local"))
    same = all((root / "out-1" / n).read_bytes() == (root / "out-2" / n).read_bytes()
               for n in os.listdir(root / "out-1"))
    ray.shutdown()
    return {"photos": args.photos, "in_process_s": in_process, "ray_start_s": start_seconds, "ray_s": on_ray,
            "ray_overhead": on_ray / in_process - 1, "same_png_bytes": same,
            "registered": [len(local.records), len(remote.records)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="descriptors to register (default 1M)")
    parser.add_argument("--factory", default="IVF4096,PQ8x8")
    parser.add_argument("--train", type=int, default=4096 * 39, help="training vectors (faiss: 39 per centroid)")
    parser.add_argument("--batch", type=int, default=256, help="descriptors per commit (default 256)")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--photos", type=int, default=16, help="photos activated in (b) (default 16)")
    parser.add_argument("--skip-ray", action="store_true", help="only (a)")
    parser.add_argument("--skip-register", action="store_true", help="only (b)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp folder, removed)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="scale-"))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, faiss {faiss.__version__}, threads {faiss.omp_get_max_threads()}")
    print(f"settings: n={args.n:,} factory={args.factory} batch={args.batch} train={args.train:,} "
          f"queries={args.queries} photos={args.photos} work={work}")
    figures = {}
    try:
        if not args.skip_register:
            figures["register"] = register(args, work / "collection")
            report_register(figures["register"])
        if not args.skip_ray:
            figures["ray"] = ray_vs_in_process(args, work / "ray")
            report_ray(figures["ray"])
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures, indent=1))


def report_register(f: dict) -> None:
    mb = 2**20
    index_mb = f["index.faiss_bytes"] / mb
    rss_goal = 2 * index_mb + 300
    print(f"register: collection {f['collection_add_s']:.1f} s vs raw faiss {f['raw_add_s']:.1f} s: "
          f"{f['add_ratio']:.2f}x (goal <= 1.3x)")
    print(f"disk: index.faiss {index_mb:.0f} MB, catalog.sqlite {f['catalog.sqlite_bytes'] / mb:.0f} MB")
    print(f"open: {f['open_s']:.2f} s (goal <= 3 s); RSS {f['rss_open'] / mb:.0f} MB (goal <= {rss_goal:.0f} MB = "
          f"2 x index + 300), of which {f['rss_before_open'] / mb:.0f} MB before opening (Python, torch, faiss)")
    print(f"search, batches of 100: {f['collection_qps']:.0f} vs raw {f['raw_qps']:.0f} queries/s: "
          f"{f['qps_ratio']:.2f}x (goal >= 0.9x)")
    print(f"search, one query: {f['collection_latency_ms']:.3f} vs raw {f['raw_latency_ms']:.3f} ms: "
          f"{f['latency_ratio']:.2f}x of raw speed (goal >= 0.9x); near-copy top-1 {f['top1_near_copy']:.3f}")
    print(f"concurrent clients: 1 -> {f['qps_1_client']:.0f} q/s, 4 -> {f['qps_4_clients']:.0f} q/s "
          f"({f['qps_4_clients'] / f['qps_1_client']:.2f}x)")
    print(f"float16 store: similarity error max {f['float16_max_similarity_error']:.1e}, "
          f"mean {f['float16_mean_similarity_error']:.1e}")


def report_ray(f: dict) -> None:
    print(f"activation of {f['photos']} photos 768x512: in-process {f['in_process_s']:.1f} s, Ray {f['ray_s']:.1f} s "
          f"(+{100 * f['ray_overhead']:.0f} %, goal < 15 %; Ray's own start {f['ray_start_s']:.1f} s apart); "
          f"same PNG bytes: {f['same_png_bytes']}")


if __name__ == "__main__":
    main()
