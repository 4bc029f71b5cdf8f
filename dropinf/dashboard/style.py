"""The dashboard's shared look: colours, plotly layout, palettes and escaped plotly text.

Every string that comes from data or files (class, folder, file and run names) goes through
``plotly_text`` before it reaches a plotly figure: plotly renders trace names and hover fields
as a subset of HTML.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np
from plotly.colors import qualitative

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
LAYOUT = {"template": "plotly_white", "margin": {"l": 50, "r": 20, "t": 50, "b": 45}}


def palette(size: int) -> list[str]:
    """``size`` distinct qualitative colours (at least one), cycling when there are too many."""
    colors = qualitative.Plotly if size <= len(qualitative.Plotly) else qualitative.Light24
    return [colors[i % len(colors)] for i in range(max(size, 1))]


def plotly_text(value: Any) -> str:
    """A value as plotly text: escaped, since plotly renders tags such as ``<a>`` and ``<b>``."""
    return html.escape(str(value))


def class_name(label: int, class_names: Sequence[str] | None) -> str:
    """The name of class ``label``, or the label itself when it has no name (not escaped)."""
    if class_names is not None and 0 <= int(label) < len(class_names):
        return str(class_names[int(label)])
    return str(label)


def category_label(category: Any, category_names: Sequence[str] | None) -> str:
    """A colour category's legend label: integer categories by name, others as text."""
    if isinstance(category, int | np.integer) and not isinstance(category, bool):
        return class_name(int(category), category_names)
    return str(category)
