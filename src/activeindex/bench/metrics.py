"""Retrieval and copy-detection metrics: pure functions over search results (faiss's D, I arrays).

Shapes: ``I`` and ``D`` are (nq, k) (ids, -1 for no result; distances ascending); ``gt`` is (nq,) with the
true id of each query, or -1 for a non-matching query (an image that is not indexed).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["recall_at_k", "PrecisionRecall", "micro_ap", "cell_agreement"]


def recall_at_k(I: np.ndarray, gt: np.ndarray, k: int) -> float:
    """Share of queries whose true id is among their first ``k`` results (matching queries only)."""
    nq = len(gt)
    assert I.shape[0] == nq, "one row of results per query"
    matching = gt >= 0
    hits = (I[matching, :k] == gt[matching, None]).any(axis=1)
    return float(hits.mean()) if hits.size else float("nan")


@dataclass
class PrecisionRecall:
    """A precision-recall curve over pooled (query, result) pairs and its average precision."""

    ap: float
    precision: np.ndarray
    recall: np.ndarray


def _pair_scores(D: np.ndarray, I: np.ndarray, normalize: bool) -> np.ndarray:
    """Confidence of each (query, rank) pair: -distance, or the gap to the next result (d_{j+1} - d_j).

    A result with no successor (the last one, or the last before faiss's -1 padding, whose distance is a
    huge sentinel) has no gap: it is left out of the normalised ranking.
    """
    if not normalize:
        return -D
    scores = np.full(D.shape, -np.inf)
    has_next = I[:, 1:] >= 0
    scores[:, :-1] = np.where(has_next, D[:, 1:] - D[:, :-1], -np.inf)
    return scores


def micro_ap(D: np.ndarray, I: np.ndarray, gt: np.ndarray, normalize: bool = False) -> PrecisionRecall:
    """Micro average precision (uAP) of copy detection over all pooled (query, result) pairs.

    A pair is positive when the result is the query's true id. Every matching query counts once in the
    recall denominator; one whose true id was never retrieved adds a positive pair at the very bottom.

    Args:
        D, I: (nq, k) search results.
        gt: (nq,) true ids, -1 for non-matching queries.
        normalize: score pairs by d_{j+1} - d_j instead of -d_j (the authors' score normalisation).
    """
    scores = _pair_scores(D.astype(np.float64), I, normalize)
    positive = (I == gt[:, None]) & (gt[:, None] >= 0)
    keep = (I >= 0) & np.isfinite(scores)
    flat_scores, flat_positive = scores[keep], positive[keep]
    n_matching = int((gt >= 0).sum())
    missed = n_matching - int(flat_positive.sum())
    order = np.argsort(-flat_scores, kind="stable")
    labels = np.concatenate([flat_positive[order], np.ones(missed, bool)])
    tp = np.cumsum(labels)
    precision = tp / np.arange(1, len(labels) + 1)
    recall = tp / max(n_matching, 1)
    ap = float(precision[labels].sum() / max(n_matching, 1))
    return PrecisionRecall(ap=ap, precision=precision, recall=recall)


def cell_agreement(query_cells: np.ndarray, original_cells: np.ndarray) -> float:
    """Share of queries that fall in the IVF cell of their original."""
    return float(np.mean(query_cells == original_cells))
