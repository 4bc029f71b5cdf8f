"""Plotly figure builders and table shapers for the dashboard: pure functions, no Streamlit.

Big arrays stay on the server: histograms are binned here and sent as bars, the gradient map
sends 2-D coordinates with the training ids (and short hover fields) only, detection curves are
thinned to a few hundred points, and pictures go out as small PNGs.

Every string that comes from data or files (class, folder, file and run names) is escaped
before it reaches HTML: the caption and sidebar builders here, and plotly's text (trace names,
hover fields), which plotly renders as a subset of HTML.

Every map trace carries the training ids in ``customdata`` (first column), so a box or lasso
selection returned by ``st.plotly_chart(on_select="rerun")`` maps back to ids with
``selected_ids``.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image
from plotly.colors import qualitative
from torch import nn

from dropinf.core import discover_layers
from dropinf.metrics import inspection_order, precision_at_k, recall_at_k, roc_auc

PROPONENT_COLOR = "#2e7d32"
OPPONENT_COLOR = "#c62828"
NEUTRAL_COLOR = "#90a4ae"
REVIEW_STATUS_COLORS = {
    "undecided": "#b0bec5",
    "flagged": "#8e24aa",
    "keep": "#1e88e5",
    "relabel": "#fb8c00",
    "remove": "#e53935",
}
MAX_CURVE_POINTS = 400
_LAYOUT = {"template": "plotly_white", "margin": {"l": 50, "r": 20, "t": 50, "b": 45}}


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
    figure = go.Figure(layout={**_LAYOUT, "barmode": "stack", "bargap": 0.02})
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
    palette = _palette(int(labels.max()) + 1 if labels.size else 0)
    return [
        (_plotly_text(_class_name(label, class_names)), labels == label, palette[label])
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
# Gradient map
# --------------------------------------------------------------------------------------------


def gradient_map_figure(
    coords: np.ndarray,
    ids: Sequence[int] | np.ndarray | None = None,
    color_values: Sequence[Any] | np.ndarray | None = None,
    color_name: str = "",
    category_names: Sequence[str] | None = None,
    hover_fields: Mapping[str, Sequence[Any] | np.ndarray] | None = None,
    highlights: Mapping[str, Sequence[int]] | None = None,
    title: str | None = None,
    point_size: float = 5.0,
) -> go.Figure:
    """Scatter of the training gradients' 2-D embedding, ready for box / lasso selection.

    Colour is categorical (one legend entry per value: given label, predicted label, review
    status) when the values are integers, booleans or strings, and continuous (a colour bar:
    self-influence) when they are floats. ``highlights`` overlays rings on chosen training
    examples, e.g. the proponents and opponents of one test example.

    Args:
        coords: (n, 2) embedding coordinates.
        ids: (n,) training ids of the rows; ``range(n)`` when None.
        color_values: (n,) one value per point, or None for a single colour.
        color_name: Legend / colour-bar title.
        category_names: Names for integer categories (e.g. class names), indexed by value.
        hover_fields: Extra (n,) fields shown on hover, by label.
        highlights: Overlay name -> training ids drawn as rings (``customdata`` = ids too);
            the first uses the proponent colour, the second the opponent colour.
        title: Figure title.
        point_size: Marker size.

    Returns:
        The figure; every trace's ``customdata[:, 0]`` holds training ids.
    """
    coords = np.asarray(coords, dtype=np.float32)
    ids = np.arange(len(coords)) if ids is None else np.asarray(ids, dtype=np.int64)
    customdata, hovertemplate = _map_hover(ids, hover_fields or {})
    traces = _map_traces(coords, customdata, color_values, color_name, category_names)
    figure = go.Figure(layout={**_LAYOUT, "dragmode": "lasso", "uirevision": "gradient-map"})
    for trace in traces:
        trace.update(hovertemplate=hovertemplate, marker_size=point_size)
        figure.add_trace(trace)
    _add_highlights(figure, coords, ids, highlights or {}, point_size)
    figure.update_layout(
        title=title, clickmode="event+select", legend_title_text=color_name,
        xaxis={"showticklabels": False, "title": None, "zeroline": False},
        yaxis={"showticklabels": False, "title": None, "zeroline": False},
    )  # fmt: skip
    return figure


def _map_hover(
    ids: np.ndarray, hover_fields: Mapping[str, Sequence[Any] | np.ndarray]
) -> tuple[np.ndarray, str]:
    escaped = (
        np.array([_plotly_text(x) if isinstance(x, str) else x for x in values], dtype=object)
        for values in hover_fields.values()
    )
    columns = [ids.astype(object), *escaped]
    customdata = np.stack(columns, axis=1)  # (n, 1 + fields)
    lines = ["train #%{customdata[0]}"] + [
        f"{label}: %{{customdata[{column}]}}" for column, label in enumerate(hover_fields, start=1)
    ]
    return customdata, "<br>".join(lines) + "<extra></extra>"


def _map_traces(
    coords: np.ndarray,
    customdata: np.ndarray,
    color_values: Sequence[Any] | np.ndarray | None,
    color_name: str,
    category_names: Sequence[str] | None,
) -> list[go.Scattergl]:
    if color_values is None:
        return [_points(coords, customdata, "training examples", marker_color=NEUTRAL_COLOR)]
    values = np.asarray(color_values)
    if values.dtype.kind == "f":
        colorbar = {"title": {"text": color_name}}
        marker = {"color": values, "colorscale": "Viridis", "showscale": True, "colorbar": colorbar}
        return [_points(coords, customdata, color_name or "training examples", marker=marker)]
    return _category_traces(coords, customdata, values, category_names)


def _category_traces(
    coords: np.ndarray,
    customdata: np.ndarray,
    values: np.ndarray,
    category_names: Sequence[str] | None,
) -> list[go.Scattergl]:
    categories = _ordered_categories(values)
    palette = _palette(len(categories))
    traces = []
    for position, category in enumerate(categories):
        members = values == category
        name = _category_label(category, category_names)
        color = REVIEW_STATUS_COLORS.get(name, palette[position])
        traces.append(
            _points(coords[members], customdata[members], _plotly_text(name), marker_color=color)
        )
    return traces


def _ordered_categories(values: np.ndarray) -> list[Any]:
    present = np.unique(values).tolist()
    known_order = [status for status in REVIEW_STATUS_COLORS if status in present]
    return known_order if len(known_order) == len(present) else present


def _points(coords: np.ndarray, customdata: np.ndarray, name: str, **style: Any) -> go.Scattergl:
    return go.Scattergl(
        x=coords[:, 0], y=coords[:, 1], mode="markers", name=name, customdata=customdata, **style
    )


def _add_highlights(
    figure: go.Figure,
    coords: np.ndarray,
    ids: np.ndarray,
    highlights: Mapping[str, Sequence[int]],
    point_size: float,
) -> None:
    row_of_id = {int(train_id): row for row, train_id in enumerate(ids.tolist())}
    colors = [PROPONENT_COLOR, OPPONENT_COLOR, *qualitative.Dark24]
    for (name, wanted), color in zip(highlights.items(), colors, strict=False):
        rows = [row_of_id[int(i)] for i in wanted if int(i) in row_of_id]
        marker = {"size": point_size * 2.4, "color": "rgba(0,0,0,0)",
                  "line": {"width": 2, "color": color}}  # fmt: skip
        hovertemplate = f"train #%{{customdata[0]}}<extra>{name}</extra>"
        figure.add_trace(
            go.Scattergl(
                x=coords[rows, 0], y=coords[rows, 1], mode="markers", name=name, marker=marker,
                customdata=ids[rows][:, None], hovertemplate=hovertemplate,
            )
        )  # fmt: skip


def selected_ids(selection_event: Any, figure: go.Figure | None = None) -> list[int]:
    """Training ids of the points in a Plotly selection event, in selection order, unique.

    Accepts the event of ``st.plotly_chart(on_select="rerun")`` (attribute or dict access), a
    bare ``selection`` mapping, or None. Each point's id comes from its ``customdata`` (a scalar
    or a row whose first entry is the id); points without customdata fall back to their
    ``point_index`` within trace ``curve_number`` of ``figure``.

    Args:
        selection_event: The event, or None when nothing was selected.
        figure: The figure the event came from, for the ``point_index`` fallback.

    Returns:
        The selected training ids.
    """
    selection = _field(selection_event, "selection") or selection_event
    points = _field(selection, "points") or []
    ids: dict[int, None] = {}
    for point in points:
        train_id = _point_id(point, figure)
        if train_id is not None:
            ids[train_id] = None
    return list(ids)


def _point_id(point: Any, figure: go.Figure | None) -> int | None:
    customdata = _field(point, "customdata")
    if isinstance(customdata, list | tuple | np.ndarray):
        customdata = customdata[0] if len(customdata) else None
    if customdata is not None:
        return int(customdata)
    index = _field(point, "point_index")
    index = _field(point, "point_number") if index is None else index
    if figure is None or index is None:
        return None
    trace = figure.data[int(_field(point, "curve_number") or 0)]
    trace_ids = np.asarray(trace.customdata)[:, 0] if trace.customdata is not None else None
    return int(trace_ids[int(index)]) if trace_ids is not None else int(index)


def _field(container: Any, name: str) -> Any:
    if container is None:
        return None
    if isinstance(container, Mapping):
        return container.get(name)
    try:
        return getattr(container, name)
    except (AttributeError, KeyError):
        return None


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
    figure = go.Figure(layout=_LAYOUT)
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
    figure = go.Figure(layout=_LAYOUT)
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


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


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
    """The layers whose per-sample gradients a run captures: ``layer``, ``kind``, ``parameters``.

    Raises:
        NoCapturableLayerError: The model has none.
    """
    rows = [
        {"layer": spec.name, "kind": spec.kind, "parameters": spec.full_dim}
        for spec in discover_layers(model).specs
    ]
    return pd.DataFrame(rows, columns=["layer", "kind", "parameters"])


def human_bytes(size: float) -> str:
    """A byte count in B / KB / MB / GB / TB (powers of 1024), e.g. ``1.5 MB``."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TB"


def human_seconds(seconds: float) -> str:
    """A duration as ``< 1 s``, ``42 s``, ``3 min 5 s`` or ``2 h 10 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 1 else "< 1 s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"


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
            table[f"{prefix}_class"] = [_class_name(label, class_names) for label in picked]
    return table


# --------------------------------------------------------------------------------------------
# Thumbnails
# --------------------------------------------------------------------------------------------


def upscale_nearest(image: np.ndarray, min_size: int = 96) -> np.ndarray:
    """Repeat pixels so the longer side is at least ``min_size`` (sharp 8×8 digits).

    Args:
        image: uint8 (H, W) or (H, W, C).
        min_size: Smallest wanted length of the longer side, in pixels.

    Returns:
        The image scaled by a whole factor (1 if it is already large enough).
    """
    factor = max(1, math.ceil(min_size / max(image.shape[:2])))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def thumbnail_png(image: np.ndarray, min_size: int = 96) -> bytes:
    """A PNG of one example's picture, upscaled nearest-neighbour.

    Args:
        image: uint8 (H, W) grey or (H, W, 3) colour, as ``DatasetBundle.thumbnail`` returns.
        min_size: Smallest length of the longer side, in pixels.

    Returns:
        The PNG bytes.
    """
    pixels = np.ascontiguousarray(upscale_nearest(np.asarray(image, dtype=np.uint8), min_size))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnail_data_uri(image: np.ndarray, min_size: int = 96) -> str:
    """A ``data:image/png;base64,...`` URI of one picture (for ``st.column_config.ImageColumn``)."""
    return "data:image/png;base64," + base64.b64encode(thumbnail_png(image, min_size)).decode()


def with_thumbnails(
    table: pd.DataFrame,
    thumbnail_of: Callable[[int], np.ndarray],
    id_column: str = "train_index",
    column: str = "image",
    min_size: int = 64,
) -> pd.DataFrame:
    """A copy of ``table`` with a first column of picture data URIs, one per row's id.

    Args:
        table: Rows with training (or test) ids in ``id_column``.
        thumbnail_of: id -> uint8 picture, e.g. ``lambda i: bundle.thumbnail("train", i)``.
        id_column: The column holding the ids.
        column: Name of the new column.
        min_size: Smallest length of the pictures' longer side.

    Returns:
        The new table.
    """
    uris = [thumbnail_data_uri(thumbnail_of(int(i)), min_size) for i in table[id_column]]
    return pd.concat([pd.DataFrame({column: uris}, index=table.index), table], axis=1)


# --------------------------------------------------------------------------------------------
# HTML captions and cards (every name escaped)
# --------------------------------------------------------------------------------------------


def caption_html(lines: Sequence[str]) -> str:
    """A compact multi-line caption for a thumbnail.

    Args:
        lines: Lines of markup, already escaped (built by the functions below).

    Returns:
        The caption's HTML.
    """
    return '<div class="dropinf-caption">' + "<br>".join(lines) + "</div>"


def score_html(score: float) -> str:
    """A signed score coloured as proponent (+) or opponent (-)."""
    css = "score-pos" if score >= 0 else "score-neg"
    return f'<span class="{css}">{score:+.3g}</span>'


def train_caption_html(
    index: int, given: str, predicted: str, suspect: bool, score: float | None = None
) -> str:
    """Caption of a training thumbnail: index, suspect flag, score, given and predicted class.

    Args:
        index: The training index.
        given: The given class name (from the data; escaped here).
        predicted: The predicted class name (escaped here).
        suspect: Whether to show the suspect-label flag.
        score: The influence score to show, or None.

    Returns:
        The caption's HTML.
    """
    flag = ' <span class="flag" title="suspect label">⚑</span>' if suspect else ""
    scored = f" · {score_html(score)}" if score is not None else ""
    return caption_html(
        [
            f"#{int(index)}{flag}{scored}",
            f"given <b>{html.escape(given)}</b>"
            f' <span class="muted">pred {html.escape(predicted)}</span>',
        ]
    )


def test_caption_html(index: int, true: str, predicted: str, score: float) -> str:
    """Caption of a test thumbnail with the score a training example has on it.

    Args:
        index: The test index.
        true: The true class name (from the data; escaped here).
        predicted: The predicted class name (escaped here).
        score: The training example's influence on this test example.

    Returns:
        The caption's HTML.
    """
    return caption_html(
        [
            f"test #{int(index)} · {score_html(score)}",
            f"true <b>{html.escape(true)}</b>"
            f' <span class="muted">pred {html.escape(predicted)}</span>',
        ]
    )


def sidebar_card_html(model: str, dataset: str, run: str) -> str:
    """The sidebar card naming the current model, dataset and run (each escaped).

    Args:
        model: The model's name (a file name).
        dataset: The dataset spec (may hold a path).
        run: The run key.

    Returns:
        The card's HTML.
    """
    model, dataset, run = (html.escape(text) for text in (model, dataset, run))
    return (
        '<div class="dropinf-sidebar-card">'
        f"<b>Model</b><br>{model}<br><b>Dataset</b><br>{dataset}<br><b>Run</b><br>{run}</div>"
    )


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _palette(size: int) -> list[str]:
    colors = qualitative.Plotly if size <= len(qualitative.Plotly) else qualitative.Light24
    return [colors[i % len(colors)] for i in range(max(size, 1))]


def _plotly_text(value: Any) -> str:
    """A value as plotly text: escaped, since plotly renders tags such as ``<a>`` and ``<b>``."""
    return html.escape(str(value))


def _class_name(label: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= int(label) < len(class_names):
        return str(class_names[int(label)])
    return str(label)


def _category_label(category: Any, category_names: Sequence[str] | None) -> str:
    if isinstance(category, int | np.integer) and not isinstance(category, bool):
        return _class_name(int(category), category_names)
    return str(category)
