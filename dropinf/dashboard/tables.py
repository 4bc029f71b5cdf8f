"""Table shapers: the rows the pages show as data frames (influences, classes, layers).

Pure functions from arrays to ``pandas.DataFrame``; the class-name columns use the names from
the data as given (Streamlit's data frames do not render HTML).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from dropinf.core import discover_layers
from dropinf.dashboard.style import class_name
from dropinf.metrics import precision_at_k, recall_at_k, roc_auc


def top_influences(
    scores_row: np.ndarray,
    k: int = 10,
    labels: np.ndarray | None = None,
    predictions: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    opponents: bool = False,
    exclude: Sequence[int] = (),
) -> pd.DataFrame:
    """The ``k`` strongest proponents (or opponents) of one test example.

    Args:
        scores_row: (n_train,) scores for the test example; + = proponent.
        k: Rows to return (clipped to n_train).
        labels: (n_train,) given labels.
        predictions: (n_train,) the model's predicted labels.
        class_names: Names of the classes; adds ``given_class`` / ``predicted_class``.
        opponents: Most negative scores first instead of most positive.
        exclude: Training indices never listed (e.g. a training example's own index when the
            row scores it against the others: it is trivially its own strongest proponent).

    Returns:
        Columns ``rank``, ``train_index``, ``score`` and, when given, ``given_label``,
        ``predicted_label`` and the class-name columns.
    """
    scores_row = np.asarray(scores_row).ravel()
    order = np.argsort(scores_row if opponents else -scores_row, kind="stable")
    order = order[~np.isin(order, np.asarray(exclude, dtype=np.int64))][:k]
    table = pd.DataFrame(
        {"rank": np.arange(1, order.size + 1), "train_index": order, "score": scores_row[order]}
    )
    return _with_label_columns(table, order, labels, predictions, class_names)


def influence_highlights(scores_row: np.ndarray, k: int, name: str) -> dict[str, list[int]]:
    """The ids of a row's top-k proponents and opponents, as ``gradient_map_figure`` highlights.

    Args:
        scores_row: (n_train,) scores; + = proponent.
        k: Ids per group.
        name: What the row scores, e.g. ``test #7``.

    Returns:
        ``{"proponents of <name>": ids, "opponents of <name>": ids}``.
    """
    return {
        f"proponents of {name}": top_influences(scores_row, k)["train_index"].tolist(),
        f"opponents of {name}": top_influences(scores_row, k, opponents=True)[
            "train_index"
        ].tolist(),
    }


def example_indices(
    labels: np.ndarray,
    predictions: np.ndarray,
    label: int | None = None,
    misclassified_only: bool = False,
) -> list[int]:
    """Indices of the examples of one class and / or the misclassified ones, in order.

    Args:
        labels: (n,) true (or given) labels.
        predictions: (n,) predicted labels.
        label: Keep only this class; None keeps every class.
        misclassified_only: Keep only examples predicted against their label.
    """
    labels, predictions = np.asarray(labels).ravel(), np.asarray(predictions).ravel()
    keep = np.ones(labels.size, dtype=bool)
    if label is not None:
        keep &= labels == label
    if misclassified_only:
        keep &= labels != predictions
    return np.flatnonzero(keep).tolist()


def class_balance(labels: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """Examples per class: columns ``class`` (name) and ``examples`` (count), in class order."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel(), minlength=len(class_names))
    return pd.DataFrame({"class": list(class_names), "examples": counts[: len(class_names)]})


def layer_table(model: nn.Module) -> pd.DataFrame:
    """The layers whose per-sample gradients a run captures.

    Returns:
        Columns ``layer`` (the module path as Python spells it: ``model.features[0]``, not
        ``features.0``), ``kind`` and ``parameters``.

    Raises:
        NoCapturableLayerError: The model has none.
    """
    rows = [
        {"layer": module_path(spec.name), "kind": spec.kind, "parameters": spec.full_dim}
        for spec in discover_layers(model).specs
    ]
    return pd.DataFrame(rows, columns=["layer", "kind", "parameters"])


def module_path(name: str) -> str:
    """A module (or parameter) name as an attribute path from the model: ``0.fc`` → ``model[0].fc``.

    Args:
        name: The dotted name from ``named_modules`` / ``named_parameters``.

    Returns:
        The path, items of sequential containers in brackets.
    """
    parts = [f"[{part}]" if part.isdigit() else f".{part}" for part in name.split(".") if part]
    return "model" + "".join(parts)


RUN_COLUMNS = {
    "key": "run",
    "status": "status",
    "method": "compressor",
    "keep_ratio": "keep ratio",
    "k": "k",
    "n_train": "training examples",
    "created": "created",
    "arch": "architecture",
    "data_spec": "data",
}


def runs_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The runs (``dropinf.run.list_runs``) as display text: a blank where a run has no value.

    A cancelled or failed run has no ``k`` or size yet; those cells are empty, not ``None``,
    and a column no run has a value in is left out.

    Args:
        rows: One mapping per run.

    Returns:
        One row per run, the columns of ``RUN_COLUMNS`` that hold a value, renamed.
    """
    table = pd.DataFrame(
        [{label: _cell(row.get(name)) for name, label in RUN_COLUMNS.items()} for row in rows],
        columns=list(RUN_COLUMNS.values()),
    )
    return table.loc[:, [column for column in table if table[column].ne("").any()]]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _with_label_columns(
    table: pd.DataFrame,
    rows: np.ndarray,
    labels: np.ndarray | None,
    predictions: np.ndarray | None,
    class_names: Sequence[str] | None,
) -> pd.DataFrame:
    for prefix, values in (("given", labels), ("predicted", predictions)):
        if values is None:
            continue
        picked = np.asarray(values)[rows]
        table[f"{prefix}_label"] = picked
        if class_names is not None:
            table[f"{prefix}_class"] = [class_name(label, class_names) for label in picked]
    return table


def detection_table(
    scores_by_name: Mapping[str, np.ndarray],
    noisy_mask: np.ndarray,
    ks: Sequence[int] = (10, 50, 100),
) -> pd.DataFrame:
    """AUC and precision / recall at k of each suspicion score, one row per score.

    Args:
        scores_by_name: Score name -> (n,) suspicion.
        noisy_mask: (n,) True where the label was flipped.
        ks: Inspection budgets.

    Returns:
        Columns ``score``, ``AUC``, then ``precision@k`` and ``recall@k`` for each k.
    """
    rows = []
    for name, scores in scores_by_name.items():
        row: dict[str, Any] = {"score": name, "AUC": roc_auc(scores, noisy_mask)}
        for k in ks:
            row[f"precision@{k}"] = precision_at_k(scores, noisy_mask, k)
            row[f"recall@{k}"] = recall_at_k(scores, noisy_mask, k)
        rows.append(row)
    return pd.DataFrame(rows)
