"""The gradient map's scatter figure and the selection events that come back from it.

The figure sends 2-D coordinates with the training ids (and short hover fields) only. Every
trace carries the training ids in ``customdata`` (first column), so a box or lasso selection
returned by ``st.plotly_chart(on_select="rerun")`` maps back to ids with ``selected_ids``.
Hover fields and legend names from data are escaped (``plotly_text``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

from dropinf.dashboard.style import (
    LAYOUT,
    NEUTRAL_COLOR,
    OPPONENT_COLOR,
    PROPONENT_COLOR,
    REVIEW_STATUS_COLORS,
    category_label,
    palette,
    plotly_text,
)


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
    selected: Sequence[int] = (),
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
        selected: Training ids drawn as selected (the others dimmed), e.g. a selection kept
            across a redraw; none dims nothing.

    Returns:
        The figure; every trace's ``customdata[:, 0]`` holds training ids.
    """
    coords = np.asarray(coords, dtype=np.float32)
    ids = np.arange(len(coords)) if ids is None else np.asarray(ids, dtype=np.int64)
    customdata, hovertemplate = _map_hover(ids, hover_fields or {})
    traces = _map_traces(coords, customdata, color_values, color_name, category_names)
    figure = go.Figure(layout={**LAYOUT, "dragmode": "lasso", "uirevision": "gradient-map"})
    for trace in traces:
        trace.update(hovertemplate=hovertemplate, marker_size=point_size)
        _mark_selected(trace, selected)
        figure.add_trace(trace)
    _add_highlights(figure, coords, ids, highlights or {}, point_size)
    figure.update_layout(
        title=title, clickmode="event+select", legend_title_text=color_name,
        xaxis={"showticklabels": False, "title": None, "zeroline": False},
        yaxis={"showticklabels": False, "title": None, "zeroline": False},
    )  # fmt: skip
    return figure


def _mark_selected(trace: go.Scattergl, selected: Sequence[int]) -> None:
    """Draw the trace's points among ``selected`` as selected and dim the others."""
    if len(selected) == 0:
        return
    trace_ids = np.asarray(trace.customdata)[:, 0].astype(np.int64)  # (points,)
    rows = np.flatnonzero(np.isin(trace_ids, np.asarray(selected, dtype=np.int64)))
    trace.update(selectedpoints=rows.tolist(), unselected={"marker": {"opacity": 0.25}})


def _map_hover(
    ids: np.ndarray, hover_fields: Mapping[str, Sequence[Any] | np.ndarray]
) -> tuple[np.ndarray, str]:
    escaped = (
        np.array([plotly_text(x) if isinstance(x, str) else x for x in values], dtype=object)
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
    colors = palette(len(categories))
    traces = []
    for position, category in enumerate(categories):
        members = values == category
        name = category_label(category, category_names)
        color = REVIEW_STATUS_COLORS.get(name, colors[position])
        traces.append(
            _points(coords[members], customdata[members], plotly_text(name), marker_color=color)
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
