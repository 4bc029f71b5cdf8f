"""The flip matrix figure and the confusion a click on it picks."""

from __future__ import annotations

import numpy as np

from dropinf.dashboard import clicked_confusion, flip_matrix_figure


def test_a_click_on_a_flip_matrix_cell_names_its_confusion() -> None:
    counts = np.array([[0, 3], [1, 0]])
    figure = flip_matrix_figure(counts, ["<b>a", "b"])
    cells = figure.data[1].customdata.tolist()
    assert cells == [[0, 1], [1, 0]]
    assert "<b>" not in "".join(figure.data[0].x), "class names are escaped"
    event = {"selection": {"points": [{"customdata": cells[1], "x": "b", "y": "a"}]}}
    assert clicked_confusion(event) == (1, 0)
    assert clicked_confusion({"selection": {"points": []}}) is None
    assert clicked_confusion(None) is None
