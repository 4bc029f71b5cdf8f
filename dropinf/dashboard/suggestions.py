"""Influence rows of training examples, for the review queue's suggested labels.

Each suspect's row (the influence of every training example on it at its given label) is its
stored compressed gradient scored against the run (``InfluenceEngine.scores_of_gradients``):
nothing is recaptured, and rows are built only for the top of the queue (``top_indices``).
``review.suggest_labels`` turns the rows into labels.
"""

from __future__ import annotations

import numpy as np
import torch

from dropinf.engine import InfluenceEngine

SUGGESTED_ROWS = 1000
ROW_CHUNK = 256


def influence_rows(engine: InfluenceEngine, indices: np.ndarray) -> np.ndarray:
    """(m, n_train) influence of every training example on the training examples ``indices``.

    Args:
        engine: A complete run reopened for queries (``InfluenceEngine.load``).
        indices: (m,) training indices.

    Returns:
        float64 scores; positive = proponent. Row i's own entry is its self-influence.
    """
    gradients = engine.store.gradients()  # (n_train, k)
    rows = []
    for start in range(0, len(indices), ROW_CHUNK):
        chunk = np.ascontiguousarray(gradients[indices[start : start + ROW_CHUNK]])
        scores = engine.scores_of_gradients(torch.from_numpy(chunk).to(engine.dtype))
        rows.append(scores.cpu().numpy().astype(np.float64))
    return np.concatenate(rows) if rows else np.zeros((0, len(gradients)))


def top_indices(ranking: np.ndarray, top: int = SUGGESTED_ROWS) -> np.ndarray:
    """(min(top, n),) training indices of the ``top`` highest scores, highest first (stable)."""
    return np.argsort(-np.asarray(ranking, dtype=np.float64), kind="stable")[:top]
