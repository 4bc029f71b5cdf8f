"""Mislabel detection quality of a suspicion score: ROC AUC, precision / recall at k.

Given one suspicion score per training example (higher = more suspicious, e.g. self-influence)
and the ground-truth mask of flipped labels: ROC AUC, the inspection order, precision / recall
at k, and recall when a share of the training set is inspected. Ties are ranked by their average
rank (``average_ranks``), which the rank correlations of ``fidelity`` share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_SHARES = (0.05, 0.1, 0.2)
DEFAULT_KS = (10, 50, 100)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks (1-based) along the last axis, ties sharing the mean of their ranks.

    Args:
        values: Array of any shape; ranks are taken independently along the last axis.

    Returns:
        float64 array of the same shape.
    """
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(-1, values.shape[-1])  # (R, n)
    ranks = np.empty_like(flat)
    for row, out in zip(flat, ranks, strict=True):
        out[:] = _average_ranks_1d(row)
    return ranks.reshape(values.shape)


def _average_ranks_1d(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _check_detection_inputs(scores: np.ndarray, noisy_mask: np.ndarray) -> tuple[np.ndarray, ...]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    noisy_mask = np.asarray(noisy_mask, dtype=bool).ravel()
    if scores.shape != noisy_mask.shape:
        raise ValueError(
            f"expected one score per training example ({noisy_mask.shape[0]}), "
            f"got {scores.shape[0]} scores"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("expected finite suspicion scores, found NaN or infinity")
    return scores, noisy_mask


def roc_auc(scores: np.ndarray, noisy_mask: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` as a detector of ``noisy_mask``.

    Equals the probability that a random noisy example scores higher than a random clean one,
    ties counting one half (the Mann–Whitney U statistic, computed from average ranks).

    Args:
        scores: Suspicion per training example, shape (n,); higher = more suspicious.
        noisy_mask: True where the label was flipped, shape (n,).

    Returns:
        The AUC in [0, 1], or NaN when either class is empty.
    """
    scores, noisy_mask = _check_detection_inputs(scores, noisy_mask)
    n_pos = int(noisy_mask.sum())
    n_neg = noisy_mask.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = average_ranks(scores)[noisy_mask].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def inspection_order(scores: np.ndarray) -> np.ndarray:
    """Training indices from most to least suspicious; ties keep index order.

    Args:
        scores: Suspicion per training example, shape (n,).

    Returns:
        int64 array of shape (n,).
    """
    return np.argsort(-np.asarray(scores, dtype=np.float64).ravel(), kind="stable")


def precision_at_k(scores: np.ndarray, noisy_mask: np.ndarray, k: int) -> float:
    """Share of noisy examples among the ``k`` most suspicious.

    Args:
        scores: Suspicion per training example, shape (n,).
        noisy_mask: True where the label was flipped, shape (n,).
        k: How many examples are inspected; clipped to n.

    Returns:
        Precision in [0, 1].
    """
    scores, noisy_mask = _check_detection_inputs(scores, noisy_mask)
    k = _check_k(k, scores.size)
    return float(noisy_mask[inspection_order(scores)[:k]].mean())


def recall_at_k(scores: np.ndarray, noisy_mask: np.ndarray, k: int) -> float:
    """Share of all noisy examples found among the ``k`` most suspicious.

    Args:
        scores: Suspicion per training example, shape (n,).
        noisy_mask: True where the label was flipped, shape (n,).
        k: How many examples are inspected; clipped to n.

    Returns:
        Recall in [0, 1], or NaN when there is no noisy example.
    """
    scores, noisy_mask = _check_detection_inputs(scores, noisy_mask)
    k = _check_k(k, scores.size)
    n_noisy = int(noisy_mask.sum())
    if n_noisy == 0:
        return math.nan
    return float(noisy_mask[inspection_order(scores)[:k]].sum() / n_noisy)


def recall_at_share(scores: np.ndarray, noisy_mask: np.ndarray, share: float) -> float:
    """Recall when the ``ceil(share · n)`` most suspicious examples are inspected.

    Args:
        scores: Suspicion per training example, shape (n,).
        noisy_mask: True where the label was flipped, shape (n,).
        share: Share of the training set inspected, in (0, 1].

    Returns:
        Recall in [0, 1], or NaN when there is no noisy example.

    Raises:
        ValueError: If ``share`` is outside (0, 1].
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"expected a share in (0, 1], got {share!r}")
    n = np.asarray(noisy_mask).size
    return recall_at_k(scores, noisy_mask, math.ceil(share * n - 1e-9))


def _check_k(k: int, n: int) -> int:
    if k < 1:
        raise ValueError(f"expected k of at least 1, got {k!r}")
    return min(int(k), n)


@dataclass(frozen=True)
class DetectionReport:
    """Mislabel-detection quality of one suspicion score.

    Attributes:
        auc: ROC AUC.
        precision_at_k: Precision among the k most suspicious, by k.
        recall_at_k: Recall among the k most suspicious, by k.
        recall_at_share: Recall with a share of the training set inspected, by share.
        n_train: Number of training examples.
        n_noisy: Number of flipped labels.
    """

    auc: float
    precision_at_k: dict[int, float]
    recall_at_k: dict[int, float]
    recall_at_share: dict[float, float]
    n_train: int
    n_noisy: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (keys of the inner dicts become strings)."""
        values = asdict(self)
        for name in ("precision_at_k", "recall_at_k", "recall_at_share"):
            values[name] = {str(key): value for key, value in values[name].items()}
        return values


def detection_report(
    scores: np.ndarray,
    noisy_mask: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    shares: Sequence[float] = DEFAULT_SHARES,
) -> DetectionReport:
    """All detection metrics of one suspicion score at once.

    Args:
        scores: Suspicion per training example, shape (n,); higher = more suspicious.
        noisy_mask: True where the label was flipped, shape (n,).
        ks: Inspection budgets for precision / recall at k.
        shares: Inspected shares for recall at share.

    Returns:
        The report.
    """
    scores, noisy_mask = _check_detection_inputs(scores, noisy_mask)
    return DetectionReport(
        auc=roc_auc(scores, noisy_mask),
        precision_at_k={k: precision_at_k(scores, noisy_mask, k) for k in ks},
        recall_at_k={k: recall_at_k(scores, noisy_mask, k) for k in ks},
        recall_at_share={s: recall_at_share(scores, noisy_mask, s) for s in shares},
        n_train=int(noisy_mask.size),
        n_noisy=int(noisy_mask.sum()),
    )
