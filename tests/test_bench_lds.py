"""Tests of bench.lds (the linear datamodeling score and its retrained subsets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from bench import lds


def test_sample_subsets_sizes_and_seed():
    masks = lds.sample_subsets(101, 20, fraction=0.5, seed=4)
    assert masks.shape == (20, 101) and masks.dtype == bool
    assert set(masks.sum(axis=1)) == {50}
    np.testing.assert_array_equal(masks, lds.sample_subsets(101, 20, 0.5, seed=4))
    assert not np.array_equal(masks, lds.sample_subsets(101, 20, 0.5, seed=5))
    with pytest.raises(ValueError, match="fraction"):
        lds.sample_subsets(10, 2, fraction=1.0)


def linear_datamodel(n_test=8, n_train=200, n_subsets=60, noise=0.05, seed=0):
    """Outputs that are exactly a sum of per-example effects, plus a little noise."""
    rng = np.random.default_rng(seed)
    true_scores = rng.normal(size=(n_test, n_train))
    masks = lds.sample_subsets(n_train, n_subsets, 0.5, seed=seed)
    outputs = masks @ true_scores.T + noise * rng.normal(size=(n_subsets, n_test))
    return true_scores, masks, outputs


def test_lds_true_attribution_is_near_one():
    true_scores, masks, outputs = linear_datamodel()
    report = lds.linear_datamodeling_score(true_scores, masks, outputs)
    assert report.lds > 0.99
    assert report.per_test.shape == (8,) and report.n_subsets == 60


def test_lds_random_attribution_is_near_zero():
    true_scores, masks, outputs = linear_datamodel(n_test=40)
    random_scores = np.random.default_rng(99).normal(size=true_scores.shape)
    report = lds.linear_datamodeling_score(random_scores, masks, outputs)
    assert abs(report.lds) < 4 * report.std_error + 0.05


def test_lds_sign_convention_and_partial_information():
    true_scores, masks, outputs = linear_datamodel()
    assert lds.linear_datamodeling_score(-true_scores, masks, outputs).lds < -0.99
    noisy_scores = true_scores + np.random.default_rng(7).normal(size=true_scores.shape)
    partial = lds.linear_datamodeling_score(noisy_scores, masks, outputs).lds
    assert 0.3 < partial < 0.95


def test_lds_rejects_shape_mismatch():
    true_scores, masks, outputs = linear_datamodel()
    with pytest.raises(ValueError, match="n_subsets, n_test"):
        lds.linear_datamodeling_score(true_scores, masks, outputs.T)


def test_predicted_subset_effects_is_sum_over_members():
    scores = np.array([[1.0, 2.0, 4.0], [0.0, -1.0, 1.0]])
    masks = np.array([[True, False, True], [False, True, True]])
    np.testing.assert_array_equal(
        lds.predicted_subset_effects(scores, masks), [[5.0, 1.0], [6.0, 0.0]]
    )


def test_classification_margins():
    logits = np.array([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0]])
    np.testing.assert_array_equal(lds.classification_margins(logits, [0, 2]), [1.0, -2.0])


def test_model_outputs_match_manual_computation():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    inputs, labels = torch.randn(10, 4), torch.randint(0, 3, (10,))
    margins, losses = lds.model_outputs(model, TensorDataset(inputs, labels), batch_size=3)
    with torch.no_grad():
        logits = model(inputs)
    expected_losses = nn.functional.cross_entropy(logits, labels, reduction="none").numpy()
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-6)
    np.testing.assert_allclose(
        margins, lds.classification_margins(logits.numpy(), labels.numpy()), rtol=1e-6
    )


class SimulatedCrashError(Exception):
    pass


def test_retrain_subset_outputs_caches_and_resumes(tmp_path):
    masks = lds.sample_subsets(30, 4, 0.5, seed=0)
    calls = []
    crash_on_call = 3

    def trainer(mask):
        calls.append(mask.copy())
        if len(calls) == crash_on_call:
            raise SimulatedCrashError  # interrupted after two subsets were saved
        return mask.astype(float)[:5], -mask.astype(float)[:5]

    cache = tmp_path / "lds.npz"
    with pytest.raises(SimulatedCrashError):
        lds.retrain_subset_outputs(trainer, masks, cache)
    calls.clear()
    crash_on_call = -1
    done = lds.retrain_subset_outputs(trainer, masks, cache)
    assert len(calls) == 2  # only subsets 2 and 3 were retrained
    np.testing.assert_array_equal(calls[0], masks[2])
    np.testing.assert_array_equal(done.margins, masks[:, :5].astype(float))
    np.testing.assert_array_equal(done.losses, -masks[:, :5].astype(float))
    calls.clear()
    again = lds.retrain_subset_outputs(trainer, masks, cache)
    assert calls == [] and np.array_equal(again.margins, done.margins)


def test_retrain_subset_outputs_ignores_cache_of_other_masks(tmp_path):
    cache = tmp_path / "lds.npz"
    trainer = lambda mask: (mask[:3].astype(float), mask[:3].astype(float))  # noqa: E731
    lds.retrain_subset_outputs(trainer, lds.sample_subsets(10, 2, 0.5, seed=0), cache)
    other = lds.sample_subsets(10, 2, 0.5, seed=1)
    result = lds.retrain_subset_outputs(trainer, other, cache)
    np.testing.assert_array_equal(result.margins, other[:, :3].astype(float))


def test_subset_cache_key_depends_on_every_part():
    base = lds.subset_cache_key({"arch": "mlp", "seed": 0}, "abc", n_subsets=50, seed=0)
    assert base == lds.subset_cache_key({"seed": 0, "arch": "mlp"}, "abc", n_subsets=50, seed=0)
    assert base != lds.subset_cache_key({"arch": "mlp", "seed": 1}, "abc", n_subsets=50, seed=0)
    assert base != lds.subset_cache_key({"arch": "mlp", "seed": 0}, "abd", n_subsets=50, seed=0)
    assert base != lds.subset_cache_key({"arch": "mlp", "seed": 0}, "abc", n_subsets=50, seed=1)
