from __future__ import annotations

import base64
import io
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dropinf import dashboard as views

CLASS_NAMES = ["zero", "one", "two"]


@pytest.fixture
def scores_row() -> np.ndarray:
    return np.random.default_rng(0).normal(size=500)


@pytest.fixture
def labels() -> np.ndarray:
    return np.arange(500) % 3


def shape_fills(figure) -> list[str]:
    return [shape.fillcolor for shape in figure.layout.shapes if shape.type == "rect"]


def test_histogram_bins_on_the_server_and_counts_every_example(scores_row):
    figure = views.influence_histogram(scores_row, bins=40, tail_k=10)
    assert len(figure.data) == 1 and figure.data[0].type == "bar"
    assert len(figure.data[0].y) == 40 and sum(figure.data[0].y) == 500


def test_histogram_marks_the_proponent_and_opponent_tails(scores_row):
    figure = views.influence_histogram(scores_row, tail_k=10)
    rects = [shape for shape in figure.layout.shapes if shape.type == "rect"]
    proponents = next(r for r in rects if r.fillcolor == views.PROPONENT_COLOR)
    opponents = next(r for r in rects if r.fillcolor == views.OPPONENT_COLOR)
    assert np.sum(scores_row >= proponents.x0) == 10 and proponents.x1 == scores_row.max()
    assert np.sum(scores_row <= opponents.x1) == 10 and opponents.x0 == scores_row.min()
    texts = {annotation.text for annotation in figure.layout.annotations}
    assert texts == {"top 10 proponents", "top 10 opponents"}


def test_histogram_without_tails(scores_row):
    assert shape_fills(views.influence_histogram(scores_row, tail_k=0)) == []


def test_histogram_per_class_stacks_one_trace_per_class(scores_row, labels):
    figure = views.influence_histogram(
        scores_row, labels, CLASS_NAMES, color_by_class=True, bins=30
    )
    assert [trace.name for trace in figure.data] == CLASS_NAMES
    assert figure.layout.barmode == "stack"
    for label, trace in enumerate(figure.data):
        assert sum(trace.y) == np.sum(labels == label)


def test_histogram_per_class_needs_labels(scores_row):
    with pytest.raises(ValueError, match="labels"):
        views.influence_histogram(scores_row, color_by_class=True)


def test_map_by_class_has_one_trace_per_class_with_ids_in_customdata(labels):
    coords = np.random.default_rng(1).normal(size=(500, 2))
    ids = np.arange(1000, 1500)
    figure = views.gradient_map_figure(
        coords, ids, labels, "given label", CLASS_NAMES, hover_fields={"given": labels}
    )
    assert [trace.name for trace in figure.data] == CLASS_NAMES
    assert all(trace.type == "scattergl" for trace in figure.data)
    for label, trace in enumerate(figure.data):
        trace_ids = np.asarray(trace.customdata)[:, 0].astype(int)
        np.testing.assert_array_equal(trace_ids, ids[labels == label])
        np.testing.assert_allclose(trace.x, coords[labels == label, 0], rtol=1e-6)
    assert figure.layout.dragmode == "lasso"


def test_map_continuous_colour_is_one_trace_with_a_colour_bar():
    coords = np.zeros((4, 2))
    figure = views.gradient_map_figure(coords, color_values=np.array([0.1, 0.5, 0.2, 0.9]),
                                       color_name="self-influence")  # fmt: skip
    (trace,) = figure.data
    assert trace.marker.showscale and list(trace.marker.color) == [0.1, 0.5, 0.2, 0.9]
    assert [row[0] for row in trace.customdata] == [0, 1, 2, 3]


def test_map_review_status_uses_status_colours():
    status = np.array(["undecided", "remove", "keep", "undecided"])
    figure = views.gradient_map_figure(np.zeros((4, 2)), color_values=status)
    assert [trace.name for trace in figure.data] == ["undecided", "keep", "remove"]
    assert figure.data[2].marker.color == views.REVIEW_STATUS_COLORS["remove"]


def test_map_highlights_overlay_rings_on_chosen_ids():
    coords = np.arange(20, dtype=float).reshape(10, 2)
    ids = np.arange(100, 110)
    highlights = {"proponents": [103, 105], "opponents": [109], "missing": [7]}
    figure = views.gradient_map_figure(coords, ids, highlights=highlights)
    overlay = {trace.name: trace for trace in figure.data[1:]}
    assert [row[0] for row in overlay["proponents"].customdata] == [103, 105]
    assert list(overlay["proponents"].x) == [6.0, 10.0]
    assert overlay["opponents"].marker.line.color == views.OPPONENT_COLOR
    assert len(overlay["missing"].x) == 0


def test_selected_ids_from_streamlit_style_event_objects():
    points = [SimpleNamespace(customdata=[7, "a"], point_index=0, curve_number=0),
              SimpleNamespace(customdata=3, point_index=1, curve_number=0),
              SimpleNamespace(customdata=[7, "a"], point_index=0, curve_number=2)]  # fmt: skip
    event = SimpleNamespace(selection=SimpleNamespace(points=points))
    assert views.selected_ids(event) == [7, 3]


def test_selected_ids_from_dicts_and_point_index_fallback():
    figure = views.gradient_map_figure(
        np.zeros((6, 2)), np.arange(10, 16), np.array([0, 1, 0, 1, 0, 1])
    )
    event = {"selection": {"points": [
        {"curve_number": 1, "point_index": 2},  # third point of class 1 -> id 15
        {"curve_number": 0, "point_number": 0},  # first point of class 0 -> id 10
        {"customdata": [12]},
    ]}}  # fmt: skip
    assert views.selected_ids(event, figure) == [15, 10, 12]
    assert views.selected_ids({"selection": event["selection"]}, figure) == [15, 10, 12]


def test_selected_ids_of_nothing():
    assert views.selected_ids(None) == []
    assert views.selected_ids({"selection": {"points": []}}) == []
    assert views.selected_ids({"selection": {"points": [{"point_index": 4}]}}) == []


def test_detection_curve_counts_found_flips():
    noisy = np.array([True, False, True, False])
    inspected, found = views.detection_curve(np.array([0.9, 0.8, 0.1, 0.5]), noisy)
    np.testing.assert_allclose(inspected, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(found, [0, 0.5, 0.5, 0.5, 1])


def test_detection_curve_figure_lines_and_thinning():
    rng = np.random.default_rng(0)
    noisy = rng.random(2000) < 0.1
    scores = {"self-influence": noisy + rng.normal(0, 0.5, 2000), "random": rng.random(2000)}
    figure = views.detection_curve_figure(scores, noisy)
    names = [trace.name for trace in figure.data]
    assert names[0].startswith("self-influence (AUC 0.") and names[2:] == ["random order", "ideal"]
    assert len(figure.data[0].x) <= views.MAX_CURVE_POINTS
    assert figure.data[0].y[-1] == 1.0
    assert list(figure.data[3].x) == pytest.approx([0, noisy.mean(), 1])


def test_detection_table():
    noisy = np.array([True, True, False, False, False])
    perfect = np.array([5.0, 4, 3, 2, 1])
    table = views.detection_table({"perfect": perfect, "reversed": -perfect}, noisy, ks=(2,))
    assert list(table.columns) == ["score", "AUC", "precision@2", "recall@2"]
    assert table.iloc[0].tolist() == ["perfect", 1.0, 1.0, 1.0]
    assert table.iloc[1].tolist() == ["reversed", 0.0, 0.0, 0.0]


def test_before_after_figure_has_mean_and_std_error_bars():
    figure = views.before_after_figure([0.90, 0.92, 0.94], [0.95, 0.95, 0.95])
    bars, seeds = figure.data
    assert list(bars.x) == ["before fixes", "after fixes"]
    assert list(bars.y) == pytest.approx([0.92, 0.95])
    assert list(bars.error_y.array) == pytest.approx([0.02, 0.0])
    assert len(seeds.y) == 6


def test_top_influences_proponents_and_opponents():
    scores = np.array([0.5, -2.0, 3.0, 0.0, -1.0])
    labels = np.array([0, 1, 2, 0, 1])
    predictions = np.array([0, 1, 1, 0, 2])
    top = views.top_influences(scores, 2, labels, predictions, CLASS_NAMES)
    assert top["train_index"].tolist() == [2, 0]
    assert top["score"].tolist() == [3.0, 0.5]
    assert top["given_class"].tolist() == ["two", "zero"]
    assert top["predicted_label"].tolist() == [1, 0]
    bottom = views.top_influences(scores, 3, opponents=True)
    assert bottom["train_index"].tolist() == [1, 4, 3]
    assert list(bottom.columns) == ["rank", "train_index", "score"]


def test_thumbnail_png_is_upscaled_nearest_neighbour():
    digit = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    picture = Image.open(io.BytesIO(views.thumbnail_png(digit, min_size=96)))
    assert picture.size == (96, 96) and picture.mode == "L"
    pixels = np.asarray(picture)
    np.testing.assert_array_equal(pixels[::12, ::12], digit)
    assert (pixels[:12, :12] == digit[0, 0]).all()


def test_thumbnail_of_colour_and_large_images():
    colour = np.zeros((40, 30, 3), dtype=np.uint8)
    assert views.upscale_nearest(colour, 96).shape == (120, 90, 3)
    assert views.upscale_nearest(np.zeros((200, 100), np.uint8), 96).shape == (200, 100)


def test_data_uri_and_thumbnail_column():
    uri = views.thumbnail_data_uri(np.zeros((8, 8), np.uint8))
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.DataFrame({"train_index": [3, 5], "score": [1.0, 0.5]})
    seen = []
    shown = views.with_thumbnails(table, lambda i: seen.append(i) or np.zeros((8, 8), np.uint8))
    assert list(shown.columns) == ["image", "train_index", "score"] and seen == [3, 5]
    assert shown["image"].str.startswith("data:image/png").all()


def test_top_influences_can_exclude_ids():
    row = np.array([9.0, 1.0, 5.0, -3.0])
    table = views.top_influences(row, 2, exclude=[0])
    assert table["train_index"].tolist() == [2, 1] and table["rank"].tolist() == [1, 2]
    assert views.top_influences(row, 1, opponents=True, exclude=[3])["train_index"].tolist() == [1]


def test_influence_highlights_name_both_groups():
    highlights = views.influence_highlights(np.array([3.0, -2.0, 1.0, -5.0]), 1, "test #7")
    assert highlights == {"proponents of test #7": [0], "opponents of test #7": [3]}


def test_class_balance_counts_every_class():
    table = views.class_balance(np.array([0, 2, 2]), CLASS_NAMES)
    assert table["class"].tolist() == CLASS_NAMES and table["examples"].tolist() == [1, 0, 2]


def test_layer_table_lists_the_captured_layers():
    from torch import nn

    table = views.layer_table(
        nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    )
    assert list(table.columns) == ["layer", "kind", "parameters"]
    assert len(table) == 2 and table["parameters"].sum() == 4 * 3 + 3 + 3 * 2 + 2


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1,023 B"),
        (1536, "1.5 KB"),
        (5 * 1024**2, "5.0 MB"),
        (3 * 1024**4, "3.0 TB"),
    ],
)
def test_human_bytes(size, text):
    assert views.human_bytes(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-1, "< 1 s"), (0.4, "< 1 s"), (42, "42 s"), (185, "3 min 5 s"), (7800, "2 h 10 min")],
)
def test_human_seconds(seconds, text):
    assert views.human_seconds(seconds) == text


def test_example_indices_by_class_and_misclassified():
    labels, predictions = np.array([0, 1, 1, 2, 1]), np.array([0, 2, 1, 2, 0])
    assert views.example_indices(labels, predictions) == [0, 1, 2, 3, 4]
    assert views.example_indices(labels, predictions, label=1) == [1, 2, 4]
    assert views.example_indices(labels, predictions, misclassified_only=True) == [1, 4]
    assert views.example_indices(labels, predictions, 1, misclassified_only=True) == [1, 4]
