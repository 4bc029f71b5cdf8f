"""Exports of a run's decisions: CSV for people, JSON that reads back as decisions.

``export_json`` writes the ``decisions.json`` format without the history (``load_decisions`` and
``python -m dropinf retrain --decisions`` read it back); ``export_csv`` writes one row per
decided or flagged training example, with labels, class names and scores alongside.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dropinf.review.decisions import Decision, encode_document

FLAG_ACTION = "flag"  # the action column of a flagged, undecided example in the CSV export


def export_json(decisions: Mapping[int, Decision], flags: Sequence[int] = ()) -> bytes:
    """Decisions and flags as ``decisions.json`` bytes, without the history.

    Args:
        decisions: Training index -> decision.
        flags: Flagged training indices, most recently flagged first.
    """
    return encode_document(decisions, flags)


def export_csv(
    decisions: Mapping[int, Decision],
    labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    predictions: np.ndarray | None = None,
    self_influence: np.ndarray | None = None,
    flags: Sequence[int] | None = None,
) -> bytes:
    """The decisions as CSV bytes, one row per decided (or flagged) training example, by index.

    Args:
        decisions: Training index -> decision.
        labels: (n_train,) given labels; adds ``given_label`` (and ``given_class``).
        class_names: Names of the classes; adds the ``*_class`` columns.
        predictions: (n_train,) predicted labels; adds ``predicted_label``.
        self_influence: (n_train,) self-influence; adds ``self_influence``.
        flags: Flagged training indices; adds a ``flagged`` column, and a row with the action
            ``flag`` for each flagged example without a decision.

    Returns:
        UTF-8 CSV with a header: ``train_index, action, new_label, [new_class,] ...``.
    """
    flagged = set() if flags is None else {int(i) for i in flags}
    rows = [_export_row(i, decisions.get(i), labels, class_names, predictions, self_influence)
            for i in sorted({*decisions, *flagged})]  # fmt: skip
    columns = _export_columns(labels, class_names, predictions, self_influence)
    if flags is not None:
        columns.insert(columns.index("updated"), "flagged")
        for row in rows:
            row["flagged"] = row["train_index"] in flagged
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _export_columns(
    labels: np.ndarray | None,
    class_names: Sequence[str] | None,
    predictions: np.ndarray | None,
    self_influence: np.ndarray | None,
) -> list[str]:
    named = class_names is not None
    columns = ["train_index", "action", "new_label"] + (["new_class"] if named else [])
    if labels is not None:
        columns += ["given_label"] + (["given_class"] if named else [])
    if predictions is not None:
        columns += ["predicted_label"] + (["predicted_class"] if named else [])
    if self_influence is not None:
        columns.append("self_influence")
    return [*columns, "updated"]


def _export_row(
    index: int,
    decision: Decision | None,
    labels: np.ndarray | None,
    class_names: Sequence[str] | None,
    predictions: np.ndarray | None,
    self_influence: np.ndarray | None,
) -> dict[str, Any]:
    action, label, updated = (
        (decision.action, decision.label, decision.updated) if decision else (FLAG_ACTION, None, "")
    )
    row: dict[str, Any] = {
        "train_index": index,
        "action": action,
        "new_label": "" if label is None else label,
        "updated": updated,
    }
    labelled = {"new": label}
    if labels is not None:
        labelled["given"] = row["given_label"] = int(labels[index])
    if predictions is not None:
        labelled["predicted"] = row["predicted_label"] = int(predictions[index])
    if class_names is not None:
        for prefix, label in labelled.items():
            row[f"{prefix}_class"] = "" if label is None else class_names[label]
    if self_influence is not None:
        row["self_influence"] = float(self_influence[index])
    return row


SUSPECT_COLUMNS = ("rank", "train_index", "path", "given_label", "given_class", "predicted_label",
                   "predicted_class", "suggested_label", "suggested_class", "score")  # fmt: skip


def suspects_csv(grid: pd.DataFrame, top: int | None = None) -> bytes:
    """The ranked training examples of a review grid as CSV bytes, in the grid's order.

    Args:
        grid: A table of ``RunReview.grid`` (``path`` and ``*_class`` columns when it has them).
        top: Rows written from the top; None writes all.

    Returns:
        UTF-8 CSV with the columns of ``SUSPECT_COLUMNS`` the grid has (``score`` is the
        mislabel score the queue ranks by).
    """
    table = grid.head(top) if top is not None else grid
    table = table.rename(columns={"suspicion": "score"})
    columns = [column for column in SUSPECT_COLUMNS if column in table.columns]
    return table[columns].to_csv(index=False).encode()
