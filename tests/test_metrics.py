"""Metrics on hand-made search results with known answers."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from activeindex.bench.metrics import (
    bootstrap,
    cell_agreement,
    interval,
    list_lengths,
    mean_interval,
    micro_ap,
    operating_point,
    paired_difference_interval,
    proportion_interval,
    recall_at_k,
    uap_difference_interval,
    uap_interval,
)


def test_recall_at_k():
    I = np.array([[5, 3, 1], [2, 4, 7], [9, 8, 6]])
    gt = np.array([5, 7, 1])
    assert recall_at_k(I, gt, 1) == pytest.approx(1 / 3)
    assert recall_at_k(I, gt, 3) == pytest.approx(2 / 3)


def test_recall_ignores_non_matching_queries():
    assert recall_at_k(np.array([[5], [2]]), np.array([5, -1]), 1) == 1.0


def test_uap_perfect_ranking():
    D = np.array([[0.1, 0.5], [0.3, 0.4]])
    I = np.array([[5, 3], [7, 8]])
    gt = np.array([5, -1])  # the second query is not a copy of anything indexed
    assert micro_ap(D, I, gt).ap == pytest.approx(1.0)


def test_uap_a_confident_false_positive_halves_precision():
    D = np.array([[0.1, 0.5], [0.05, 0.9]])
    I = np.array([[5, 3], [7, 8]])
    gt = np.array([5, -1])
    plain = micro_ap(D, I, gt)
    assert plain.ap == pytest.approx(0.5)  # the true pair ranks second: precision 1/2 at recall 1
    # normalised scores: query 0 has a gap of 0.4, query 1 of 0.85 -> still wrong first
    assert micro_ap(D, I, gt, normalize=True).ap == pytest.approx(0.5)
    D2 = np.array([[0.1, 0.9], [0.05, 0.1]])  # query 1's neighbours are all alike: a small gap
    assert micro_ap(D2, I, gt, normalize=True).ap == pytest.approx(1.0)
    # plain scores: q1's 7 (-0.05) first, then the true pair (q0, 5) TIES with (q1, 8) at -0.1: one threshold
    # holding 1 positive of 3 pairs -> AP = 1/3 (not 1/2, which putting the positive first among ties gave)
    assert micro_ap(D2, I, gt).ap == pytest.approx(1 / 3)


def test_uap_normalisation_ignores_faiss_padding():
    big = np.finfo(np.float32).max  # what faiss returns beside id -1 when fewer than k results exist
    D = np.array([[0.1, 0.6, big], [0.5, big, big]])
    I = np.array([[5, 3, -1], [7, -1, -1]])
    gt = np.array([5, -1])
    result = micro_ap(D, I, gt, normalize=True)
    assert result.ap == pytest.approx(1.0)  # query 1's lone result has no gap: it is not ranked at all
    assert len(result.precision) == 1


def test_uap_missed_queries_count_at_the_bottom():
    D = np.array([[0.1, 0.2], [0.3, 0.4]])
    I = np.array([[5, 3], [7, 8]])
    gt = np.array([5, 9])  # query 1's true id 9 was never retrieved
    result = micro_ap(D, I, gt)
    assert result.ap == pytest.approx((1.0 + 2 / 5) / 2)  # found at rank 1; missed one placed 5th of 5
    assert result.recall[-1] == 1.0 and len(result.precision) == 5


def test_cell_agreement():
    assert cell_agreement(np.array([1, 2, 3, 4]), np.array([1, 0, 3, 0])) == 0.5


def test_list_lengths_count_real_results_before_faiss_padding():
    I = np.array([[5, 3, 1], [7, -1, -1], [-1, -1, -1]])
    assert list_lengths(I).tolist() == [3, 1, 0]


# ---- ties: pairs with equal scores share one threshold (scikit-learn's average_precision_score) ----

TIES_D = np.array([[1.0, 1.0], [1.0, 3.0], [2.0, 3.0]])  # integer distances, as LSH's Hamming gives
TIES_I = np.array([[3, 5], [4, 7], [8, 9]])
TIES_GT = np.array([5, 7, -1])


def test_uap_tied_pairs_share_one_threshold():
    # Pairs by score: -1: (q0, 3) -, (q0, 5) +, (q1, 4) -  -> 1 positive of 3: P = 1/3, R = 1/2
    #                 -2: (q2, 8) -                         -> 1 of 4, no new positive: adds nothing
    #                 -3: (q1, 7) +, (q2, 9) -              -> 2 of 6: P = 1/3, R = 1
    # AP = (1/2 - 0) * 1/3 + (1 - 1/2) * 1/3 = 1/3. Ranking each positive first within its tie (the old
    # stable argsort in this column order) gave (1/2 + 2/5) / 2 = 0.45.
    result = micro_ap(TIES_D, TIES_I, TIES_GT)
    assert result.ap == pytest.approx(1 / 3)
    np.testing.assert_allclose(result.precision, [1 / 3, 1 / 4, 1 / 3])  # one point per distinct threshold
    np.testing.assert_allclose(result.recall, [1 / 2, 1 / 2, 1])


def test_uap_does_not_depend_on_the_order_of_tied_pairs():
    for rows in itertools.permutations(range(3)):
        for cols in itertools.permutations(range(2)):  # plain scores are -d per pair: column order is free
            D, I = TIES_D[np.ix_(rows, cols)], TIES_I[np.ix_(rows, cols)]
            assert micro_ap(D, I, TIES_GT[list(rows)]).ap == pytest.approx(1 / 3)


# ---- an independent, definition-based AP on random data with many ties ----

def reference_pairs(D, I, gt, normalize):
    """(score, is_positive) of every ranked pair, plus one (-inf, True) per matching query not found."""
    pairs = []
    for q in range(len(gt)):
        found = False
        for j in range(I.shape[1]):
            if I[q, j] < 0:
                continue
            if normalize:
                if j + 1 == I.shape[1] or I[q, j + 1] < 0:
                    continue  # no successor: no gap
                score = float(D[q, j + 1] - D[q, j])
            else:
                score = -float(D[q, j])
            positive = bool(gt[q] >= 0 and I[q, j] == gt[q])
            found |= positive
            pairs.append((score, positive))
        if gt[q] >= 0 and not found:
            pairs.append((-np.inf, True))
    return pairs


def reference_ap(D, I, gt, normalize):
    """AP = sum over distinct thresholds t (descending) of (R(t) - R(previous t)) * P(t), where P(t), R(t)
    count every pair with score >= t."""
    pairs = reference_pairs(D, I, gt, normalize)
    n_matching = int((gt >= 0).sum())
    ap, previous_recall = 0.0, 0.0
    for t in sorted({s for s, _ in pairs}, reverse=True):
        above = [p for s, p in pairs if s >= t]
        recall = sum(above) / n_matching
        ap += (recall - previous_recall) * sum(above) / len(above)
        previous_recall = recall
    return ap


def random_results(seed, nq=30, k=8, n_ids=20, missed=True):
    """Integer distances (many ties), -1 padding, matching and non-matching queries; with ``missed``, some
    true ids are never retrieved or sit last in their list (no gap when normalised), else none do."""
    rng = np.random.default_rng(seed)
    rows = np.arange(nq)
    I = np.stack([rng.choice(n_ids, k, replace=False) for _ in range(nq)])
    D = np.sort(rng.integers(0, 5, (nq, k)), axis=1).astype(np.float32)
    lengths = rng.integers(1, k + 1, nq)
    pad = np.arange(k)[None, :] >= lengths[:, None]
    I[pad], D[pad] = -1, np.finfo(np.float32).max
    matching = rng.random(nq) < 0.7
    if missed:
        gt = np.where(matching, I[rows, rng.integers(0, lengths)], -1)
        gt[matching & (rng.random(nq) < 0.2)] = n_ids + 1  # never retrieved
    else:
        matching &= lengths >= 2
        gt = np.where(matching, I[rows, rng.integers(0, np.maximum(lengths - 1, 1))], -1)
    return D, I, gt


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("missed", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_uap_matches_a_definition_based_ap(seed, missed, normalize):
    D, I, gt = random_results(seed, missed=missed)
    assert micro_ap(D, I, gt, normalize).ap == pytest.approx(reference_ap(D, I, gt, normalize), abs=1e-12)


# ---- bootstrap intervals ----

def test_bootstrap_is_seeded_and_stratified_resampling_keeps_stratum_sizes():
    strata = np.array([0] * 7 + [1] * 3)
    sizes = bootstrap(lambda idx: float((strata[idx] == 1).sum()), 10, strata=strata, n_boot=200)
    assert (sizes == 3).all()
    plain = bootstrap(lambda idx: float((strata[idx] == 1).sum()), 10, n_boot=200)
    assert len(np.unique(plain)) > 1  # without strata the count varies
    values = np.random.default_rng(0).random(10)
    draw = lambda seed: bootstrap(lambda idx: float(values[idx].mean()), 10, n_boot=50, seed=seed)  # noqa: E731
    np.testing.assert_array_equal(draw(1), draw(1))
    assert not np.array_equal(draw(1), draw(2))


def test_interval_ignores_nan():
    assert interval(np.array([np.nan, 0.0, 1.0, np.nan]), level=1.0) == (0.0, 1.0)
    assert np.isnan(interval(np.array([np.nan, np.nan]))).all()


def test_mean_interval_contains_the_mean_and_shrinks_with_more_data():
    rng = np.random.default_rng(0)
    small, large = rng.random(30) < 0.7, rng.random(3000) < 0.7
    low, high = mean_interval(small)
    assert low <= small.mean() <= high
    low_large, high_large = mean_interval(large)
    assert low_large <= large.mean() <= high_large
    assert high_large - low_large < (high - low) / 3
    assert mean_interval(small, seed=3) == mean_interval(small, seed=3)


def test_mean_interval_resamples_rows_of_a_matrix():
    hits = np.random.default_rng(1).random((40, 14)) < 0.6  # per image x edit
    assert mean_interval(hits) == pytest.approx(mean_interval(hits.mean(axis=1)))  # rows move together


def test_paired_differences_of_identical_inputs_are_exactly_zero():
    D, I, gt = random_results(0)
    assert mean_interval(np.zeros(25)) == (0.0, 0.0)
    assert uap_difference_interval(D, I, D, I, gt, n_boot=100) == (0.0, 0.0)
    assert uap_difference_interval(D, I, D, I, gt, normalize=True, n_boot=100) == (0.0, 0.0)


@pytest.mark.parametrize("normalize", [False, True])
def test_uap_interval_contains_the_point_estimate(normalize):
    D, I, gt = random_results(2, nq=60)
    low, high = uap_interval(D, I, gt, normalize, n_boot=300)
    assert low <= micro_ap(D, I, gt, normalize).ap <= high
    assert low < high


def test_uap_difference_interval_excludes_zero_when_a_is_clearly_better():
    rng = np.random.default_rng(0)
    nq, k = 60, 10
    I = np.stack([rng.choice(1000, k, replace=False) for _ in range(nq)])
    gt = np.where(np.arange(nq) < 40, I[:, 0], -1)  # 40 matching, 20 non-matching queries
    D_a = np.sort(rng.random((nq, k)), axis=1)
    D_a[:40, 0] = 0.0  # a: every true match is found first, closer than any false pair
    I_b = I.copy()
    I_b[:40] = I[:40, ::-1]  # b: the true match comes last
    D_b = np.sort(rng.random((nq, k)), axis=1)
    low, high = uap_difference_interval(D_a, I, D_b, I_b, gt, n_boot=300)
    assert 0 < low <= high


def test_a_proportion_interval_is_wilsons_and_never_a_point_at_0_or_1():
    assert proportion_interval(np.zeros(64, bool)) == pytest.approx((0.0, 1.959964 ** 2 / (64 + 1.959964 ** 2)))
    low, high = proportion_interval(np.ones(64, bool))
    assert high == 1.0 and 0.94 < low < 0.95  # 64/64: not [1, 1]
    assert proportion_interval(np.arange(10) < 5) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # textbook 5/10


def test_a_paired_difference_interval_is_honest_where_every_pair_agrees():
    same = np.ones(64, bool)
    low, high = paired_difference_interval(same, same)
    wilson_low = proportion_interval(same)[0]
    assert (low, high) == pytest.approx((-(1 - wilson_low), 1 - wilson_low))  # not [0, 0]
    a, b = np.arange(50) < 40, np.arange(50) < 30  # 10 pairs gained, none lost
    low, high = paired_difference_interval(a, b)
    assert 0 < low < a.mean() - b.mean() < high < 1


@pytest.mark.parametrize("p_a, p_b, agreement", [(0.8, 0.6, 0.7), (0.95, 0.95, 0.9), (0.5, 0.1, 0.0)])
def test_the_intervals_cover_the_truth_95_times_in_100(p_a, p_b, agreement):
    """2,000 simulated experiments of 40 paired items: each interval covers the true value at least 93 % of the
    time (an interval that was too narrow, or off-centre, would not)."""
    rng = np.random.default_rng(0)
    covered_a = covered_diff = 0
    for _ in range(2000):
        shared = rng.random(40)  # correlated pairs: the same draw decides both where `agreement` says so
        own = rng.random((2, 40))
        coupled = rng.random(40) < agreement
        a = np.where(coupled, shared, own[0]) < p_a
        b = np.where(coupled, shared, own[1]) < p_b
        low, high = proportion_interval(a)
        covered_a += low <= p_a <= high
        low, high = paired_difference_interval(a, b)
        covered_diff += low <= p_a - p_b <= high
    assert covered_a / 2000 >= 0.93 and covered_diff / 2000 >= 0.93


def test_the_operating_point_is_set_on_the_non_matching_queries_alone():
    nonmatching = np.arange(100, 300, dtype=float)  # 200 strangers: 1 % = 2 may be called copies
    distance = np.array([50.0, 101.0, 101.9, 102.0, 150.0])
    correct = np.array([True, True, False, True, True])
    point = operating_point(distance, correct, nonmatching)
    assert point.threshold == 102.0 and point.false_copies == 2 and point.nonmatching == 200
    assert point.true_copies.tolist() == [True, True, False, False, False] and point.rate == 0.4
    moved = operating_point(distance * 0.5, correct, nonmatching)  # the matching queries do not move it
    assert moved.threshold == point.threshold
    assert operating_point(distance, correct, nonmatching + 100).threshold == 202.0
    assert operating_point(distance, correct, np.full(200, 7.0)).rate == 0.0  # ties at the threshold are no copy
