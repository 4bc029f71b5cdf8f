"""The flip matrix: given → suggested counts of the top suspects, and the cell a click picks.

The heatmap shows the counts; a scatter of one marker per non-empty cell sits on top and carries
``[given, suggested]`` in ``customdata``, so a click on a cell comes back from
``st.plotly_chart(on_select=...)`` as a point that ``clicked_confusion`` reads. Class names are
escaped (``plotly_text``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from dropinf.dashboard.style import LAYOUT, plotly_text


def flip_matrix_figure(
    counts: np.ndarray, class_names: Sequence[str], title: str = ""
) -> go.Figure:
    """A heatmap of given (rows) → suggested (columns) counts, each non-empty cell clickable.

    Args:
        counts: (C, C) counts, ``[g, s]`` = suspects given ``g`` and suggested ``s``.
        class_names: One name per class.
        title: The figure's title.

    Returns:
        The figure: trace 0 the heatmap, trace 1 the clickable cells.
    """
    names = [plotly_text(name) for name in class_names]
    given, suggested = np.nonzero(counts)  # (m,), (m,)
    figure = go.Figure(go.Heatmap(
        z=counts, x=names, y=names, colorscale="Blues", showscale=False, hoverinfo="skip",
    ))  # fmt: skip
    figure.add_trace(go.Scatter(
        x=[names[s] for s in suggested], y=[names[g] for g in given], mode="markers+text",
        text=[str(int(counts[g, s])) for g, s in zip(given, suggested, strict=True)],
        customdata=np.stack([given, suggested], axis=1), marker={"size": 28, "opacity": 0.01},
        hovertemplate="given %{y} → suggested %{x}: %{text}<extra>click to filter</extra>",
        showlegend=False,
    ))  # fmt: skip
    figure.update_layout(
        **LAYOUT, title=title or None, height=360, dragmode=False,
        xaxis={"title": "suggested", "type": "category"},
        yaxis={"title": "given", "type": "category", "autorange": "reversed"},
    )  # fmt: skip
    return figure


def clicked_confusion(selection_event: Any) -> tuple[int, int] | None:
    """The ``(given, suggested)`` cell of a click on ``flip_matrix_figure``, or None.

    Args:
        selection_event: The event of ``st.plotly_chart(on_select=...)`` (attribute or dict
            access), a bare ``selection`` mapping, or None.
    """
    selection = _field(selection_event, "selection") or selection_event
    for point in _field(selection, "points") or []:
        cell = _field(point, "customdata")
        if isinstance(cell, list | tuple | np.ndarray) and len(cell) == 2:
            return int(cell[0]), int(cell[1])
    return None


def _field(container: Any, name: str) -> Any:
    """``container[name]`` or ``container.name``; None when absent."""
    if isinstance(container, Mapping):
        return container.get(name)
    return getattr(container, name, None)
