"""``RunReview``: a run under review, the one object pages and the CLI review through.

It holds a complete run's store and the dataset's class names, reads the run's metadata and
self-influence once, and reads decisions and flags from ``decisions.json`` on every call (another
session may have changed them). Deciding and undoing go through the history in that file, so
every decision is reversible in order, across reruns and sessions.

A run over several checkpoints (``dropinf.run.ensemble``) is reviewed by its combined scores: the
queue ranks by the ensemble's leave-one-out estimate, and ``self_influence`` is the combined one;
``trajectory`` says, checkpoint by checkpoint, how each example was scored and predicted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
from dropinf.review.ranking import (
    PRIMARY_SCORE,
    mislabel_scores,
    review_queue,
    suspect_mask,
    suspicion,
)
from dropinf.run import EnsembleStore, RunStore, ensemble_section


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

    @cached_property
    def ensemble(self) -> dict[str, np.ndarray] | None:
        """Combined and per-checkpoint scores of a run over several checkpoints; None otherwise.

        The arrays of ``dropinf.run.ENSEMBLE_ARRAYS`` (read once): e.g.
        ``checkpoint_self_influence`` (C, n_train) shows when in training each example was
        learned.
        """
        if ensemble_section(self.store.manifest_or_none()) is None:
            return None
        return EnsembleStore(self.store).load_scores()

    def checkpoint_epochs(self) -> list[int | None]:
        """The epoch each checkpoint of an ensemble run was taken after (None where unknown).

        Empty for a run of one model.
        """
        section = ensemble_section(self.store.manifest_or_none()) or {}
        epochs = [entry.get("epoch") for entry in section.get("checkpoints") or []]
        return [epoch if isinstance(epoch, int) else None for epoch in epochs]

    def trajectory(self, index: int) -> pd.DataFrame | None:
        """One training example along the checkpoints of an ensemble run; None for one model.

        Args:
            index: The training example.

        Returns:
            One row per checkpoint, in training order: ``checkpoint`` (1-based), ``epoch`` (the
            epoch, or None), ``self_influence``, ``loss``, ``leave_one_out_loss`` (the
            checkpoint's own mislabel score, ``loss + self_influence / N``), ``prediction``
            and ``learned`` (True where the checkpoint predicted the given label).

        Raises:
            IndexError: ``index`` is not a training example.
        """
        arrays = self.ensemble
        if arrays is None:
            return None
        self_influence = arrays["checkpoint_self_influence"]  # (C, n_train)
        n_train = self_influence.shape[1]
        if not 0 <= index < n_train:
            raise IndexError(f"expected a training index in [0, {n_train}), found {index}")
        losses, predictions = arrays["checkpoint_loss"], arrays["checkpoint_prediction"]
        epochs = self.checkpoint_epochs()
        return pd.DataFrame({
            "checkpoint": np.arange(1, len(self_influence) + 1),
            "epoch": pd.array(epochs + [None] * (len(self_influence) - len(epochs)), "Int64"),
            "self_influence": self_influence[:, index],
            "loss": losses[:, index],
            "leave_one_out_loss": losses[:, index] + self_influence[:, index] / n_train,
            "prediction": predictions[:, index].astype(int),
            "learned": predictions[:, index] == int(self.metadata["label"][index]),
        })  # fmt: skip

    def scores(self) -> dict[str, np.ndarray]:
        """The mislabel scores by display name, ``PRIMARY_SCORE`` (the queue's order) first.

        An ensemble run adds the final checkpoint's own mislabel score, for comparison.
        """
        scores = mislabel_scores(self.self_influence, self.metadata["loss"])
        if self.ensemble is None:
            return scores
        final = self.ensemble["checkpoint_self_influence"][-1]
        return {
            **scores,
            PRIMARY_SCORE: self._ranking(),
            "final checkpoint alone": suspicion(final, self.metadata["loss"]),
        }

    def _ranking(self) -> np.ndarray:
        """(n_train,) the ensemble's combined score the queue ranks by (ensemble runs only)."""
        section = ensemble_section(self.store.manifest_or_none()) or {}
        return self.ensemble[section.get("ranking", "leave_one_out_loss")]

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
        if self.ensemble is None:
            return review_queue(
                self.self_influence, meta["loss"], meta["label"], meta["prediction"],
                self.decisions(), class_names=self.class_names, include_decided=include_decided,
                flags=self.flags(),
            )  # fmt: skip
        table = review_queue(
            self._ranking(), meta["loss"], meta["label"], meta["prediction"], self.decisions(),
            kind="self_influence", class_names=self.class_names, include_decided=include_decided,
            flags=self.flags(),
        )  # fmt: skip
        table["self_influence"] = np.asarray(self.self_influence)[table["train_index"]]
        return table

    def grid(
        self,
        ids: Sequence[str] | None = None,
        queue_filter: QueueFilter | None = None,
        include_decided: bool = False,
        suggestions: Mapping[int, int] | None = None,
    ) -> pd.DataFrame:
        """The queue as the review grid (``grid_table``), filtered, in queue order.

        Args:
            ids: One name per training example; adds the ``path`` column.
            queue_filter: Which rows to keep; None keeps all.
            include_decided: Keep examples that already have a decision.
            suggestions: Training index -> suggested label; None suggests the predictions.
        """
        queue = self.queue(include_decided)
        table = grid_table(queue, ids, self.class_names, suggestions)
        return filter_queue(table, queue_filter or QueueFilter())

    def flip_counts(
        self,
        num_classes: int,
        top_k: int | None = None,
        suggestions: Mapping[int, int] | None = None,
    ) -> np.ndarray:
        """(C, C) given → suggested counts over the top ``top_k`` of the queue, decided included.

        Args:
            num_classes: C.
            top_k: Queue rows counted; None counts all.
            suggestions: Training index -> suggested label; None suggests the predictions.
        """
        table = grid_table(self.queue(include_decided=True), suggestions=suggestions)
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
