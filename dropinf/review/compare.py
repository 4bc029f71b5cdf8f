"""Comparing two runs of the same training data: do they flag the same suspects?

Two runs of one model and dataset that differ in how they were computed (compressor, keep ratio,
seed, curvature) should agree on what to review first. ``compare_runs`` measures how far they
do: the overlap of their top-k suspects (by the mislabel score) and the Spearman rank
correlation of their self-influence and of their mislabel scores; ``suspect_ranks`` lists the
suspects of either with their rank in both; ``proponent_overlap`` compares the proponents the
two give one test example. Runs of different training data are refused (their rows are not the
same examples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dropinf import metrics
from dropinf.errors import ConfigError
from dropinf.review.run_review import RunReview


@dataclass(frozen=True)
class RunComparison:
    """How far two runs of the same data agree on what to review first.

    Attributes:
        k: How many top suspects of each run were compared.
        shared: How many of run A's top-k suspects are among run B's top-k.
        self_influence_spearman: Spearman rank correlation of the two runs' self-influence.
        score_spearman: Spearman rank correlation of their mislabel scores (the queue order).
        same_model: True when both runs were computed on the same model weights.
    """

    k: int
    shared: int
    self_influence_spearman: float
    score_spearman: float
    same_model: bool

    @property
    def overlap(self) -> float:
        """Share of the top-k suspects the two runs have in common, in [0, 1]."""
        return self.shared / self.k if self.k else 0.0


def check_comparable(manifest_a: dict[str, Any], manifest_b: dict[str, Any]) -> None:
    """Refuse two runs whose training data differ.

    Args:
        manifest_a: The first run's manifest (``RunStore.read_manifest``).
        manifest_b: The second run's manifest.

    Raises:
        ConfigError: The data fingerprints (or training-set sizes) differ.
    """
    data_a, data_b = manifest_a.get("data_fingerprint"), manifest_b.get("data_fingerprint")
    if data_a != data_b:
        raise ConfigError(
            "expected two runs of the same training data (equal data fingerprints); found "
            f"{str(data_a)[:12]}… and {str(data_b)[:12]}…: compare runs of one dataset only"
        )
    n_a, n_b = manifest_a.get("n_train"), manifest_b.get("n_train")
    if n_a != n_b:
        raise ConfigError(f"expected runs of equal training sets; found {n_a} and {n_b} examples")


def compare_runs(run_a: RunReview, run_b: RunReview, k: int) -> RunComparison:
    """Top-k suspect overlap and rank correlations of two complete runs of the same data.

    Args:
        run_a: The first run under review.
        run_b: The second run.
        k: Top suspects compared (clipped to the training-set size).

    Returns:
        The comparison.

    Raises:
        ConfigError: ``k`` is not positive, or the runs are of different data.
    """
    if k < 1:
        raise ConfigError(f"expected k ≥ 1 suspects to compare; found {k}")
    manifest_a, manifest_b = run_a.store.read_manifest(), run_b.store.read_manifest()
    check_comparable(manifest_a, manifest_b)
    score_a, score_b = run_a.primary_score(), run_b.primary_score()
    k = min(k, score_a.size)
    shared = _shared_top(score_a, score_b, k)
    return RunComparison(
        k=k,
        shared=shared,
        self_influence_spearman=_spearman(run_a.self_influence, run_b.self_influence),
        score_spearman=_spearman(score_a, score_b),
        same_model=manifest_a.get("model_fingerprint") == manifest_b.get("model_fingerprint"),
    )


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(metrics.rowwise_spearman(np.asarray(a, np.float64), np.asarray(b, np.float64))[0])


def suspect_ranks(score_a: np.ndarray, score_b: np.ndarray, k: int) -> pd.DataFrame:
    """The top-k suspects of either run with their rank in both (1 = most suspicious).

    Args:
        score_a: (n_train,) run A's mislabel scores.
        score_b: (n_train,) run B's mislabel scores.
        k: Top suspects taken from each run.

    Returns:
        Columns ``train_index``, ``rank_a``, ``rank_b``, ``in_both`` (in both top-k), sorted by
        the better of the two ranks.
    """
    rank_a, rank_b = _ranks(score_a), _ranks(score_b)
    chosen = np.flatnonzero((rank_a <= k) | (rank_b <= k))
    table = pd.DataFrame({
        "train_index": chosen, "rank_a": rank_a[chosen], "rank_b": rank_b[chosen],
        "in_both": (rank_a[chosen] <= k) & (rank_b[chosen] <= k),
    })  # fmt: skip
    best = np.minimum(table["rank_a"], table["rank_b"])
    return table.iloc[np.lexsort((table["train_index"], best))].reset_index(drop=True)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """(n,) 1-based rank of each entry, highest score first (ties by index)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    ranks = np.empty(order.size, dtype=np.int64)
    ranks[order] = np.arange(1, order.size + 1)
    return ranks


def proponent_overlap(row_a: np.ndarray, row_b: np.ndarray, k: int) -> int:
    """How many of one test example's k strongest proponents the two runs share.

    Args:
        row_a: (n_train,) run A's influence of every training example on the test example.
        row_b: (n_train,) run B's.
        k: Proponents compared (clipped to n_train).
    """
    return _shared_top(row_a, row_b, min(k, np.asarray(row_a).size))


def _shared_top(a: np.ndarray, b: np.ndarray, k: int) -> int:
    """How many of the ``k`` highest entries of ``a`` are among the ``k`` highest of ``b``."""
    top_a = np.argsort(-np.asarray(a, np.float64), kind="stable")[:k]
    top_b = np.argsort(-np.asarray(b, np.float64), kind="stable")[:k]
    return int(np.intersect1d(top_a, top_b).size)
