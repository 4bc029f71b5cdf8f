"""Plotly figure builders: influence histogram, detection curves, before / after retraining.

Big arrays stay on the server: histograms are binned here and sent as bars, and detection
curves are thinned to a few hundred points. Names from data are escaped (``plotly_text``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from dropinf.dashboard.style import (
    LAYOUT,
    NEUTRAL_COLOR,
    OPPONENT_COLOR,
    PROPONENT_COLOR,
    class_name,
    palette,
    plotly_text,
)
from dropinf.metrics import inspection_order, roc_auc

MAX_CURVE_POINTS = 400


# --------------------------------------------------------------------------------------------
# Influence histogram
# --------------------------------------------------------------------------------------------


def influence_histogram(
    scores_row: np.ndarray,
    labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    tail_k: int = 10,
    color_by_class: bool = False,
    bins: int = 60,
    log_y: bool = False,
    title: str | None = None,
) -> go.Figure:
    """Histogram of every training example's influence on one test example.

    Counts are binned here (one bar per bin, stacked by class when asked), so the browser gets
    ``bins`` numbers per trace, not one per training example. The ``tail_k`` strongest
    proponents and opponents are shaded, with their thresholds marked.

    Args:
        scores_row: (n_train,) scores for one test example; + = proponent.
        labels: (n_train,) given labels, needed for ``color_by_class``.
        class_names: Names of the classes, indexed by label.
        tail_k: How many proponents / opponents the shaded tails hold (0: no tails).
        color_by_class: Stack one coloured bar trace per class.
        bins: Number of bins.
        log_y: Logarithmic count axis (influence is heavy-tailed).
        title: Figure title.

    Returns:
        The figure: bar traces (``training examples`` or one per class), tail rectangles.

    Raises:
        ValueError: If ``color_by_class`` is asked without labels.
    """
    scores_row = np.asarray(scores_row, dtype=np.float64).ravel()
    edges = np.histogram_bin_edges(scores_row, bins=bins)
    figure = go.Figure(layout={**LAYOUT, "barmode": "stack", "bargap": 0.02})
    for name, members, color in _histogram_groups(scores_row, labels, class_names, color_by_class):
        counts, _ = np.histogram(scores_row[members], bins=edges)
        figure.add_trace(_histogram_bars(counts, edges, name, color))
    _mark_tails(figure, scores_row, tail_k)
    figure.update_layout(
        title=title, xaxis_title="influence on the test example (+ = proponent)",
        yaxis_title="training examples", yaxis_type="log" if log_y else "linear",
        showlegend=color_by_class,
    )  # fmt: skip
    return figure


def _histogram_groups(
    scores_row: np.ndarray,
    labels: np.ndarray | None,
    class_names: Sequence[str] | None,
    color_by_class: bool,
) -> list[tuple[str, np.ndarray, str]]:
    if not color_by_class:
        return [("training examples", np.ones(scores_row.size, dtype=bool), NEUTRAL_COLOR)]
    if labels is None:
        raise ValueError("color_by_class needs the training labels, got labels=None")
    labels = np.asarray(labels).ravel()
    colors = palette(int(labels.max()) + 1 if labels.size else 0)
    return [
        (plotly_text(class_name(label, class_names)), labels == label, colors[label])
        for label in np.unique(labels).tolist()
    ]


def _histogram_bars(counts: np.ndarray, edges: np.ndarray, name: str, color: str) -> go.Bar:
    centers = (edges[:-1] + edges[1:]) / 2
    return go.Bar(
        x=centers, y=counts, width=np.diff(edges), name=name, marker_color=color,
        customdata=np.stack([edges[:-1], edges[1:]], axis=1),
        hovertemplate="%{customdata[0]:.3g} to %{customdata[1]:.3g}: %{y} examples"
        f"<extra>{name}</extra>",
    )  # fmt: skip


def _mark_tails(figure: go.Figure, scores_row: np.ndarray, tail_k: int) -> None:
    tail_k = min(tail_k, scores_row.size)
    if tail_k < 1:
        return
    ordered = np.sort(scores_row)
    opponent_edge, proponent_edge = ordered[tail_k - 1], ordered[-tail_k]
    tails = (
        (proponent_edge, ordered[-1], PROPONENT_COLOR, f"top {tail_k} proponents", "right"),
        (ordered[0], opponent_edge, OPPONENT_COLOR, f"top {tail_k} opponents", "left"),
    )
    for low, high, color, text, side in tails:
        figure.add_vrect(
            x0=low, x1=high, fillcolor=color, opacity=0.15, line_width=0,
            annotation_text=text, annotation_position=f"top {side}",
        )  # fmt: skip
        edge = low if side == "right" else high
        figure.add_vline(x=edge, line_color=color, line_dash="dot", line_width=1)


# --------------------------------------------------------------------------------------------
# Mislabel detection quality
# --------------------------------------------------------------------------------------------


def detection_curve(scores: np.ndarray, noisy_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share of flipped labels found against share of the training set inspected.

    Args:
        scores: (n,) suspicion, higher = inspected first.
        noisy_mask: (n,) True where the label was flipped.

    Returns:
        (inspected_share, found_share), each of shape (n + 1,), starting at (0, 0).
    """
    noisy_mask = np.asarray(noisy_mask, dtype=bool).ravel()
    found = np.cumsum(noisy_mask[inspection_order(scores)]) / max(1, int(noisy_mask.sum()))
    inspected = np.arange(1, noisy_mask.size + 1) / noisy_mask.size
    return np.concatenate([[0.0], inspected]), np.concatenate([[0.0], found])


def detection_curve_figure(
    scores_by_name: Mapping[str, np.ndarray], noisy_mask: np.ndarray, title: str | None = None
) -> go.Figure:
    """Detection-quality curves of one or more suspicion scores, with chance and ideal lines.

    Args:
        scores_by_name: Score name -> (n,) suspicion (e.g. self-influence).
        noisy_mask: (n,) True where the label was flipped.
        title: Figure title.

    Returns:
        The figure: one line per score (AUC in its name), ``random order`` and ``ideal``.
    """
    noisy_mask = np.asarray(noisy_mask, dtype=bool).ravel()
    figure = go.Figure(layout=LAYOUT)
    for name, scores in scores_by_name.items():
        inspected, found = _thin(*detection_curve(scores, noisy_mask))
        auc = roc_auc(scores, noisy_mask)
        figure.add_trace(
            go.Scatter(x=inspected, y=found, mode="lines", name=f"{name} (AUC {auc:.3f})")
        )
    noisy_share = noisy_mask.mean() if noisy_mask.size else 1.0
    figure.add_trace(_reference_line([0, 1], [0, 1], "random order"))
    figure.add_trace(_reference_line([0, noisy_share, 1], [0, 1, 1], "ideal"))
    figure.update_layout(
        title=title, xaxis_title="share of training set inspected",
        yaxis_title="share of flipped labels found", xaxis_range=[0, 1], yaxis_range=[0, 1.02],
        hovermode="x unified",
    )  # fmt: skip
    return figure


def _reference_line(x: list[float], y: list[float], name: str) -> go.Scatter:
    return go.Scatter(x=x, y=y, mode="lines", name=name, line={"dash": "dot", "color": "#9e9e9e"})


def _thin(x: np.ndarray, y: np.ndarray, limit: int = MAX_CURVE_POINTS) -> tuple[np.ndarray, ...]:
    if x.size <= limit:
        return x, y
    keep = np.unique(np.linspace(0, x.size - 1, limit).round().astype(int))
    return x[keep], y[keep]


# --------------------------------------------------------------------------------------------
# Retraining before / after
# --------------------------------------------------------------------------------------------


def before_after_figure(
    before: Sequence[float],
    after: Sequence[float],
    metric: str = "test accuracy",
    title: str | None = None,
) -> go.Figure:
    """Bars of a metric before and after retraining with the fixes: mean ± std over seeds.

    Args:
        before: The metric per seed, trained on the data as given.
        after: The metric per seed, trained on the fixed data.
        metric: The metric's name (y-axis title).
        title: Figure title.

    Returns:
        The figure: one bar trace with error bars, one marker trace with the single seeds.
    """
    groups = {"before fixes": np.asarray(before, float), "after fixes": np.asarray(after, float)}
    means = [values.mean() for values in groups.values()]
    stds = [values.std(ddof=1) if values.size > 1 else 0.0 for values in groups.values()]
    figure = go.Figure(layout=LAYOUT)
    figure.add_trace(
        go.Bar(
            x=list(groups), y=means, error_y={"type": "data", "array": stds, "visible": True},
            marker_color=[NEUTRAL_COLOR, PROPONENT_COLOR], name="mean ± std over seeds",
            text=[f"{mean:.4g}" for mean in means], textposition="outside",
        )
    )  # fmt: skip
    seed_x = [name for name, values in groups.items() for _ in values]
    seed_y = np.concatenate(list(groups.values()))
    figure.add_trace(
        go.Scatter(x=seed_x, y=seed_y, mode="markers", name="single seeds",
                   marker={"color": "#263238", "size": 7, "symbol": "circle-open"})
    )  # fmt: skip
    figure.update_layout(title=title, yaxis_title=metric, showlegend=True)
    return figure
