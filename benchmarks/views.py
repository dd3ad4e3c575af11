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
import dataclasses
import glob
import json
import math
import time
from pathlib import Path

import faiss
import numpy as np
from PIL import Image

from activeindex import ActivationConfig, Activator, Extractor
from activeindex.bench.metrics import mean_interval
from activeindex.codec import Codec
from activeindex.edits import brightness, jpeg, random_crop, rotation
from activeindex.extractor import network_input
from activeindex.imageio import load_image
from activeindex.views import DEFAULT_VIEWS, NO_VIEWS, VIEW_SETS, get_view_set, view_inputs
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
    parser.add_argument("--activate", action="store_true", help="activated photos: passive and activated views")
    parser.add_argument("--corpus", type=Path, help="the benchmark corpus instead of wallpapers among stamps")
    args = parser.parse_args()
    extractor = Extractor(device="cpu")
    photos, distractors, training, setting = (corpus_setting if args.corpus else wallpaper_setting)(args)
    codec = Codec.create("IVF32,PQ8x8", extractor.dim)
    codec.train(extractor.encode(training, progress=False))
    distractor_vectors = extractor.encode(distractors, progress=False)
    print(f"{setting}; IVF32,PQ8x8 on {len(training)} photos, nprobe 1; R@1 [95 % interval over photos]")
    (activation_table if args.activate else view_set_table)(args, extractor, codec, photos, distractor_vectors)


def wallpaper_setting(args) -> tuple[list[str], list[str], list[str], str]:
    """(photos, distractors, training photos, its description): wallpapers among Tux Paint stamps."""
    rng = np.random.default_rng(args.seed)
    photos = wallpapers(args.photos, args.seed, WALLPAPERS)
    stamps = sorted(p for p in glob.glob(STAMPS, recursive=True) if min(Image.open(p).size) >= 64)
    stamps = [stamps[i] for i in rng.choice(len(stamps), args.stamps, replace=False)]
    return photos, stamps, sorted(glob.glob(NEBULAE)), (f"{args.photos} wallpapers (seed {args.seed}) among "
                                                        f"{args.stamps} stamps")


def corpus_setting(args) -> tuple[list[str], list[str], list[str], str]:
    """The benchmark corpus: a seeded draw of its activate split among its distractors, trained on its train split."""
    images = json.loads((args.corpus / "manifest.json").read_text())["images"]
    split = {name: [str(args.corpus / i["file"]) for i in images if i["split"] == name]
             for name in ("activate", "distractors", "train")}
    chosen = np.random.default_rng(args.seed).choice(len(split["activate"]), args.photos, replace=False)
    return ([split["activate"][i] for i in sorted(chosen)], split["distractors"], split["train"],
            f"{args.photos} corpus photos (seed {args.seed}) among {len(split['distractors'])} distractors")


def _copies(images: list[np.ndarray], seed: int) -> dict[str, list[np.ndarray]]:
    """Each query edit of each image, drawn per image and edit from ``seed`` (the same draws for every arm)."""
    return {name: [edit(image, np.random.default_rng([seed, i, q])) for i, image in enumerate(images)]
            for q, (name, edit) in enumerate(QUERIES.items())}


def view_set_table(args, extractor: Extractor, codec: Codec, photos: list[str], distractors: np.ndarray) -> None:
    """R@1 of each query edit with each candidate view set indexed (passive descriptors), and its cost."""
    queries = {q: extractor.encode_arrays(x) for q, x in _copies([load_image(p) for p in photos], args.seed).items()}
    print(f"{'view set':14} {'vectors':>7} {'s/image':>7}  " + "  ".join(f"{q:>22}" for q in QUERIES))
    for name in args.sets:
        views = get_view_set(name)
        vectors, owners, seconds = encode_with_views(extractor, photos, views)
        for trained, label in ((codec.trained, "IVF32,PQ8x8"), (None, "exact")):
            found = {q: _top1(trained, vectors, owners, distractors, x)[0] for q, x in queries.items()}
            print(f"{name:14} {1 + len(views.views):7d} {seconds:7.2f}  {_cells(found, len(photos))}  ({label})")


def activation_table(args, extractor: Extractor, codec: Codec, photos: list[str], distractors: np.ndarray) -> None:
    """R@1 of copies of activated photos in the index with the default views: the views passive or activated,
    and query views; activation time beside the default's without views."""
    views = get_view_set(DEFAULT_VIEWS)
    vectors, owners, _ = encode_with_views(extractor, photos, views)
    originals = [load_image(p) for p in photos]
    arms = {"passive": (originals, None, None)}
    for name, view_set, draws in (("active, no views", NO_VIEWS, 0), ("active", views, 0),
                                  ("active, 1 view drawn", views, 1), ("active, 2 views drawn", views, 2)):
        activator = Activator(extractor, codec, dataclasses.replace(ActivationConfig(), view_draws=draws),
                              views=view_set)
        start = time.perf_counter()
        results = activator.activate(originals, progress=False)
        seconds = (time.perf_counter() - start) / len(photos)
        arms[name] = ([r.image for r in results], seconds, float(np.mean([r.psnr for r in results])))
    default_seconds = arms.pop("active, no views")[1]  # its files are "active"'s: the same seeds and loss
    print(f"activation time relative to the default's without views ({default_seconds:.2f} s/photo)")
    print(f"{'arm':28} {'time':>7} {'PSNR':>5}  " + "  ".join(f"{q:>22}" for q in QUERIES))
    baseline = None
    for name, (images, seconds, spent) in arms.items():
        copies = _copies(images, args.seed)
        queries = {q: extractor.encode_arrays(x) for q, x in copies.items()}
        found = {q: _top1(codec.trained, vectors, owners, distractors, x)[0] for q, x in queries.items()}
        cost = "" if seconds is None else f"{seconds / default_seconds:6.2f}x {spent:5.1f}"
        print(f"{name:28} {cost:>13}  {_cells(found, len(photos))}")
        if name == "active":
            baseline = copies
    found = {q: _with_query_views(extractor, codec, vectors, owners, distractors, x) for q, x in baseline.items()}
    print(f"{'active, 5 query views':28} {'5.00x q':>13}  {_cells(found, len(photos))}")


def _cells(found: dict[str, np.ndarray], n: int) -> str:
    """R@1 [95 % interval] per query edit, from the photo each query found."""
    cells = []
    for q in QUERIES:
        hits = (found[q] == np.arange(n)).astype(float)
        mean, (low, high) = hits.mean(), mean_interval(hits)
        cells.append(f"{mean:.2f} [{low:.2f}, {high:.2f}]")
    return "  ".join(f"{c:>22}" for c in cells)


QUERY_TURNS = (-30, -15, 15, 30)  # degrees each query is also turned back by (`_with_query_views`)


def _with_query_views(extractor, codec, vectors, owners, distractors, copies: list[np.ndarray]) -> np.ndarray:
    """The photo each copy's nearest vector belongs to, over the copy and its turns by `QUERY_TURNS`, batched in
    one encode (five queries a copy)."""
    batch = [turned for image in copies for turned in [image, *(rotation(t)(image, None) for t in QUERY_TURNS)]]
    labels, distances = _top1(codec.trained, vectors, owners, distractors, extractor.encode_arrays(batch))
    per_copy = 1 + len(QUERY_TURNS)
    labels, distances = labels.reshape(-1, per_copy), distances.reshape(-1, per_copy)
    return labels[np.arange(len(labels)), distances.argmin(1)]


def _top1(trained, vectors: np.ndarray, owners: np.ndarray, distractors: np.ndarray,
          queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the photo each query's nearest vector belongs to (-1: a distractor), its distance), in a copy of the
    trained index or exactly (L2 on unit vectors: the cosine's order)."""
    index = faiss.clone_index(trained) if trained is not None else faiss.IndexFlatL2(vectors.shape[1])
    index.add(np.concatenate([vectors, distractors]))
    D, ids = index.search(queries, 1)
    labels = np.concatenate([owners, np.full(len(distractors), -1)])
    return labels[ids[:, 0]], D[:, 0]


if __name__ == "__main__":
    main()
