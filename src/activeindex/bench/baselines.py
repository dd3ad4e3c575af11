"""What the benchmark compares the indexes with, on the same queries and references: PDQ, Meta's perceptual
hash (what deployed hash-matching systems use), and exact search over the uncompressed SSCD descriptors (no
quantisation: what the descriptor alone achieves, so a passive index's gap to it is the index's doing).

Shapes: PDQ hashes are (n, 32) uint8, the 256 bits packed; ``ids`` are the references' ids, as the indexes
hold them; a ``D, I`` returned here are (n, 1): the Hamming distance and the id (int64, -1 for "no match"),
ready for `metrics.hits_at_k` and `metrics.operating_point`. As for every index in the benchmark, R@1 is plain
nearest-neighbour top-1: no distance threshold (copy detection at a chosen false-copy rate is measured apart).
"""
from __future__ import annotations

from collections.abc import Iterable

import faiss
import numpy as np
import pdqhash

__all__ = ["BASELINES", "PDQ_BITS", "PDQ_VERSION", "pdq_hash", "pdq_hashes", "pdq_distance",
           "pdq_nearest", "exact_index"]

BASELINES = ("pdq", "exact_sscd")  # their rows come first in every per-edit table, in this order
PDQ_BITS = 256
PDQ_VERSION = f"pdqhash {pdqhash.__version__}"  # part of the cache keys: another binding may hash differently


def pdq_hash(image: np.ndarray) -> np.ndarray:
    """PDQ hash of one (H, W, 3) uint8 RGB image: (32,) uint8, the 256 bits packed."""
    # quality unused: Meta's "discard hashes of quality <= 49" would drop queries, which R@1 counts as misses
    bits, _quality = pdqhash.compute(np.ascontiguousarray(image))
    return np.packbits(bits.astype(np.uint8))


def pdq_hashes(images: Iterable[np.ndarray]) -> np.ndarray:
    """PDQ hashes of images, one at a time (they need not fit in memory): (n, 32) uint8."""
    return np.array([pdq_hash(image) for image in images], np.uint8).reshape(-1, PDQ_BITS // 8)


def pdq_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between packed hashes (broadcast over leading axes): number of differing bits."""
    return np.unpackbits(np.bitwise_xor(a, b), axis=-1).sum(axis=-1)


def pdq_nearest(queries: np.ndarray, references: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the Hamming distance to its nearest reference and that reference's id, -1 when another
    reference is as near (a tie names no copy: faiss's order among equal integer distances would otherwise
    decide): (n, 1) float32 and (n, 1) int64.
    """
    assert queries.shape[1:] == references.shape[1:] == (PDQ_BITS // 8,), "packed 256-bit PDQ hashes"
    index = faiss.IndexBinaryFlat(PDQ_BITS)
    index.add(np.ascontiguousarray(references))
    D, I = index.search(np.ascontiguousarray(queries), min(2, len(references)))
    alone = D[:, 1] > D[:, 0] if D.shape[1] > 1 else np.ones(len(D), bool)
    found = (I[:, 0] >= 0) & alone
    return D[:, :1].astype(np.float32), np.where(found, np.asarray(ids)[I[:, 0]], -1)[:, None].astype(np.int64)


def exact_index(database: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """Exhaustive L2 search over uncompressed (n, d) float32 descriptors, holding ``ids`` (no quantisation)."""
    index = faiss.IndexIDMap(faiss.IndexFlatL2(database.shape[1]))
    index.add_with_ids(np.ascontiguousarray(database, np.float32), np.asarray(ids, np.int64))
    return index
