"""Peak memory of `activeindex add` over folders of camera-size photos: flat in the number of files?

Each count runs in a process of its own: a new collection (IVF8,PQ8x4 trained on telescope photos), then
`Collection.add` of N JPEGs of WIDTH x HEIGHT made from the real wallpapers of `make photos` (seeded random
draw; each file a different crop and flip, so each is a distinct photo to the catalog), with the default batch
size (256 rows a catalog transaction). It prints the peak RSS of the whole process and its rise above the
loaded model, and the rate. Usage:

    python benchmarks/ingest_memory.py [--counts 1 40 300] [--width 6000 --height 4000]
"""
from __future__ import annotations

import argparse
import glob
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from speed import WALLPAPERS, wallpapers

NEBULAE = "/usr/share/stellarium/nebulae/default/*.png"


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def camera_folder(folder: Path, n: int, width: int, height: int, seed: int = 0) -> Path:
    """n JPEGs (q 90) of width x height: seeded crops of real wallpapers resized up, every other one mirrored."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = wallpapers(8, seed, WALLPAPERS)
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = folder / f"camera{i:04d}.jpg"
        if path.exists():
            continue
        with Image.open(sources[i % len(sources)]) as source:
            w, h = source.size
            x, y = int(rng.integers(0, w // 10)), int(rng.integers(0, h // 10))
            image = source.convert("RGB").crop((x, y, x + w * 9 // 10, y + h * 9 // 10))
            image = image.resize((width, height), Image.BILINEAR)
        (image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else image).save(path, quality=90)
    return folder


def child(folder: str, n: int, training: str, scratch: str) -> None:
    """One measurement: a new collection, add the first n files of ``folder``, print the figures."""
    from activeindex import Collection

    collection = Collection.create(Path(scratch) / "col", "IVF8,PQ8x4", device="cpu")
    collection.train(training)
    collection.add(sorted(glob.glob(NEBULAE))[:1], progress=False)  # the model loaded: the baseline
    files = sorted(Path(folder).glob("*.jpg"))[:n]
    baseline = peak_rss()
    start = time.perf_counter()
    report = collection.add(files, progress=False)
    seconds = time.perf_counter() - start
    assert len(report.records) == n, report.failed
    print(f"{n:>4} files: peak RSS {peak_rss() / 1e9:.2f} GB (+{(peak_rss() - baseline) / 1e6:.0f} MB above the "
          f"loaded model), {n / seconds:.2f} img/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 40, 300])
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--photos", default=None, help="folder for the generated JPEGs (default: a temp folder)")
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "N", "TRAINING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory() as scratch:
            child(args.child[0], int(args.child[1]), args.child[2], scratch)
        return
    from activeindex import Extractor

    with tempfile.TemporaryDirectory() as tmp:
        folder = camera_folder(Path(args.photos or tmp) / f"{args.width}x{args.height}", max(args.counts),
                               args.width, args.height)
        training = Path(tmp) / "training.npy"
        np.save(training, Extractor(device="cpu").encode(sorted(glob.glob(NEBULAE))[1:321], progress=False))
        print(f"add of {args.width}x{args.height} JPEGs ({args.width * args.height / 1e6:.0f} MP), one process per "
              "count, default batch size:", flush=True)
        for n in args.counts:
            subprocess.run([sys.executable, __file__, "--child", str(folder), str(n), str(training)], check=True)


if __name__ == "__main__":
    main()
