"""Comparing two runs of the same data: overlap, rank correlations, refusal of other data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from dropinf.errors import ConfigError
from dropinf.review import (
    RunReview,
    check_comparable,
    compare_runs,
    proponent_overlap,
    suspect_ranks,
)
from dropinf.run import RunStore

N = 40


def review_of(
    run_dir: Path, self_influence: np.ndarray, losses: np.ndarray, data: str
) -> RunReview:
    """A run holding metadata, self-influence and a manifest naming its data fingerprint."""
    store = RunStore(run_dir)
    writer = store.shard_writer(0, rows=N, k=2, dtype=np.dtype(np.float32))
    labels = np.arange(N) % 3
    meta = {"label": labels, "prediction": labels, "loss": losses}
    writer.append(np.zeros((N, 2), dtype=np.float32), meta)
    writer.publish()
    store.save_self_influence(self_influence)
    store.write_manifest({"status": "complete", "data_fingerprint": data, "n_train": N,
                          "model_fingerprint": "m"})  # fmt: skip
    return RunReview(store)


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[RunReview, RunReview]:
    rng = np.random.default_rng(0)
    self_a = rng.gamma(2.0, size=N) * N
    self_b = self_a * rng.lognormal(0.0, 0.3, size=N)  # the same ranking, perturbed
    losses = rng.gamma(1.0, size=N)
    return (review_of(tmp_path / "a", self_a, losses, "d"),
            review_of(tmp_path / "b", self_b, losses, "d"))  # fmt: skip


def test_rank_correlations_match_scipy(two_runs: tuple[RunReview, RunReview]) -> None:
    run_a, run_b = two_runs
    comparison = compare_runs(run_a, run_b, k=10)
    expected = stats.spearmanr(run_a.self_influence, run_b.self_influence).statistic
    assert comparison.self_influence_spearman == pytest.approx(expected, abs=1e-12)
    expected = stats.spearmanr(run_a.primary_score(), run_b.primary_score()).statistic
    assert comparison.score_spearman == pytest.approx(expected, abs=1e-12)
    assert 0.5 < comparison.self_influence_spearman < 1.0
    assert comparison.same_model


def test_top_k_overlap_counts_the_shared_suspects(two_runs: tuple[RunReview, RunReview]) -> None:
    run_a, run_b = two_runs
    for k in (1, 5, 10, N):
        top_a = set(np.argsort(-run_a.primary_score())[:k].tolist())
        top_b = set(np.argsort(-run_b.primary_score())[:k].tolist())
        comparison = compare_runs(run_a, run_b, k)
        assert comparison.shared == len(top_a & top_b)
        assert comparison.overlap == pytest.approx(len(top_a & top_b) / k)
    assert compare_runs(run_a, run_a, 7).shared == 7
    assert compare_runs(run_a, run_b, 10 * N).k == N, "k is clipped to the training set"


def test_runs_of_other_data_are_refused_by_name(tmp_path: Path) -> None:
    ones = np.ones(N)
    run_a = review_of(tmp_path / "a", ones, ones, "aaaaaaaaaaaaaaaa")
    run_b = review_of(tmp_path / "b", ones, ones, "bbbbbbbbbbbbbbbb")
    with pytest.raises(ConfigError, match=r"same training data.*aaaaaaaaaaaa.*bbbbbbbbbbbb"):
        compare_runs(run_a, run_b, 5)
    with pytest.raises(ConfigError, match="equal training sets; found 3 and 4"):
        check_comparable({"data_fingerprint": "x", "n_train": 3},
                         {"data_fingerprint": "x", "n_train": 4})  # fmt: skip
    with pytest.raises(ConfigError, match="k ≥ 1"):
        compare_runs(run_a, run_a, 0)


def test_suspect_ranks_list_either_top_k_with_both_ranks() -> None:
    score_a = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    score_b = np.array([1.0, 4.0, 5.0, 2.0, 3.0])
    table = suspect_ranks(score_a, score_b, k=2)
    assert table["train_index"].tolist() == [0, 2, 1]
    assert table["rank_a"].tolist() == [1, 3, 2]
    assert table["rank_b"].tolist() == [5, 1, 2]
    assert table["in_both"].tolist() == [False, False, True]


def test_proponent_overlap() -> None:
    row_a = np.array([0.9, 0.8, 0.1, -1.0, 0.5])
    row_b = np.array([0.9, -0.2, 0.7, 0.0, 0.6])
    assert proponent_overlap(row_a, row_b, 2) == 1  # {0, 1} vs {0, 2}
    assert proponent_overlap(row_a, row_b, 3) == 2  # {0, 1, 4} vs {0, 2, 4}
    assert proponent_overlap(row_a, row_a, 10) == 5
