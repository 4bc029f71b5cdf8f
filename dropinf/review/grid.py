"""The review grid: the queue with its suggestions, filters over it, and the flip matrix.

The grid's ``suggested_label`` is the label ``suggest.suggest_labels`` proposes from each
example's influence neighbourhood where it was computed (the top of the queue), else the
model's prediction. ``flip_counts`` counts given → suggested over the top of the queue, so the
analyst sees *which* confusions the suspects are.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dropinf.errors import ConfigError


@dataclass(frozen=True)
class QueueFilter:
    """Which queue rows to show; an empty collection means "any".

    Attributes:
        given: Given labels to keep.
        predicted: Predicted labels to keep.
        suggested: Suggested labels to keep.
        min_score: Keep rows whose mislabel score is at least this; None keeps all.
    """

    given: Collection[int] = ()
    predicted: Collection[int] = ()
    suggested: Collection[int] = ()
    min_score: float | None = None


def grid_table(
    queue: pd.DataFrame,
    ids: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    suggestions: Mapping[int, int] | None = None,
) -> pd.DataFrame:
    """The queue with ``suggested_label`` (and class), ``decision`` and, with ids, ``path``.

    Args:
        queue: A table of ``review_queue`` (its order is kept).
        ids: One name per training example (``DatasetBundle.train_ids``); None leaves ``path`` out.
        class_names: Names of the classes; adds ``suggested_class``.
        suggestions: Training index -> suggested label (``suggest.suggest_labels``); an
            example without one is suggested its prediction.

    Returns:
        A copy of ``queue`` with the added columns.
    """
    table = queue.copy()
    predicted = table["predicted_label"].astype(np.int64)
    table["suggested_label"] = [
        int(suggestions.get(int(index), label)) if suggestions else int(label)
        for index, label in zip(table["train_index"], predicted, strict=True)
    ]
    if class_names is not None:
        table["suggested_class"] = [class_names[label] for label in table["suggested_label"]]
    table["decision"] = [
        status if pd.isna(label) else f"{status} → {_name(int(label), class_names)}"
        for status, label in zip(table["status"], table["new_label"], strict=True)
    ]
    if ids is not None:
        table["path"] = [ids[int(i)] for i in table["train_index"]]
    return table


def filter_queue(table: pd.DataFrame, queue_filter: QueueFilter) -> pd.DataFrame:
    """The rows of a grid table that pass a filter, in the table's order.

    Args:
        table: A table of ``grid_table``.
        queue_filter: What to keep.

    Returns:
        The kept rows.
    """
    keep = np.ones(len(table), dtype=bool)
    for column, wanted in (
        ("given_label", queue_filter.given),
        ("predicted_label", queue_filter.predicted),
        ("suggested_label", queue_filter.suggested),
    ):
        if wanted:
            keep &= table[column].isin([int(label) for label in wanted]).to_numpy()
    if queue_filter.min_score is not None:
        keep &= (table["suspicion"] >= queue_filter.min_score).to_numpy()
    return table[keep]


def flip_counts(
    given: np.ndarray, suggested: np.ndarray, num_classes: int, top_k: int | None = None
) -> np.ndarray:
    """(C, C) counts of given → suggested labels over the first ``top_k`` rows.

    Args:
        given: (n,) given labels, in queue order.
        suggested: (n,) suggested labels, in the same order.
        num_classes: C.
        top_k: Rows counted from the top; None counts all.

    Returns:
        int64 counts; ``[g, s]`` is how many of the rows were given ``g`` and suggested ``s``.

    Raises:
        ConfigError: ``top_k`` is negative, or a label lies outside ``0..C-1``.
    """
    if top_k is not None and top_k < 0:
        raise ConfigError(f"top_k must be non-negative; got {top_k}")
    given = np.asarray(given, dtype=np.int64)[:top_k]
    suggested = np.asarray(suggested, dtype=np.int64)[:top_k]
    labels = np.concatenate([given, suggested])
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError(
            f"expected labels in 0..{num_classes - 1}; found {labels.min()}..{labels.max()}"
        )
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (given, suggested), 1)
    return counts


def class_suspect_counts(counts: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """Per class: suspects given that label, suspects suggested into it, flips out of it.

    Args:
        counts: (C, C) from ``flip_counts``.
        class_names: One name per class.

    Returns:
        Columns ``class``, ``given``, ``suggested``, ``flips`` (given it, suggested another);
        classes without any suspect are left out.
    """
    flips = counts.sum(axis=1) - np.diag(counts)
    table = pd.DataFrame({
        "class": list(class_names), "given": counts.sum(axis=1), "suggested": counts.sum(axis=0),
        "flips": flips,
    })  # fmt: skip
    return table[(table["given"] > 0) | (table["suggested"] > 0)].reset_index(drop=True)


def _name(label: int, class_names: Sequence[str] | None) -> str:
    return str(class_names[label]) if class_names is not None else str(label)
