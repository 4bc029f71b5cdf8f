"""``RunReview``: a run under review, the one object pages and the CLI review through.

It holds a complete run's store and the dataset's class names, reads the run's metadata and
self-influence once, and reads decisions and flags from ``decisions.json`` on every call (another
session may have changed them). Deciding and undoing go through the history in that file, so
every decision is reversible in order, across reruns and sessions.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from dropinf.review.decisions import Decision, decide
from dropinf.review.decisions_file import (
    decisions_path,
    load_decisions,
    load_document,
    load_flags,
    record_decisions,
    undo_decisions,
    update_flags,
)
from dropinf.review.grid import QueueFilter, filter_queue, flip_counts, grid_table
from dropinf.review.ranking import PRIMARY_SCORE, mislabel_scores, review_queue, suspect_mask
from dropinf.run import RunStore


class RunReview:
    """A complete run under review: its ranking, suspects, decisions, flags and undo.

    Args:
        store: The store of a complete run.
        class_names: Names of the classes; adds class-name columns to the queue.
    """

    def __init__(self, store: RunStore, class_names: Sequence[str] | None = None) -> None:
        self.store = store
        self.class_names = None if class_names is None else list(class_names)

    @property
    def run_dir(self) -> Path:
        """The run directory."""
        return self.store.run_dir

    @property
    def path(self) -> Path:
        """The run's ``decisions.json``."""
        return decisions_path(self.run_dir)

    @cached_property
    def metadata(self) -> dict[str, np.ndarray]:
        """Label, prediction and loss of every training example (read once)."""
        return self.store.train_metadata()

    @cached_property
    def self_influence(self) -> np.ndarray:
        """(n_train,) self-influence of every training example (read once)."""
        return self.store.self_influence()

    def scores(self) -> dict[str, np.ndarray]:
        """The mislabel scores by display name, ``PRIMARY_SCORE`` (the queue's order) first."""
        return mislabel_scores(self.self_influence, self.metadata["loss"])

    def primary_score(self) -> np.ndarray:
        """(n_train,) the score the queue ranks by; higher = review first."""
        return self.scores()[PRIMARY_SCORE]

    def suspects(self) -> np.ndarray:
        """(n_train,) True for examples predicted against their label, decided on, or flagged."""
        meta = self.metadata
        return suspect_mask(meta["label"], meta["prediction"], self.decisions(), self.flags())

    def queue(self, include_decided: bool = False) -> pd.DataFrame:
        """The review queue: flagged examples first, then by the primary score.

        Args:
            include_decided: Keep examples that already have a decision.

        Returns:
            The table of ``review_queue``.
        """
        meta = self.metadata
        return review_queue(
            self.self_influence, meta["loss"], meta["label"], meta["prediction"],
            self.decisions(), class_names=self.class_names, include_decided=include_decided,
            flags=self.flags(),
        )  # fmt: skip

    def grid(
        self,
        ids: Sequence[str] | None = None,
        queue_filter: QueueFilter | None = None,
        include_decided: bool = False,
    ) -> pd.DataFrame:
        """The queue as the review grid (``grid_table``), filtered, in queue order.

        Args:
            ids: One name per training example; adds the ``path`` column.
            queue_filter: Which rows to keep; None keeps all.
            include_decided: Keep examples that already have a decision.
        """
        table = grid_table(self.queue(include_decided), ids, self.class_names)
        return filter_queue(table, queue_filter or QueueFilter())

    def flip_counts(self, num_classes: int, top_k: int | None = None) -> np.ndarray:
        """(C, C) given → suggested counts over the top ``top_k`` of the queue, decided included.

        Args:
            num_classes: C.
            top_k: Queue rows counted; None counts all.
        """
        table = grid_table(self.queue(include_decided=True))
        return flip_counts(table["given_label"], table["suggested_label"], num_classes, top_k)

    def decisions(self) -> dict[int, Decision]:
        """Training index -> decision, as stored now."""
        return load_decisions(self.path)

    def flags(self) -> list[int]:
        """Flagged training indices, most recently flagged first, as stored now."""
        return load_flags(self.path)

    def can_undo(self) -> bool:
        """True when the history holds a decision batch to undo."""
        return bool(load_document(self.path).history)

    def decide(
        self, indices: Sequence[int], action: str, label: int | None = None
    ) -> dict[int, Decision]:
        """Give one decision to each of ``indices``, as one batch of the history.

        Args:
            indices: Training indices.
            action: ``keep``, ``relabel`` or ``remove``.
            label: The new label for ``relabel``.

        Returns:
            All decisions after the change.

        Raises:
            ConfigError: An unknown action, or a label that does not fit it.
        """
        return record_decisions(self.path, indices, decide(action, label))

    def undo(self) -> list[int]:
        """Revert the last decision batch (made in any session).

        Returns:
            The batch's training indices (empty when there is nothing to undo), so a page can
            go back to the example.
        """
        return undo_decisions(self.path)

    def flag(self, ids: Sequence[int]) -> list[int]:
        """Flag training examples for review (they lead the queue); returns all flags."""
        return update_flags(self.path, add=ids)

    def unflag(self, ids: Sequence[int]) -> list[int]:
        """Clear the flags of training examples; returns all flags."""
        return update_flags(self.path, remove=ids)
