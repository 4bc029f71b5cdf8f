"""Tests of dropinf.metrics.detection on hand-made inputs with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dropinf import metrics


def brute_force_auc(scores: np.ndarray, noisy: np.ndarray) -> float:
    wins = 0.0
    for pos, neg in itertools.product(scores[noisy], scores[~noisy]):
        wins += 1.0 if pos > neg else 0.5 if pos == neg else 0.0
    return wins / (noisy.sum() * (~noisy).sum())


# --- ranks -----------------------------------------------------------------------------------


def test_average_ranks_share_ties():
    ranks = metrics.average_ranks(np.array([10.0, 30.0, 20.0, 30.0, 10.0]))
    np.testing.assert_array_equal(ranks, [1.5, 4.5, 3.0, 4.5, 1.5])


# --- detection -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_equals_brute_force_pair_count(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=40).astype(float)  # ties on purpose
    noisy = rng.random(40) < 0.3
    assert metrics.roc_auc(scores, noisy) == pytest.approx(brute_force_auc(scores, noisy))


def test_auc_extremes_and_empty_class():
    noisy = np.array([True, True, False, False, False])
    assert metrics.roc_auc(np.array([5.0, 4, 3, 2, 1]), noisy) == 1.0
    assert metrics.roc_auc(np.array([1.0, 2, 3, 4, 5]), noisy) == 0.0
    assert metrics.roc_auc(np.ones(5), noisy) == 0.5
    assert np.isnan(metrics.roc_auc(np.arange(5.0), np.zeros(5, dtype=bool)))


def test_precision_recall_at_k_hand_counted():
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.6, 0.3, 0.4, 0.5, 0.0])
    noisy = np.array([1, 0, 0, 1, 0, 1, 0, 0, 0, 1], dtype=bool)
    # inspection order: 0, 2, 3, 5, 8, 7, 6, 4, 1, 9
    np.testing.assert_array_equal(metrics.inspection_order(scores), [0, 2, 3, 5, 8, 7, 6, 4, 1, 9])
    assert metrics.precision_at_k(scores, noisy, 3) == pytest.approx(2 / 3)
    assert metrics.recall_at_k(scores, noisy, 3) == pytest.approx(2 / 4)
    assert metrics.recall_at_k(scores, noisy, 4) == pytest.approx(3 / 4)
    assert metrics.recall_at_k(scores, noisy, 100) == 1.0  # k clipped to n


def test_recall_at_share_uses_ceil_of_share():
    scores = np.arange(20.0)[::-1]  # example 0 most suspicious
    noisy = np.zeros(20, dtype=bool)
    noisy[[0, 1, 3, 10]] = True
    assert metrics.recall_at_share(scores, noisy, 0.05) == pytest.approx(1 / 4)  # top 1
    assert metrics.recall_at_share(scores, noisy, 0.1) == pytest.approx(2 / 4)  # top 2
    assert metrics.recall_at_share(scores, noisy, 0.2) == pytest.approx(3 / 4)  # top 4
    assert metrics.recall_at_share(scores, noisy, 0.16) == pytest.approx(3 / 4)  # ceil(3.2)=4
    with pytest.raises(ValueError, match="share"):
        metrics.recall_at_share(scores, noisy, 0.0)


def test_detection_report_collects_metrics():
    rng = np.random.default_rng(3)
    noisy = rng.random(200) < 0.1
    scores = noisy + 0.8 * rng.random(200)
    report = metrics.detection_report(scores, noisy, ks=(5, 10), shares=(0.1,))
    assert report.auc == pytest.approx(brute_force_auc(scores, noisy))
    assert report.n_noisy == noisy.sum() and report.n_train == 200
    assert report.precision_at_k[5] == metrics.precision_at_k(scores, noisy, 5)
    assert report.to_dict()["recall_at_share"]["0.1"] == metrics.recall_at_share(scores, noisy, 0.1)


def test_detection_rejects_bad_inputs():
    with pytest.raises(ValueError, match="one score per training example"):
        metrics.roc_auc(np.zeros(3), np.zeros(4, dtype=bool))
    with pytest.raises(ValueError, match="finite"):
        metrics.roc_auc(np.array([0.0, np.nan]), np.array([True, False]))
