"""The Label issues page in headless Chromium at 1440 × 900, on the demo: the analyst's review.

One server for the module over a home holding the demo checkpoint and one run of it (made with
the CLI). Each test opens its own session (fresh filters; decisions persist in the run, as for an
analyst who comes back): the card in view on opening, a keyboard-only review, a flip-matrix click
that filters the queue, three undos in order, and the cleaned dataset downloaded and trained on.
Timings are printed (``-s``).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from dropinf.data import DEMO_DATA_SPEC
from dropinf.review import load_decisions
from tests.pages.test_browser import (
    LONG,
    ROOT,
    chromium,  # noqa: F401 (the module's browser fixture)
    cli,
    new_page,
    playwright_api,
    serve,
    settle,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREEN = {"width": 1440, "height": 900}
RUN_KEY = "demo-run"
KEYED_DECISIONS = 21  # K, X, L seven times each
ACTIONS = {"k": "keep", "x": "remove", "l": "relabel"}
PENDING = re.compile(r"Review \(([\d,]+) pending")
CARD_INDEX = re.compile(r"train #(\d+)")


class Card(NamedTuple):
    """What the card shows: the pending count of the queue and the example on it."""

    pending: int
    index: int


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home holding the demo checkpoint and a complete run of it, ``runs/demo-run``."""
    home = tmp_path_factory.mktemp("labels-browser-home")
    started = time.monotonic()
    trained = subprocess.run(
        [sys.executable, "-m", "dropinf", "train", "--demo"], cwd=ROOT, check=True,
        env=_env(home), capture_output=True, text=True,
    )  # fmt: skip
    checkpoint = trained.stdout.strip().splitlines()[-1]
    cli(home, "compute", "--model", checkpoint, "--data", DEMO_DATA_SPEC,
        "--out", str(home / "runs" / RUN_KEY))  # fmt: skip
    print(f"\ndemo trained and computed in {time.monotonic() - started:.1f} s")
    return home


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "DROPINF_HOME": str(home)}


@pytest.fixture(scope="module")
def demo_url(demo_home: Path) -> Iterator[str]:
    with serve(demo_home) as url:
        yield url


@pytest.fixture
def labels(demo_url: str, chromium: object) -> Iterator[object]:  # noqa: F811
    """A new session on the Label issues page of the demo run, at 1440 × 900, settled."""
    page = new_page(chromium)
    page.set_viewport_size(SCREEN)
    page.goto(f"{demo_url}/?run={RUN_KEY}")
    page.get_by_test_id("stSidebarNav").get_by_text("Label issues", exact=True).click()
    page.get_by_text("Review queue").wait_for(timeout=LONG)
    settle(page)
    yield page
    page.context.close()


def card(page: object) -> Card:
    """The pending count and the training index on the card, read from the queue picker."""
    picker = page.locator(".st-key-queue_pick")
    pending = PENDING.search(picker.locator("label").inner_text())
    index = CARD_INDEX.search(picker.locator("input").input_value())
    return Card(int(pending.group(1).replace(",", "")), int(index.group(1)))


def press(page: object, key: str, expect: object) -> Card:
    """Press ``key`` (focus on the page, no click) and wait until ``expect(card)`` holds."""
    before = card(page)
    page.keyboard.press(key)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        page.wait_for_timeout(100)
        with _stale_ok():
            now = card(page)
            if now != before and expect(now):
                settle(page)
                return card(page)
    raise AssertionError(f"after {key!r} the card stayed at {before}, now {card(page)}")


def _stale_ok() -> contextlib.AbstractContextManager:
    """Ignore a read that raced a rerun (an element detached or a label mid-update)."""
    return contextlib.suppress(playwright_api.Error, AttributeError)


def decisions(home: Path) -> dict:
    return load_decisions(home / "runs" / RUN_KEY)


def in_view(box: dict) -> bool:
    return (
        box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= SCREEN["width"]
        and box["y"] + box["height"] <= SCREEN["height"]
    )  # fmt: skip


def test_the_card_is_in_view_and_its_buttons_readable_on_opening(labels: object) -> None:
    page = labels
    assert page.evaluate("window.scrollY") == 0
    card_parts = [page.get_by_test_id("stImage").first, page.locator(".st-key-queue_pick")]
    buttons = [
        page.locator(f".st-key-{key} button") for key in ("keep", "relabel", "remove", "undo")
    ]
    for part in [*card_parts, *buttons]:
        assert in_view(part.bounding_box()), part
    for button in buttons:
        label = button.locator('[data-testid="stMarkdownContainer"]')
        clipped = label.evaluate("e => e.scrollWidth > e.clientWidth")
        assert not clipped, f"{label.inner_text()!r} is cut off"
    assert page.get_by_test_id("stMetricValue").first.is_visible()


def test_a_keyboard_only_review_decides_and_advances(labels: object, demo_home: Path) -> None:
    page = labels
    started = time.monotonic()
    for step in range(KEYED_DECISIONS):
        key = "kxl"[step % 3]
        before = card(page)
        after = press(page, key, lambda now, b=before: now.pending == b.pending - 1)
        assert after.index != before.index, "the card advanced"
        assert decisions(demo_home)[before.index].action == ACTIONS[key]
    per_decision = (time.monotonic() - started) / KEYED_DECISIONS
    print(
        f"\nkeyboard review: {per_decision:.2f} s per decision, "
        f"100 suspects in about {100 * per_decision:.0f} s"
    )


def flip_cells(page: object) -> list[dict]:
    """The flip matrix's clickable cells: ``given``, ``suggested``, count and screen position."""
    plot = page.locator(".st-key-flip_matrix .js-plotly-plot")
    plot.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    return plot.evaluate(
        """plot => Array.from(plot.querySelectorAll('.scatterlayer .trace .points path.point'),
            (point, i) => { const box = point.getBoundingClientRect(), trace = plot._fullData[1];
              return {given: trace.customdata[i][0], suggested: trace.customdata[i][1],
                      count: Number(trace.text[i]), x: box.x + box.width / 2,
                      y: box.y + box.height / 2}; })"""
    )


def grid_rows(page: object) -> list[list[str]]:
    """The review grid's rows as cell texts (the grid's accessible table: rows in view)."""
    grid = page.locator('[class*="st-key-grid_"]')
    grid.scroll_into_view_if_needed()
    table = grid.locator("table")
    rows = [row.locator("td").all_inner_texts() for row in table.locator("tbody tr").all()]
    assert len(rows) == int(table.get_attribute("aria-rowcount")) - 1, "every row is in view"
    return rows


def test_one_click_on_a_flip_cell_filters_the_queue_to_that_confusion(labels: object) -> None:
    page = labels
    cells = [cell for cell in flip_cells(page) if cell["given"] != cell["suggested"]]
    cell = max(cells, key=lambda c: c["count"])
    started = time.monotonic()
    page.mouse.click(cell["x"], cell["y"])
    given = page.locator(".st-key-filter_given")
    given.get_by_text(str(cell["given"]), exact=True).wait_for(timeout=30_000)
    settle(page)
    print(f"\nflip-matrix click to filtered queue: {time.monotonic() - started:.1f} s")
    rows = grid_rows(page)
    header = page.locator('[class*="st-key-grid_"] table thead th').all_inner_texts()
    columns = [text.strip() for text in header]
    assert rows, "the confusion has pending suspects"
    pairs = {(row[columns.index("given")], row[columns.index("suggested")]) for row in rows}
    assert pairs == {(str(cell["given"]), str(cell["suggested"]))}
    assert card(page).pending == len(rows)
    given_metric = page.get_by_test_id("stMetric").filter(has_text="Given").first
    assert given_metric.get_by_test_id("stMetricValue").inner_text() == str(cell["given"])
    assert f"given {cell['given']}," in page.locator(".st-key-queue_pick input").input_value()


def test_three_undos_go_back_through_the_last_decisions_in_order(
    labels: object, demo_home: Path
) -> None:
    page = labels
    decided = []
    for key in "kxl":
        before = card(page)
        press(page, key, lambda now, b=before: now.pending == b.pending - 1)
        decided.append(before.index)
    for index in reversed(decided):
        before = card(page)
        after = press(page, "u", lambda now, i=index: now.index == i)
        assert after.pending == before.pending + 1
        assert index not in decisions(demo_home)
    assert card(page).index == decided[0]


def test_the_cleaned_dataset_downloads_and_trains(
    labels: object, demo_home: Path, tmp_path: Path
) -> None:
    page = labels
    for key in "xl":
        before = card(page)
        press(page, key, lambda now, b=before: now.pending == b.pending - 1)
    made = decisions(demo_home)
    kept_rows = card(page).pending + sum(d.action != "remove" for d in made.values())
    toggle = page.get_by_test_id("stCheckbox").filter(has_text="Prepare the cleaned dataset")
    toggle.scroll_into_view_if_needed()
    toggle.locator("label").click()
    button = page.locator(".st-key-export_npz button")
    button.wait_for(timeout=60_000)
    with page.expect_download() as download_info:
        button.click()
    cleaned = tmp_path / "cleaned.npz"
    download_info.value.save_as(cleaned)
    with np.load(cleaned, allow_pickle=False) as arrays:
        assert len(arrays["y"]) == kept_rows
        relabelled = {i: d.label for i, d in made.items() if d.action == "relabel"}
        assert relabelled and set(arrays["y"].tolist()) >= set(relabelled.values())
    started = time.monotonic()
    trained = subprocess.run(
        [sys.executable, "-m", "dropinf", "train", "--data", str(cleaned), "--arch", "mlp",
         "--epochs", "1", "--out", str(tmp_path / "x.safetensors")],
        cwd=ROOT, env=_env(demo_home), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (tmp_path / "x.safetensors").is_file()
    print(f"\ntrain on the cleaned .npz: {time.monotonic() - started:.1f} s")
