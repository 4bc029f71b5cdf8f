"""The review grid, its filters, the flip matrix counts and the suspects CSV."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dropinf.errors import ConfigError
from dropinf.review import (
    QueueFilter,
    RunReview,
    class_suspect_counts,
    filter_queue,
    flip_counts,
    suspects_csv,
)
from tests.review.test_run_review import LABELS, PREDICTIONS, write_store

NAMES = ["zero", "one", "two"]


@pytest.fixture
def run_review(tmp_path: Path) -> RunReview:
    return RunReview(write_store(tmp_path / "run"), class_names=NAMES)


def test_flip_counts_count_given_to_suggested_over_the_top_k() -> None:
    given, suggested = np.array([1, 1, 2, 0, 1]), np.array([2, 2, 1, 0, 0])
    counts = flip_counts(given, suggested, 3, top_k=4)
    expected = np.zeros((3, 3), dtype=np.int64)
    expected[1, 2], expected[2, 1], expected[0, 0] = 2, 1, 1
    np.testing.assert_array_equal(counts, expected)
    assert flip_counts(given, suggested, 3).sum() == 5
    with pytest.raises(ConfigError, match=r"0\.\.2"):
        flip_counts(np.array([3]), np.array([0]), 3)


def test_run_review_flip_counts_follow_the_queue(run_review: RunReview) -> None:
    queue = run_review.queue(include_decided=True)
    counts = run_review.flip_counts(3, top_k=2)
    top = queue.head(2)
    for g, p in zip(top["given_label"], top["predicted_label"], strict=True):
        assert counts[g, p] >= 1
    assert counts.sum() == 2
    np.testing.assert_array_equal(run_review.flip_counts(3).sum(axis=1), np.bincount(LABELS))


def test_class_suspect_counts_name_flips_out_of_each_class() -> None:
    counts = np.array([[1, 0, 0], [0, 0, 2], [0, 0, 0]])
    table = class_suspect_counts(counts, NAMES)
    assert table.to_dict("list") == {
        "class": ["zero", "one", "two"], "given": [1, 2, 0], "suggested": [1, 0, 2],
        "flips": [0, 2, 0],
    }  # fmt: skip


def test_grid_filters_by_class_and_score_in_queue_order(run_review: RunReview) -> None:
    grid = run_review.grid(ids=[f"img/{i}.png" for i in range(6)])
    assert grid["train_index"].tolist() == run_review.queue()["train_index"].tolist()
    assert grid["path"].tolist() == [f"img/{i}.png" for i in grid["train_index"]]
    confusion = filter_queue(grid, QueueFilter(given=[1], suggested=[2]))
    assert confusion["train_index"].tolist() == [1]
    high = filter_queue(grid, QueueFilter(min_score=2.0))
    assert (high["suspicion"] >= 2.0).all() and 0 < len(high) < len(grid)
    assert "path" not in run_review.grid().columns


def test_grid_shows_decisions_when_decided_rows_are_included(run_review: RunReview) -> None:
    run_review.decide([5], "relabel", 1)
    grid = run_review.grid(include_decided=True).set_index("train_index")
    assert grid.loc[5, "decision"] == "relabel → one"
    assert 5 not in run_review.grid()["train_index"].tolist()


def test_suspects_csv_keeps_the_queue_order(run_review: RunReview) -> None:
    table = pd.read_csv(io.BytesIO(suspects_csv(run_review.grid(), top=4)))
    assert table["train_index"].tolist() == run_review.queue()["train_index"].tolist()[:4]
    assert list(table.columns) == [
        "rank", "train_index", "given_label", "given_class", "predicted_label",
        "predicted_class", "suggested_label", "suggested_class", "score",
    ]  # fmt: skip
    assert table["suggested_label"].tolist() == PREDICTIONS[table["train_index"]].tolist()


def test_suggestions_replace_the_prediction_in_the_grid_and_the_flip_matrix(
    run_review: RunReview,
) -> None:
    suggestions = {0: 2, 4: 0}  # train #0 (given 0) → two; train #4 (given 1) → zero
    grid = run_review.grid(include_decided=True, suggestions=suggestions).set_index("train_index")
    assert grid.loc[0, "suggested_label"] == 2 and grid.loc[0, "suggested_class"] == "two"
    assert grid.loc[4, "suggested_label"] == 0
    others = grid.drop(index=[0, 4])
    assert (others["suggested_label"] == others["predicted_label"]).all(), "the rest: predicted"
    counts = run_review.flip_counts(3, suggestions=suggestions)
    assert counts[0, 2] == 1 and counts[1, 0] == 1
    np.testing.assert_array_equal(counts.sum(axis=1), np.bincount(LABELS))
    shown = run_review.grid(queue_filter=QueueFilter(suggested=[2]), suggestions=suggestions)
    assert 0 in shown["train_index"].tolist()
