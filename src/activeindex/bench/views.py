"""The benchmark's views setting: the same index with each image's views (views.py) beside it, paired per image.

With ``views`` set in the config, every original and every distractor PHOTO gets its view vectors (the random
distractor crops stay one vector each: they are already views of those photos), under its image's id; the
view index is a copy of the index plus them. Every mode's queries are searched in both, so each row "MODE,
views" is paired per image with "MODE". A search asks for ``k`` times the vectors per image and keeps each
image's first (best) rank, as the product does (live_index.py). The cost is measured side by side in one run:
vectors in the index, registration (encoding an image with and without its views) and query time.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from ..codec import search
from ..extractor import Extractor, network_input
from ..imageio import load_image
from ..progress import progress_bar
from ..views import ViewSet, encode_views

__all__ = ["SUFFIX", "view_vectors", "view_index", "search_images", "query_times"]

SUFFIX = ", views"  # a mode's name in the views index: "active, views"


def view_vectors(get: Callable[[str, str, Callable[[], np.ndarray]], np.ndarray], key: str, extractor: Extractor,
                 paths: list[Path], views: ViewSet, name: str, progress: bool | None) -> tuple[np.ndarray, np.ndarray]:
    """((n, V, d) view descriptors, (2,) seconds per image to encode it alone and with its views), cached by
    ``get(name, key, compute)``; the timing is of the run that computed them."""
    def compute() -> np.ndarray:
        out, seconds = np.zeros((len(paths), len(views.views), extractor.dim), np.float32), np.zeros(2)
        bar = progress_bar(len(paths), f"views of {name}", progress)
        for i, path in enumerate(paths):
            whole = network_input(load_image(path), extractor.preprocessing)
            start = time.perf_counter()
            extractor.encode_network_inputs([whole])
            middle = time.perf_counter()
            out[i] = encode_views(extractor, [whole], views)[0]
            seconds += [middle - start, time.perf_counter() - start]
            bar.update(1)
        bar.close()
        return np.concatenate([out.reshape(len(paths), -1), np.tile(seconds / max(1, len(paths)), (len(paths), 1))], 1)
    stored = get(f"views-{name}", key, compute)
    return stored[:, :-2].reshape(len(paths), len(views.views), extractor.dim), stored[0, -2:]


def view_index(index: faiss.Index, image_views: list[tuple[np.ndarray, np.ndarray]]) -> faiss.Index:
    """A copy of ``index`` plus, for each (ids (n,), views (n, V, d)), every view under its image's id."""
    copy = faiss.clone_index(index)
    for ids, views in image_views:
        copy.add_with_ids(views.reshape(-1, views.shape[-1]), np.repeat(ids, views.shape[1]))
    return copy


def search_images(index: faiss.Index, queries: np.ndarray, k: int, per_image: int) -> tuple[np.ndarray, np.ndarray]:
    """(D, I) of the ``k`` nearest distinct images, each at its best vector's rank (-1 padded)."""
    D, I = search(index, queries, k * per_image)
    out_d, out_i = np.full((len(I), k), np.inf, np.float32), np.full((len(I), k), -1, np.int64)
    for row, (ids, distances) in enumerate(zip(I, D)):
        _, first = np.unique(ids, return_index=True)
        first = np.sort(first[ids[first] >= 0])[:k]
        out_i[row, :len(first)], out_d[row, :len(first)] = ids[first], distances[first]
    return out_d, out_i


def query_times(index: faiss.Index, views: faiss.Index, queries: np.ndarray, k: int, per_image: int,
                repeats: int = 3) -> dict[str, float]:
    """Milliseconds per query without and with views, interleaved and best of ``repeats`` (a noisy machine)."""
    best = {"without": np.inf, "with": np.inf}
    for _ in range(repeats):
        start = time.perf_counter()
        search(index, queries, k)
        middle = time.perf_counter()
        search_images(views, queries, k, per_image)
        best["without"] = min(best["without"], middle - start)
        best["with"] = min(best["with"], time.perf_counter() - middle)
    return {name: 1000 * seconds / len(queries) for name, seconds in best.items()}
