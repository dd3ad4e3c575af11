"""Retrieval and copy-detection metrics: pure functions over search results (faiss's D, I arrays).

Shapes: ``I`` and ``D`` are (nq, k) (ids, -1 for no result; distances ascending); ``gt`` is (nq,) with the
true id of each query, or -1 for a non-matching query (an image that is not indexed).

Uncertainty: with a few hundred queries one query moves R@1 or uAP by a visible amount, so every number
can be given a 95 % interval. A share of hits (R@1 of one edit) gets Wilson's score interval and a paired
difference of two such shares Newcombe's (both stay honest at 0 and 1, where a percentile bootstrap collapses
to a point); means of other per-item values and uAP get a percentile bootstrap that resamples queries (numpy
only, seeded).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "hits_at_k",
    "recall_at_k",
    "PrecisionRecall",
    "micro_ap",
    "list_lengths",
    "cell_agreement",
    "bootstrap",
    "interval",
    "mean_interval",
    "proportion_interval",
    "paired_difference_interval",
    "OperatingPoint",
    "operating_point",
    "uap_interval",
    "uap_difference_interval",
]


def hits_at_k(I: np.ndarray, gt: np.ndarray, k: int) -> np.ndarray:
    """Per matching query (gt >= 0), in order: is its true id among its first ``k`` results."""
    assert I.shape[0] == len(gt), "one row of results per query"
    matching = gt >= 0
    return (I[matching, :k] == gt[matching, None]).any(axis=1)


def recall_at_k(I: np.ndarray, gt: np.ndarray, k: int) -> float:
    """Share of queries whose true id is among their first ``k`` results (matching queries only)."""
    hits = hits_at_k(I, gt, k)
    return float(hits.mean()) if hits.size else float("nan")


def list_lengths(I: np.ndarray) -> np.ndarray:
    """Number of real results per query (ids >= 0; faiss pads short lists with -1).

    Reported next to the normalised uAP: when lists are shorter than k, the gap to the end of a list
    is not scored, so list lengths change what the normalised score measures.
    """
    return (I >= 0).sum(axis=1)


@dataclass
class PrecisionRecall:
    """A precision-recall curve over pooled (query, result) pairs and its average precision.

    One point per distinct score threshold, highest first: tied pairs enter the ranking together.
    """

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


@dataclass(frozen=True)
class _Pairs:
    """The pooled ranking once: each ranked pair's query, threshold (0 = highest score) and label."""

    query: np.ndarray
    threshold: np.ndarray
    positive: np.ndarray
    n_thresholds: int


def _pooled_pairs(D: np.ndarray, I: np.ndarray, gt: np.ndarray, normalize: bool) -> _Pairs:
    """Pool the scored pairs; a matching query whose true id is not ranked adds a positive at the bottom.

    The missed pairs get score -inf: they share one threshold below every real (finite) score.
    """
    assert D.shape == I.shape and I.shape[0] == len(gt), "D, I are (nq, k) and gt is (nq,)"
    scores = _pair_scores(D.astype(np.float64), I, normalize)
    positive = (I == gt[:, None]) & (gt[:, None] >= 0)
    keep = (I >= 0) & np.isfinite(scores)
    query = np.nonzero(keep)[0]
    found = np.bincount(query, weights=positive[keep], minlength=len(gt))
    missed = np.flatnonzero((gt >= 0) & (found == 0))
    query = np.concatenate([query, missed])
    flat_scores = np.concatenate([scores[keep], np.full(len(missed), -np.inf)])
    labels = np.concatenate([positive[keep], np.ones(len(missed), bool)])
    distinct, threshold = np.unique(-flat_scores, return_inverse=True)  # ascending -score: highest first
    return _Pairs(query, threshold.ravel(), labels, len(distinct))


def _ap(tp: np.ndarray, n: np.ndarray, n_positive: float) -> tuple[float, np.ndarray, np.ndarray]:
    """AP = sum_n (R_n - R_{n-1}) P_n from per-threshold (highest first) positive and pair counts.

    R_n - R_{n-1} = tp_n / n_positive, so thresholds without a positive add nothing (and may be empty).
    """
    cum_tp, cum_n = np.cumsum(tp), np.cumsum(n)
    precision = np.divide(cum_tp, cum_n, out=np.zeros_like(cum_tp), where=cum_n > 0)
    if n_positive == 0:
        return float("nan"), precision, np.full_like(cum_tp, np.nan)
    return float((tp * precision).sum() / n_positive), precision, cum_tp / n_positive


def micro_ap(D: np.ndarray, I: np.ndarray, gt: np.ndarray, normalize: bool = False) -> PrecisionRecall:
    """Micro average precision (uAP) of copy detection over all pooled (query, result) pairs.

    A pair is positive when the result is the query's true id. Every matching query counts once in the
    recall denominator; one whose true id was never retrieved (or, normalised, has no gap) adds a positive
    pair at the very bottom. Tie-aware, as scikit-learn's ``average_precision_score``: pairs with equal
    scores share one threshold, so integer distances (e.g. Hamming) cannot favour positives by their order.
    With no matching query AP is undefined (nan).

    Args:
        D, I: (nq, k) search results.
        gt: (nq,) true ids, -1 for non-matching queries.
        normalize: score pairs by d_{j+1} - d_j instead of -d_j (the authors' score normalisation).
    """
    pairs = _pooled_pairs(D, I, gt, normalize)
    tp = np.bincount(pairs.threshold, weights=pairs.positive, minlength=pairs.n_thresholds)
    n = np.bincount(pairs.threshold, minlength=pairs.n_thresholds).astype(np.float64)
    ap, precision, recall = _ap(tp, n, int((gt >= 0).sum()))
    return PrecisionRecall(ap=ap, precision=precision, recall=recall)


def cell_agreement(query_cells: np.ndarray, original_cells: np.ndarray) -> float:
    """Share of queries that fall in the IVF cell of their original."""
    return float(np.mean(query_cells == original_cells))


def bootstrap(
    statistic: Callable[[np.ndarray], float],
    n: int,
    strata: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """``n_boot`` values of ``statistic(idx)``, each ``idx`` a resample with replacement of range(n).

    With ``strata`` ((n,) labels) each stratum is resampled on its own and keeps its size, so e.g. the
    numbers of matching and non-matching queries stay those of the experiment.
    """
    if strata is None:
        groups = [np.arange(n)]
    else:
        assert len(strata) == n, "one stratum label per item"
        groups = [np.flatnonzero(strata == label) for label in np.unique(strata)]
    rng = np.random.default_rng(seed)
    samples = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        samples[b] = statistic(idx)
    return samples


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap samples; nan samples are ignored ((nan, nan) if all are)."""
    finite = samples[~np.isnan(samples)]
    if not finite.size:
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def mean_interval(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of the mean of per-item values, resampling items (rows).

    ``values`` is (n,) or (n, m) per item and column (e.g. hits per image x edit): rows are resampled
    together, so the columns of one item stay paired. For active - passive pass per-item differences.
    """
    values = np.asarray(values, dtype=np.float64)
    return interval(bootstrap(lambda idx: float(values[idx].mean()), len(values), n_boot=n_boot, seed=seed))


Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def _wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    p = k / n
    centre, spread = (p + z * z / (2 * n)) / (1 + z * z / n), z / (1 + z * z / n)
    half = spread * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion_interval(hits: np.ndarray) -> tuple[float, float]:
    """Wilson's 95 % score interval of a share of hits ((n,) booleans or 0/1): never a point, even at 0/n or
    n/n, where 0/64 gives [0, 0.057] (nan, nan for no item)."""
    hits = np.asarray(hits, dtype=bool)
    return _wilson(float(hits.sum()), hits.size) if hits.size else (float("nan"), float("nan"))


def paired_difference_interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """95 % interval of mean(a) - mean(b) for paired hits on the same items ((n,) booleans each): Newcombe's
    method 10 (Statistics in Medicine 17, 1998), built from the two Wilson intervals and the correlation of the
    pairs. Honest where every pair agrees: n identical pairs give about +-(1 - Wilson's lower bound)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    assert a.shape == b.shape and a.ndim == 1, "one pair of hits per item"
    n = a.size
    if not n:
        return float("nan"), float("nan")
    both, only_a, only_b = float((a & b).sum()), float((a & ~b).sum()), float((~a & b).sum())
    neither = n - both - only_a - only_b
    p_a, p_b = (both + only_a) / n, (both + only_b) / n
    (low_a, high_a), (low_b, high_b) = _wilson(both + only_a, n), _wilson(both + only_b, n)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / np.sqrt(margins) if margins > 0 else 0.0
    down = np.sqrt(max(0.0, (p_a - low_a) ** 2 - 2 * phi * (p_a - low_a) * (high_b - p_b) + (high_b - p_b) ** 2))
    up = np.sqrt(max(0.0, (high_a - p_a) ** 2 - 2 * phi * (high_a - p_a) * (p_b - low_b) + (p_b - low_b) ** 2))
    return float(p_a - p_b - down), float(p_a - p_b + up)


@dataclass(frozen=True)
class OperatingPoint:
    """Copy detection at a matched false-copy rate: the distance below which a top-1 result is called a copy,
    chosen on the non-matching queries alone, and per matching query whether it was called a copy of its true
    original."""

    threshold: float
    false_copies: int  # non-matching queries called a copy at that threshold
    nonmatching: int
    true_copies: np.ndarray  # (n_matching,) booleans

    @property
    def rate(self) -> float:
        return float(self.true_copies.mean())


def operating_point(distance: np.ndarray, correct: np.ndarray, nonmatching_distance: np.ndarray,
                    false_rate: float = 0.01) -> OperatingPoint:
    """True-copy rate at ``false_rate`` false copies: a query is called a copy when its top-1 distance is
    strictly below the threshold, the (m + 1)-th smallest non-matching top-1 distance with m = floor(false_rate x
    n_nonmatching), so at most m non-matching queries are called copies (ties at the threshold are not).

    Args:
        distance, correct: (n_matching,) top-1 distance of each matching query and whether that result is its
            true original (a query with no result: distance inf).
        nonmatching_distance: (n_nonmatching,) top-1 distance of each non-matching query.
    """
    ranked = np.sort(np.asarray(nonmatching_distance, dtype=np.float64))
    allowed = int(np.floor(false_rate * len(ranked)))
    threshold = float(ranked[allowed]) if allowed < len(ranked) else float("inf")
    return OperatingPoint(threshold=threshold, false_copies=int((ranked < threshold).sum()),
                          nonmatching=len(ranked), true_copies=np.asarray(correct, bool) & (distance < threshold))


def _uap_statistic(D: np.ndarray, I: np.ndarray, gt: np.ndarray, normalize: bool) -> Callable[[np.ndarray], float]:
    """uAP of a resample of queries, without re-sorting: a query drawn c times weighs its pairs by c."""
    pairs = _pooled_pairs(D, I, gt, normalize)
    matching = gt >= 0
    weighted_positive = pairs.positive.astype(np.float64)

    def uap(idx: np.ndarray) -> float:
        count = np.bincount(idx, minlength=len(gt)).astype(np.float64)
        weight = count[pairs.query]
        tp = np.bincount(pairs.threshold, weights=weight * weighted_positive, minlength=pairs.n_thresholds)
        n = np.bincount(pairs.threshold, weights=weight, minlength=pairs.n_thresholds)
        return _ap(tp, n, count[matching].sum())[0]

    return uap


def uap_interval(
    D: np.ndarray, I: np.ndarray, gt: np.ndarray, normalize: bool = False, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95 % interval of uAP, resampling queries within matching / non-matching (their counts stay fixed)."""
    uap = _uap_statistic(D, I, gt, normalize)
    return interval(bootstrap(uap, len(gt), strata=gt >= 0, n_boot=n_boot, seed=seed))


def uap_difference_interval(
    D_a: np.ndarray,
    I_a: np.ndarray,
    D_b: np.ndarray,
    I_b: np.ndarray,
    gt: np.ndarray,
    normalize: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """95 % interval of uAP(a) - uAP(b) for the same queries (same ``gt``), paired: each resample of
    query indices is used for both, so the query-to-query spread they share cancels out.
    """
    uap_a = _uap_statistic(D_a, I_a, gt, normalize)
    uap_b = _uap_statistic(D_b, I_b, gt, normalize)
    return interval(bootstrap(lambda idx: uap_a(idx) - uap_b(idx), len(gt), strata=gt >= 0, n_boot=n_boot, seed=seed))
