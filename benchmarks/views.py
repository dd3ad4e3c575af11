"""Which views to index (views.py): R@1 of cropped and turned copies, for each candidate view set.

The setting a new collection meets: IVF32,PQ8x8 trained on the telescope photos, N wallpapers (seeded random
draw; each its largest file) registered among the Tux Paint stamps, passive descriptors, nprobe 1, k 1. The
queries are copies of the wallpapers made from the full-size file, each edit drawn per photo from its seed:
random crops and random turns (never the benchmark's fixed test edits), corner crops, and photometric edits
(a view must cost them nothing). R@1 per edit and view set with a 95 % interval over photos; the cost is the
number of vectors per image (index memory) and the encoding time per image.

    python benchmarks/views.py [--photos 24] [--seed 0] [--sets none crops crops+turns]

``--seed 1`` with another draw gives photos the choice was not made on.
"""
from __future__ import annotations

import argparse
import glob
import math
import time

import faiss
import numpy as np
from PIL import Image

from activeindex import Extractor
from activeindex.bench.metrics import mean_interval
from activeindex.edits import brightness, jpeg, random_crop, rotation
from activeindex.extractor import network_input
from activeindex.imageio import load_image
from activeindex.views import VIEW_SETS, get_view_set, view_inputs
from speed import WALLPAPERS, wallpapers

NEBULAE = "/usr/share/stellarium/nebulae/default/*.png"
STAMPS = "/usr/share/tuxpaint/stamps/**/*.png"


def corner_crop(area: float):
    """A corner window of ``area``, the corner drawn per photo."""
    def _crop(image, rng):
        h, w = image.shape[:2]
        ch, cw = round(h * math.sqrt(area)), round(w * math.sqrt(area))
        top, left = (h - ch) * int(rng.integers(2)), (w - cw) * int(rng.integers(2))
        return image[top:top + ch, left:left + cw]
    return _crop


def random_turn(low: float, high: float):
    """A turn of U(low, high) degrees, either way."""
    return lambda image, rng: rotation(float(rng.uniform(low, high) * rng.choice([-1, 1])))(image, rng)


QUERIES = {"random crop 0.3-0.7": random_crop((0.3, 0.7)), "corner crop 0.35": corner_crop(0.35),
           "turn 5-45": random_turn(5, 45), "turn 5-45 + crop 0.6-0.9": lambda im, rng: random_crop((0.6, 0.9))(
               random_turn(5, 45)(im, rng), rng),
           "brightness 2": brightness(2.0), "jpeg 30": jpeg(30)}


def encode_with_views(extractor: Extractor, paths: list[str], views) -> tuple[np.ndarray, np.ndarray, float]:
    """(vectors, image index of each vector, seconds per image)."""
    vectors, owners, start = [], [], time.perf_counter()
    for i, path in enumerate(paths):
        whole = network_input(load_image(path), extractor.preprocessing)
        inputs = [whole.mul(255.0).round().byte(), *view_inputs(whole, views, extractor.preprocessing)]
        vectors.append(extractor.encode_network_inputs(inputs))
        owners += [i] * len(inputs)
    return np.concatenate(vectors), np.array(owners), (time.perf_counter() - start) / len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--stamps", type=int, default=380)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sets", nargs="+", default=list(VIEW_SETS))
    args = parser.parse_args()
    extractor, rng = Extractor(device="cpu"), np.random.default_rng(args.seed)
    photos = wallpapers(args.photos, args.seed, WALLPAPERS)
    stamps = sorted(p for p in glob.glob(STAMPS, recursive=True) if min(Image.open(p).size) >= 64)
    stamps = [stamps[i] for i in rng.choice(len(stamps), args.stamps, replace=False)]
    nebulae = sorted(glob.glob(NEBULAE))
    index = faiss.index_factory(extractor.dim, "IVF32,PQ8x8", faiss.METRIC_INNER_PRODUCT)
    index.train(extractor.encode(nebulae, progress=False))
    queries = {name: extractor.encode_arrays([edit(load_image(p), np.random.default_rng([args.seed, i, q]))
                                              for i, p in enumerate(photos)])
               for q, (name, edit) in enumerate(QUERIES.items())}
    stamp_vectors = extractor.encode(stamps, progress=False)
    print(f"{args.photos} wallpapers (seed {args.seed}) among {args.stamps} stamps; IVF32,PQ8x8 on "
          f"{len(nebulae)} telescope photos, nprobe 1; R@1 [95 % interval over photos]")
    print(f"{'view set':14} {'vectors':>7} {'s/image':>7}  " + "  ".join(f"{q:>22}" for q in QUERIES))
    for name in args.sets:
        views = get_view_set(name)
        vectors, owners, seconds = encode_with_views(extractor, photos, views)
        for search_index, label in ((index, "IVF32,PQ8x8"), (None, "exact")):
            found = {q: _top1(search_index, vectors, owners, stamp_vectors, x) for q, x in queries.items()}
            cells = []
            for q in QUERIES:
                hits = (found[q] == np.arange(len(photos))).astype(float)
                mean, (low, high) = hits.mean(), mean_interval(hits)
                cells.append(f"{mean:.2f} [{low:.2f}, {high:.2f}]")
            print(f"{name:14} {1 + len(views.views):7d} {seconds:7.2f}  " + "  ".join(f"{c:>22}" for c in cells)
                  + f"  ({label})")


def _top1(trained, vectors: np.ndarray, owners: np.ndarray, distractors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The photo each query's nearest vector belongs to (-1: a distractor), in a copy of the trained index or
    exactly."""
    index = faiss.clone_index(trained) if trained is not None else faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.concatenate([vectors, distractors]))
    _, ids = index.search(queries, 1)
    labels = np.concatenate([owners, np.full(len(distractors), -1)])
    return labels[ids[:, 0]]


if __name__ == "__main__":
    main()
