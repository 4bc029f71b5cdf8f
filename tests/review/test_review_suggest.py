"""Suggested labels from influence rows, and what the review card's picker offers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dropinf.errors import ConfigError
from dropinf.review import card_choices, item_caption, item_name, suggest_labels

GIVEN = np.array([0, 0, 0, 1, 1, 2, 2, 2])


def test_the_prediction_wins_when_it_disagrees() -> None:
    rows = np.zeros((1, GIVEN.size))
    predicted = GIVEN.copy()
    predicted[0] = 2
    assert suggest_labels(rows, [0], GIVEN, predicted).tolist() == [2]


def test_a_memorised_flip_goes_to_the_class_pulling_hardest() -> None:
    # train #0 (given 0, predicted 0): class 2 pulls with 0.9 + 0.5, class 1 with 1.0, own
    # proponents support it with 0.3 + 0.2; its own entry (self-influence) is ignored
    row = np.array([50.0, 0.3, 0.2, -1.0, 0.1, -0.9, -0.5, 0.4])
    assert suggest_labels(row[None], [0], GIVEN, GIVEN).tolist() == [2]
    assert suggest_labels(row[None], [0], GIVEN, GIVEN, neighbours=1).tolist() == [1]


def test_support_stronger_than_the_pull_keeps_the_given_label() -> None:
    row = np.array([0.0, 3.0, 2.0, -1.0, 0.1, -0.9, -0.5, 0.4])
    assert suggest_labels(row[None], [0], GIVEN, GIVEN).tolist() == [0]
    no_opponents = np.abs(row)
    assert suggest_labels(no_opponents[None], [0], GIVEN, GIVEN).tolist() == [0]


def test_rows_are_matched_to_their_indices() -> None:
    rows = np.zeros((2, GIVEN.size))
    rows[0, 3] = -1.0  # pulls #5 (given 2) toward 1
    rows[1, 0] = -1.0  # pulls #4 (given 1) toward 0
    assert suggest_labels(rows, [5, 4], GIVEN, GIVEN).tolist() == [1, 0]


def test_bad_arguments_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="one row per index; found 2 and 1"):
        suggest_labels(np.zeros((2, GIVEN.size)), [0], GIVEN, GIVEN)
    with pytest.raises(ConfigError, match="at least 1 neighbour; found 0"):
        suggest_labels(np.zeros((1, GIVEN.size)), [0], GIVEN, GIVEN, neighbours=0)


def grid(statuses: list[str]) -> pd.DataFrame:
    return pd.DataFrame({
        "rank": range(1, len(statuses) + 1), "train_index": [10 + i for i in range(len(statuses))],
        "status": statuses, "flagged": [False] * len(statuses), "given_label": 0,
        "predicted_label": 1, "decision": statuses,
    })  # fmt: skip


def test_card_choices_list_the_top_pending_then_the_picked_one() -> None:
    everything = grid(["undecided", "keep", "undecided", "undecided", "remove"])
    shown = everything.iloc[:2]  # filtered: #10 (pending) and #11 (decided)
    assert card_choices(shown, everything, None, None)["train_index"].tolist() == [10]
    picked = card_choices(shown, everything, 13, None)
    assert picked["train_index"].tolist() == [10, 13], "a pending pick further down is kept"
    assert card_choices(shown, everything, 14, None)["train_index"].tolist() == [10]
    jumped = card_choices(shown, everything, 14, 14)
    assert jumped["train_index"].tolist() == [10, 14], "a jumped-to decided example is shown"
    assert card_choices(everything, everything, 12, None, limit=1)["train_index"].tolist() == [
        10, 12,
    ]  # fmt: skip


def test_item_name_and_caption() -> None:
    row = grid(["undecided"]).assign(flagged=True, path="a/b.png").iloc[0]
    assert item_name(row, lambda label: f"c{label}") == (
        "⚑ rank 1 · train #10 · given c0, predicted c1"
    )
    assert item_caption(row) == "train #10 · a/b.png"
    assert item_caption(grid(["remove"]).iloc[0]) == "train #10 · remove"
