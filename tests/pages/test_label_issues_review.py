"""The Label issues page driven by AppTest: filters, bulk actions, a confusion filter, undo ×3.

One DROPINF_HOME for the module: the demo checkpoint and its run are made once, with the
synchronous job runner.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dropinf import review
from tests.pages.test_pages import assert_clean, new_app, open_page, run_dir_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_key(home: Path) -> str:
    at = new_app()
    at.button(key="load_demo").click().run()
    at = open_page(at, "pages/compute.py")
    at.button(key="start").click().run()
    assert_clean(at)
    return run_dir_of(at, home).name


@pytest.fixture
def page(run_key: str, home: Path) -> Iterator[AppTest]:
    at = open_page(new_app({"run": run_key}), "pages/label_issues.py")
    yield at
    review.save_decisions(home / "runs" / run_key, {})


def grid(at: AppTest):
    """The review grid shown, with label columns (the demo's class names are its digits)."""
    table = next(df.value for df in at.dataframe if "given_class" in df.value.columns)
    for kind in ("given", "suggested"):
        table[f"{kind}_label"] = table[f"{kind}_class"].astype(int)
    return table


def test_filters_narrow_the_grid_and_the_card(page: AppTest) -> None:
    full = grid(page)
    given, suggested = int(full["given_label"].iloc[0]), int(full["suggested_label"].iloc[0])
    page.multiselect(key="filter_given").set_value([given]).run()
    page.multiselect(key="filter_suggested").set_value([suggested]).run()
    assert_clean(page)
    shown = grid(page)
    assert set(shown["given_class"]) == {full["given_class"].iloc[0]}
    assert 0 < len(shown) < len(full)
    assert page.selectbox(key="queue_pick").value == int(shown["train_index"].iloc[0])
    page.number_input(key="filter_score").set_value(float(shown["suspicion"].iloc[0])).run()
    assert len(grid(page)) == 1
    page.button(key="clear_filters").click().run()
    assert len(grid(page)) == len(full)


def test_a_flip_matrix_cell_filters_to_its_confusion(page: AppTest) -> None:
    from dropinf.dashboard import clicked_confusion

    full = grid(page)
    flips = full[full["given_label"] != full["suggested_label"]]
    cell = int(flips["given_label"].iloc[0]), int(flips["suggested_label"].iloc[0])
    assert clicked_confusion({"selection": {"points": [{"customdata": list(cell)}]}}) == cell
    page.session_state["filter_given"], page.session_state["filter_suggested"] = (
        [cell[0]],
        [cell[1]],
    )
    page.run()  # what filter_to_confusion, the click's callback, leaves in the session
    shown = grid(page)
    assert set(zip(shown["given_label"], shown["suggested_label"], strict=True)) == {cell}


def test_jump_and_undo_three_decisions_in_order(page: AppTest, home: Path, run_key: str) -> None:
    decided = []
    for key in ("keep", "remove", "relabel"):
        decided.append(page.selectbox(key="queue_pick").value)
        page.button(key=key).click().run()
        assert_clean(page)
        assert page.selectbox(key="queue_pick").value != decided[-1], "the card moved on"
    run_dir = home / "runs" / run_key
    assert [review.load_decisions(run_dir)[i].action for i in decided] == ["keep", "remove",
                                                                          "relabel"]  # fmt: skip
    for undone in reversed(decided):
        page.button(key="undo").click().run()
        assert page.selectbox(key="queue_pick").value == undone, "back to the undone example"
        assert undone not in review.load_decisions(run_dir)
    assert review.load_decisions(run_dir) == {}
    target = int(grid(page)["train_index"].iloc[40])
    page.number_input(key="jump_to").set_value(target).run()
    assert page.selectbox(key="queue_pick").value == target


def test_bulk_actions_decide_the_selected_rows_as_one_batch(page: AppTest, home: Path) -> None:
    run_dir = run_dir_of(page, home)
    rows = grid(page)["train_index"].iloc[:3].astype(int).tolist()
    grid_key = next(k for k in page.session_state._state.filtered_state if k.startswith("grid_"))
    page.session_state[grid_key] = {"selection": {"rows": [0, 1, 2], "columns": []}}
    page.run()
    page.button(key="bulk_remove").click().run()
    assert_clean(page)
    assert {i: d.action for i, d in review.load_decisions(run_dir).items()} == dict.fromkeys(
        rows, "remove"
    )
    assert not set(rows) & set(grid(page)["train_index"]), "decided rows leave the grid"
    page.toggle(key="filter_decided").set_value(True).run()
    assert set(rows) <= set(grid(page)["train_index"])
    page.button(key="undo").click().run()
    assert review.load_decisions(run_dir) == {}, "one undo reverts the whole batch"
