"""Fidelity of approximate attribution scores to reference (exact) scores.

How closely compressed scores follow exact (``identity``) scores computed under the same
curvature and damping: Spearman and Pearson correlation per test example, and the overlap of the
top proponents and opponents. Sign convention: ``+ = proponent``, as everywhere in dropinf.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dropinf.metrics.detection import average_ranks


def rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b``.

    A row that is constant in either input carries no ranking information; its correlation is
    reported as 0 rather than NaN.

    Args:
        a: Array of shape (R, n).
        b: Array of shape (R, n).

    Returns:
        float64 array of shape (R,).

    Raises:
        ValueError: If the shapes differ.
    """
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"expected two arrays of the same shape, got {a.shape} and {b.shape}")
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    norms = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    dots = (a * b).sum(axis=1)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def rowwise_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each row of ``a`` with the same row of ``b``.

    Args:
        a: Array of shape (R, n).
        b: Array of shape (R, n).

    Returns:
        float64 array of shape (R,); constant rows give 0.
    """
    return rowwise_pearson(average_ranks(np.atleast_2d(a)), average_ranks(np.atleast_2d(b)))


@dataclass(frozen=True)
class FidelityReport:
    """Agreement of approximate scores with reference (exact) scores, averaged over test rows.

    Attributes:
        spearman: Mean per-test-example Spearman correlation.
        pearson: Mean per-test-example Pearson correlation.
        top_proponent_overlap: Mean share of the reference's top proponents also in the
            approximation's top proponents.
        top_opponent_overlap: The same for the most negative scores (opponents).
        top: How many proponents / opponents were compared.
    """

    spearman: float
    pearson: float
    top_proponent_overlap: float
    top_opponent_overlap: float
    top: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of this report."""
        return asdict(self)


def top_overlap(scores: np.ndarray, reference: np.ndarray, top: int = 10) -> np.ndarray:
    """Per row, the share of the ``top`` highest reference entries that are also top in scores.

    Args:
        scores: Approximate scores, shape (R, n).
        reference: Reference scores, shape (R, n).
        top: Size of the top set; clipped to n.

    Returns:
        float64 array of shape (R,) with values in [0, 1].
    """
    scores = np.atleast_2d(np.asarray(scores))
    reference = np.atleast_2d(np.asarray(reference))
    top = min(top, scores.shape[1])
    ours = np.argsort(-scores, axis=1, kind="stable")[:, :top]  # (R, top)
    theirs = np.argsort(-reference, axis=1, kind="stable")[:, :top]  # (R, top)
    shared = [np.intersect1d(a, b).size for a, b in zip(ours, theirs, strict=True)]
    return np.asarray(shared, dtype=np.float64) / top


def fidelity(scores: np.ndarray, reference: np.ndarray, top: int = 10) -> FidelityReport:
    """Compare approximate scores with reference scores, test example by test example.

    Args:
        scores: Approximate scores, shape (n_test, n_train).
        reference: Exact scores (``identity`` compression, same curvature and damping), same shape.
        top: Size of the proponent / opponent sets compared.

    Returns:
        The report.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    reference = np.atleast_2d(np.asarray(reference, dtype=np.float64))
    return FidelityReport(
        spearman=float(rowwise_spearman(scores, reference).mean()),
        pearson=float(rowwise_pearson(scores, reference).mean()),
        top_proponent_overlap=float(top_overlap(scores, reference, top).mean()),
        top_opponent_overlap=float(top_overlap(-scores, -reference, top).mean()),
        top=top,
    )
