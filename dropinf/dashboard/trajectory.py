"""Runs over a training trajectory: the checkpoints, the job's progress, when each was learned.

A training trajectory is several checkpoints of one model, taken while it trained (``python -m
dropinf train --save-checkpoints DIR``; the demos keep theirs in ``<demo>-checkpoints/``). The
Load page resolves a folder or several files into checkpoints in epoch order
(``trajectory_files``, ``ordered_trajectory``), the Compute page words the job's progress per
checkpoint (``ensemble_progress_text``), and the review card shows one training example along the
checkpoints (``trajectory_figure``, ``learned_sentence``) from ``RunReview.trajectory``'s table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dropinf.dashboard.style import LAYOUT, OPPONENT_COLOR, PROPONENT_COLOR, plotly_text
from dropinf.errors import CheckpointError
from dropinf.run import (
    check_one_model_family,
    checkpoint_files,
    ensemble_section,
    in_epoch_order,
)

if TYPE_CHECKING:
    from dropinf.models import LoadedCheckpoint
    from dropinf.run import JobStatus

MIN_TRAJECTORY = 2
SELF_INFLUENCE_COLOR = "#4C5FD5"
LOSS_COLOR = "#8A8F98"


def trajectory_files(sources: Sequence[str | Path]) -> list[Path]:
    """The checkpoint files of a trajectory: a folder's (``run.checkpoint_files``) or the files.

    Args:
        sources: One folder of checkpoints, or several checkpoint files (any order).

    Returns:
        The files, folders expanded; each file once.

    Raises:
        CheckpointError: Nothing given, or a folder that holds no checkpoint.
    """
    if not sources:
        raise CheckpointError("expected a folder of checkpoints or several checkpoint files, "
                              "found none")  # fmt: skip
    files: list[Path] = []
    for source in map(Path, sources):
        for path in checkpoint_files(source) if source.is_dir() else [source]:
            if path not in files:
                files.append(path)
    return files


def ordered_trajectory(checkpoints: Sequence[LoadedCheckpoint]) -> list[LoadedCheckpoint]:
    """Checkpoints of one trajectory in training order (the epoch in their metadata, then name).

    Raises:
        CheckpointError: Fewer than two checkpoints.
        CheckpointMismatchError: They are not of one architecture, shape and training set (the
            message names the odd one out), or one is given twice.
    """
    if len(checkpoints) < MIN_TRAJECTORY:
        names = ", ".join(c.path.name for c in checkpoints) or "none"
        raise CheckpointError(
            f"expected at least {MIN_TRAJECTORY} checkpoints for a training trajectory, "
            f"found {len(checkpoints)} ({names})"
        )
    check_one_model_family(checkpoints)
    return in_epoch_order(checkpoints)


def checkpoint_epochs(manifest: Mapping[str, Any] | None) -> list[int | None]:
    """The epoch of each checkpoint of an ensemble run's manifest ([] for a run of one model)."""
    entries = (ensemble_section(dict(manifest or {})) or {}).get("checkpoints") or []
    return [entry.get("epoch") if isinstance(entry.get("epoch"), int) else None
            for entry in entries]  # fmt: skip


def epochs_text(epochs: Sequence[int | None]) -> str:
    """``epochs 1, 2, 4, 8, 12`` (``?`` for an unknown one), or ``""`` when none is known."""
    if not any(epoch is not None for epoch in epochs):
        return ""
    shown = ", ".join("?" if epoch is None else str(epoch) for epoch in epochs)
    return f"epoch{'s' if len(epochs) > 1 else ''} {shown}"


def ensemble_progress_text(
    status: JobStatus,
    phases: Mapping[str, str],
    working: str,
    epochs: Sequence[int | None] = (),
) -> str:
    """The progress label of a job: per checkpoint for a run over several, else its phase.

    E.g. ``Checkpoint 3 of 5 · epoch 4 · Capturing the training gradients: 576 / 1,437 (40 %)``.

    Args:
        status: The job's status (``checkpoint_index`` / ``checkpoints`` when over several).
        phases: Phase names -> words (``ensemble``: combining the checkpoints' scores).
        working: The words for a phase not in ``phases``.
        epochs: The epoch of each checkpoint (``checkpoint_epochs``), if known.
    """
    phase = phases.get(status.phase, working)
    counted = status.total > 1
    where = (
        f"{phase}: {status.done:,} / {status.total:,} ({status.fraction:.0%})"
        if counted
        else f"{phase}…"
    )
    if status.checkpoints <= 0:
        return where
    index = status.checkpoint_index
    parts = [f"Checkpoint {index + 1} of {status.checkpoints}"]
    if 0 <= index < len(epochs) and epochs[index] is not None:
        parts.append(f"epoch {epochs[index]}")
    return " · ".join([*parts, where])


def learned_sentence(table: pd.DataFrame, class_name: Callable[[int], str], given: int) -> str:
    """When in training the model first predicted an example's given label, in words.

    Args:
        table: ``RunReview.trajectory``'s rows (``epoch``, ``checkpoint``, ``prediction``,
            ``learned``), in training order.
        class_name: Index -> class name.
        given: The example's given label.
    """
    learned = table["learned"].to_numpy(dtype=bool)
    names = [_moment(row) for row in table.itertuples()]
    label = class_name(given)
    final = class_name(int(table["prediction"].iloc[-1]))
    if not learned.any():
        return (f"No checkpoint predicted its given label {label}: the model never fitted it "
                f"(the last predicted {final}).")  # fmt: skip
    first = int(np.argmax(learned))
    if learned[first:].all():
        since = "every checkpoint" if first == 0 else f"{names[first]} on"
        earlier = _earlier_predictions(table.iloc[:first], class_name)
        return f"Predicted its given label {label} from {since}{earlier}."
    if learned[-1]:
        last_miss = int(np.flatnonzero(~learned)[-1])
        return (f"Predicted its given label {label} from {names[last_miss + 1]} on, after "
                f"changing its mind (not at {names[last_miss]}).")  # fmt: skip
    return (f"Predicted its given label {label} at {names[first]} but not at the end (the last "
            f"checkpoint predicted {final}).")  # fmt: skip


def _earlier_predictions(rows: pd.DataFrame, class_name: Callable[[int], str]) -> str:
    """``; before, it predicted 3, 5`` for the checkpoints before the label was learned."""
    if rows.empty:
        return ""
    predicted = list(dict.fromkeys(class_name(int(p)) for p in rows["prediction"]))
    return f"; before, it predicted {', '.join(predicted)} (a label fitted late)"


def _moment(row: Any) -> str:
    """``epoch 4``, or ``checkpoint 3`` when the epoch is unknown."""
    epoch = getattr(row, "epoch", None)
    return f"epoch {int(epoch)}" if epoch is not None and not pd.isna(epoch) else (
        f"checkpoint {int(row.checkpoint)}")  # fmt: skip


def trajectory_figure(
    table: pd.DataFrame, class_name: Callable[[int], str], title: str = ""
) -> go.Figure:
    """One training example along the checkpoints: self-influence and loss over training.

    The self-influence line's markers are green where the checkpoint predicted the given label
    and red where it did not (hover: the predicted class); the loss is on the right axis.

    Args:
        table: ``RunReview.trajectory``'s rows, in training order.
        class_name: Index -> class name (escaped here).
        title: The figure's title.

    Returns:
        The figure: trace 0 self-influence, trace 1 the loss.
    """
    known = bool(table["epoch"].notna().all())
    x = [int(v) for v in (table["epoch"] if known else table["checkpoint"])]
    learned = table["learned"].to_numpy(dtype=bool)
    predicted = [plotly_text(class_name(int(p))) for p in table["prediction"]]
    verdict = ["predicted its label" if ok else "predicted another" for ok in learned]
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_trace(go.Scatter(
        x=x, y=table["self_influence"], mode="lines+markers", name="self-influence",
        line={"color": SELF_INFLUENCE_COLOR},
        marker={"size": 11, "color": [PROPONENT_COLOR if ok else OPPONENT_COLOR for ok in learned],
                "symbol": ["circle" if ok else "x" for ok in learned]},
        customdata=np.stack([predicted, verdict], axis=1),
        hovertemplate="%{x}: self-influence %{y:.3g}<br>predicted %{customdata[0]} "
                      "(%{customdata[1]})<extra></extra>",
    ), secondary_y=False)  # fmt: skip
    figure.add_trace(go.Scatter(
        x=x, y=table["loss"], mode="lines", name="loss", line={"color": LOSS_COLOR, "dash": "dot"},
        hovertemplate="%{x}: loss %{y:.3g}<extra></extra>",
    ), secondary_y=True)  # fmt: skip
    figure.update_layout(
        **{**LAYOUT, "margin": {"l": 10, "r": 10, "t": 30 if title else 10, "b": 10}},
        title=title or None, height=240, legend={"orientation": "h", "y": -0.3},
        xaxis={"title": "epoch" if known else "checkpoint", "type": "log" if known else "linear",
               "tickmode": "array", "tickvals": x},
    )  # fmt: skip
    figure.update_yaxes(title_text="self-influence", secondary_y=False)
    figure.update_yaxes(title_text="loss", secondary_y=True, showgrid=False)
    return figure
