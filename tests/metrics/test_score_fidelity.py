"""Tests of dropinf.metrics.fidelity (rank correlations, top overlap) with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dropinf import metrics


def test_rowwise_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(4, 30)).astype(float)  # many ties
    b = a + rng.normal(size=a.shape)
    expected = [stats.spearmanr(x, y).statistic for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(metrics.rowwise_spearman(a, b), expected, atol=1e-12)


def test_rowwise_pearson_constant_row_is_zero():
    a = np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
    b = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.5]])
    out = metrics.rowwise_pearson(a, b)
    assert out[0] == 0.0
    assert out[1] == pytest.approx(stats.pearsonr(a[1], b[1]).statistic)


def test_rowwise_pearson_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        metrics.rowwise_pearson(np.zeros((2, 3)), np.zeros((2, 4)))


def test_fidelity_identical_and_monotone_transform():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(5, 100))
    same = metrics.fidelity(reference, reference)
    assert same.spearman == pytest.approx(1.0) and same.pearson == pytest.approx(1.0)
    assert same.top_proponent_overlap == 1.0 and same.top_opponent_overlap == 1.0
    cubed = metrics.fidelity(reference**3, reference)
    assert cubed.spearman == pytest.approx(1.0)
    assert cubed.pearson < 0.99  # rank-preserving but not linear
    assert cubed.top_proponent_overlap == 1.0


def test_fidelity_negated_scores_swap_proponents_and_opponents():
    reference = np.random.default_rng(1).normal(size=(3, 50))
    flipped = metrics.fidelity(-reference, reference)
    assert flipped.spearman == pytest.approx(-1.0)
    assert flipped.top_proponent_overlap == 0.0 and flipped.top_opponent_overlap == 0.0


def test_top_overlap_hand_counted():
    reference = np.array([[5.0, 4, 3, 2, 1, 0]])
    scores = np.array([[5.0, 0, 3, 2, 1, 4]])  # top-3: {0, 5, 2} vs reference {0, 1, 2}
    np.testing.assert_allclose(metrics.top_overlap(scores, reference, top=3), [2 / 3])
