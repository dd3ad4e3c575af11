"""Metrics on hand-made search results with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from activeindex.bench.metrics import cell_agreement, micro_ap, recall_at_k


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
    assert micro_ap(D2, I, gt).ap == pytest.approx(0.5)


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
