"""Tests of dropinf.metrics on hand-made inputs with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.utils.data import TensorDataset

from dropinf import metrics as evaluate


def brute_force_auc(scores: np.ndarray, noisy: np.ndarray) -> float:
    wins = 0.0
    for pos, neg in itertools.product(scores[noisy], scores[~noisy]):
        wins += 1.0 if pos > neg else 0.5 if pos == neg else 0.0
    return wins / (noisy.sum() * (~noisy).sum())


# --- ranks and correlations ------------------------------------------------------------------


def test_average_ranks_share_ties():
    ranks = evaluate.average_ranks(np.array([10.0, 30.0, 20.0, 30.0, 10.0]))
    np.testing.assert_array_equal(ranks, [1.5, 4.5, 3.0, 4.5, 1.5])


def test_rowwise_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(4, 30)).astype(float)  # many ties
    b = a + rng.normal(size=a.shape)
    expected = [stats.spearmanr(x, y).statistic for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(evaluate.rowwise_spearman(a, b), expected, atol=1e-12)


def test_rowwise_pearson_constant_row_is_zero():
    a = np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
    b = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.5]])
    out = evaluate.rowwise_pearson(a, b)
    assert out[0] == 0.0
    assert out[1] == pytest.approx(stats.pearsonr(a[1], b[1]).statistic)


def test_rowwise_pearson_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        evaluate.rowwise_pearson(np.zeros((2, 3)), np.zeros((2, 4)))


# --- detection -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_equals_brute_force_pair_count(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=40).astype(float)  # ties on purpose
    noisy = rng.random(40) < 0.3
    assert evaluate.roc_auc(scores, noisy) == pytest.approx(brute_force_auc(scores, noisy))


def test_auc_extremes_and_empty_class():
    noisy = np.array([True, True, False, False, False])
    assert evaluate.roc_auc(np.array([5.0, 4, 3, 2, 1]), noisy) == 1.0
    assert evaluate.roc_auc(np.array([1.0, 2, 3, 4, 5]), noisy) == 0.0
    assert evaluate.roc_auc(np.ones(5), noisy) == 0.5
    assert np.isnan(evaluate.roc_auc(np.arange(5.0), np.zeros(5, dtype=bool)))


def test_precision_recall_at_k_hand_counted():
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.6, 0.3, 0.4, 0.5, 0.0])
    noisy = np.array([1, 0, 0, 1, 0, 1, 0, 0, 0, 1], dtype=bool)
    # inspection order: 0, 2, 3, 5, 8, 7, 6, 4, 1, 9
    np.testing.assert_array_equal(evaluate.inspection_order(scores), [0, 2, 3, 5, 8, 7, 6, 4, 1, 9])
    assert evaluate.precision_at_k(scores, noisy, 3) == pytest.approx(2 / 3)
    assert evaluate.recall_at_k(scores, noisy, 3) == pytest.approx(2 / 4)
    assert evaluate.recall_at_k(scores, noisy, 4) == pytest.approx(3 / 4)
    assert evaluate.recall_at_k(scores, noisy, 100) == 1.0  # k clipped to n


def test_recall_at_share_uses_ceil_of_share():
    scores = np.arange(20.0)[::-1]  # example 0 most suspicious
    noisy = np.zeros(20, dtype=bool)
    noisy[[0, 1, 3, 10]] = True
    assert evaluate.recall_at_share(scores, noisy, 0.05) == pytest.approx(1 / 4)  # top 1
    assert evaluate.recall_at_share(scores, noisy, 0.1) == pytest.approx(2 / 4)  # top 2
    assert evaluate.recall_at_share(scores, noisy, 0.2) == pytest.approx(3 / 4)  # top 4
    assert evaluate.recall_at_share(scores, noisy, 0.16) == pytest.approx(3 / 4)  # ceil(3.2)=4
    with pytest.raises(ValueError, match="share"):
        evaluate.recall_at_share(scores, noisy, 0.0)


def test_detection_report_collects_metrics():
    rng = np.random.default_rng(3)
    noisy = rng.random(200) < 0.1
    scores = noisy + 0.8 * rng.random(200)
    report = evaluate.detection_report(scores, noisy, ks=(5, 10), shares=(0.1,))
    assert report.auc == pytest.approx(brute_force_auc(scores, noisy))
    assert report.n_noisy == noisy.sum() and report.n_train == 200
    assert report.precision_at_k[5] == evaluate.precision_at_k(scores, noisy, 5)
    assert report.to_dict()["recall_at_share"]["0.1"] == evaluate.recall_at_share(
        scores, noisy, 0.1
    )


def test_detection_rejects_bad_inputs():
    with pytest.raises(ValueError, match="one score per training example"):
        evaluate.roc_auc(np.zeros(3), np.zeros(4, dtype=bool))
    with pytest.raises(ValueError, match="finite"):
        evaluate.roc_auc(np.array([0.0, np.nan]), np.array([True, False]))


# --- fidelity --------------------------------------------------------------------------------


def test_fidelity_identical_and_monotone_transform():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(5, 100))
    same = evaluate.fidelity(reference, reference)
    assert same.spearman == pytest.approx(1.0) and same.pearson == pytest.approx(1.0)
    assert same.top_proponent_overlap == 1.0 and same.top_opponent_overlap == 1.0
    cubed = evaluate.fidelity(reference**3, reference)
    assert cubed.spearman == pytest.approx(1.0)
    assert cubed.pearson < 0.99  # rank-preserving but not linear
    assert cubed.top_proponent_overlap == 1.0


def test_fidelity_negated_scores_swap_proponents_and_opponents():
    reference = np.random.default_rng(1).normal(size=(3, 50))
    flipped = evaluate.fidelity(-reference, reference)
    assert flipped.spearman == pytest.approx(-1.0)
    assert flipped.top_proponent_overlap == 0.0 and flipped.top_opponent_overlap == 0.0


def test_top_overlap_hand_counted():
    reference = np.array([[5.0, 4, 3, 2, 1, 0]])
    scores = np.array([[5.0, 0, 3, 2, 1, 4]])  # top-3: {0, 5, 2} vs reference {0, 1, 2}
    np.testing.assert_allclose(evaluate.top_overlap(scores, reference, top=3), [2 / 3])


# --- LDS -------------------------------------------------------------------------------------


def test_sample_subsets_sizes_and_seed():
    masks = evaluate.sample_subsets(101, 20, fraction=0.5, seed=4)
    assert masks.shape == (20, 101) and masks.dtype == bool
    assert set(masks.sum(axis=1)) == {50}
    np.testing.assert_array_equal(masks, evaluate.sample_subsets(101, 20, 0.5, seed=4))
    assert not np.array_equal(masks, evaluate.sample_subsets(101, 20, 0.5, seed=5))
    with pytest.raises(ValueError, match="fraction"):
        evaluate.sample_subsets(10, 2, fraction=1.0)


def linear_datamodel(n_test=8, n_train=200, n_subsets=60, noise=0.05, seed=0):
    """Outputs that are exactly a sum of per-example effects, plus a little noise."""
    rng = np.random.default_rng(seed)
    true_scores = rng.normal(size=(n_test, n_train))
    masks = evaluate.sample_subsets(n_train, n_subsets, 0.5, seed=seed)
    outputs = masks @ true_scores.T + noise * rng.normal(size=(n_subsets, n_test))
    return true_scores, masks, outputs


def test_lds_true_attribution_is_near_one():
    true_scores, masks, outputs = linear_datamodel()
    report = evaluate.linear_datamodeling_score(true_scores, masks, outputs)
    assert report.lds > 0.99
    assert report.per_test.shape == (8,) and report.n_subsets == 60


def test_lds_random_attribution_is_near_zero():
    true_scores, masks, outputs = linear_datamodel(n_test=40)
    random_scores = np.random.default_rng(99).normal(size=true_scores.shape)
    report = evaluate.linear_datamodeling_score(random_scores, masks, outputs)
    assert abs(report.lds) < 4 * report.std_error + 0.05


def test_lds_sign_convention_and_partial_information():
    true_scores, masks, outputs = linear_datamodel()
    assert evaluate.linear_datamodeling_score(-true_scores, masks, outputs).lds < -0.99
    noisy_scores = true_scores + np.random.default_rng(7).normal(size=true_scores.shape)
    partial = evaluate.linear_datamodeling_score(noisy_scores, masks, outputs).lds
    assert 0.3 < partial < 0.95


def test_lds_rejects_shape_mismatch():
    true_scores, masks, outputs = linear_datamodel()
    with pytest.raises(ValueError, match="n_subsets, n_test"):
        evaluate.linear_datamodeling_score(true_scores, masks, outputs.T)


def test_predicted_subset_effects_is_sum_over_members():
    scores = np.array([[1.0, 2.0, 4.0], [0.0, -1.0, 1.0]])
    masks = np.array([[True, False, True], [False, True, True]])
    np.testing.assert_array_equal(
        evaluate.predicted_subset_effects(scores, masks), [[5.0, 1.0], [6.0, 0.0]]
    )


def test_classification_margins():
    logits = np.array([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0]])
    np.testing.assert_array_equal(evaluate.classification_margins(logits, [0, 2]), [1.0, -2.0])


def test_model_outputs_match_manual_computation():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    inputs, labels = torch.randn(10, 4), torch.randint(0, 3, (10,))
    margins, losses = evaluate.model_outputs(model, TensorDataset(inputs, labels), batch_size=3)
    with torch.no_grad():
        logits = model(inputs)
    expected_losses = nn.functional.cross_entropy(logits, labels, reduction="none").numpy()
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-6)
    np.testing.assert_allclose(
        margins, evaluate.classification_margins(logits.numpy(), labels.numpy()), rtol=1e-6
    )


class SimulatedCrashError(Exception):
    pass


def test_retrain_subset_outputs_caches_and_resumes(tmp_path):
    masks = evaluate.sample_subsets(30, 4, 0.5, seed=0)
    calls = []
    crash_on_call = 3

    def trainer(mask):
        calls.append(mask.copy())
        if len(calls) == crash_on_call:
            raise SimulatedCrashError  # interrupted after two subsets were saved
        return mask.astype(float)[:5], -mask.astype(float)[:5]

    cache = tmp_path / "lds.npz"
    with pytest.raises(SimulatedCrashError):
        evaluate.retrain_subset_outputs(trainer, masks, cache)
    calls.clear()
    crash_on_call = -1
    done = evaluate.retrain_subset_outputs(trainer, masks, cache)
    assert len(calls) == 2  # only subsets 2 and 3 were retrained
    np.testing.assert_array_equal(calls[0], masks[2])
    np.testing.assert_array_equal(done.margins, masks[:, :5].astype(float))
    np.testing.assert_array_equal(done.losses, -masks[:, :5].astype(float))
    calls.clear()
    again = evaluate.retrain_subset_outputs(trainer, masks, cache)
    assert calls == [] and np.array_equal(again.margins, done.margins)


def test_retrain_subset_outputs_ignores_cache_of_other_masks(tmp_path):
    cache = tmp_path / "lds.npz"
    trainer = lambda mask: (mask[:3].astype(float), mask[:3].astype(float))  # noqa: E731
    evaluate.retrain_subset_outputs(trainer, evaluate.sample_subsets(10, 2, 0.5, seed=0), cache)
    other = evaluate.sample_subsets(10, 2, 0.5, seed=1)
    result = evaluate.retrain_subset_outputs(trainer, other, cache)
    np.testing.assert_array_equal(result.margins, other[:, :3].astype(float))


def test_subset_cache_key_depends_on_every_part():
    base = evaluate.subset_cache_key({"arch": "mlp", "seed": 0}, "abc", n_subsets=50, seed=0)
    assert base == evaluate.subset_cache_key(
        {"seed": 0, "arch": "mlp"}, "abc", n_subsets=50, seed=0
    )
    assert base != evaluate.subset_cache_key(
        {"arch": "mlp", "seed": 1}, "abc", n_subsets=50, seed=0
    )
    assert base != evaluate.subset_cache_key(
        {"arch": "mlp", "seed": 0}, "abd", n_subsets=50, seed=0
    )
    assert base != evaluate.subset_cache_key(
        {"arch": "mlp", "seed": 0}, "abc", n_subsets=50, seed=1
    )
