"""The demo's training trajectory in headless Chromium: loaded, computed as one job, reviewed.

A fresh home: load the default demo with its whole training trajectory (5 checkpoints), start
the run and read the per-checkpoint progress while it computes, then find on the Label-issues
card when in training the first suspect was learned. Timings are printed (``-s``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from tests.pages.test_browser import (
    FINISHED,
    LONG,
    chromium,  # noqa: F401 (the module's browser fixture)
    go,
    new_page,
    serve,
    settle,
    shot,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PER_CHECKPOINT = re.compile(r"Checkpoint [1-5] of 5 · epoch \d+ · ")


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("trajectory-browser-home")) as address:
        yield address


def test_the_demo_trajectory_is_computed_with_per_checkpoint_progress_and_reviewed(
    url: str,
    chromium: object,  # noqa: F811
) -> None:
    started = time.monotonic()
    page = new_page(chromium)
    page.goto(url)
    page.get_by_text("Load a model and its data").wait_for()
    page.get_by_text("Its whole training trajectory").click()
    settle(page)
    page.get_by_role("button", name="Load the demo").click()
    page.get_by_text("A training trajectory of").wait_for(timeout=LONG)
    assert page.get_by_text("epochs 1, 2, 4, 8, 12").count()

    go(page, "Compute")
    page.get_by_text("Compressed dimension k").wait_for(timeout=LONG)
    assert page.get_by_text(re.compile(r"One run over the 5 checkpoints")).count()
    page.get_by_role("button", name="Start").click()
    page.get_by_text(PER_CHECKPOINT).first.wait_for(timeout=LONG)
    progress = page.get_by_text(PER_CHECKPOINT).first.inner_text()
    print(f"\nprogress read: {progress!r}")
    page.get_by_text(FINISHED).wait_for(timeout=LONG)
    computed_s = time.monotonic() - started

    go(page, "Label issues")
    page.get_by_text("When in training it was learned").first.wait_for(timeout=LONG)
    sentence = page.get_by_text(re.compile(r"^(Predicted its given label|No checkpoint predicted)"))
    assert sentence.count() >= 1
    chart = page.locator(".js-plotly-plot").filter(has_text="self-influence").first
    chart.wait_for(timeout=LONG)
    shot(page, "label_issues_trajectory", anchor=page.get_by_text("Review queue").first)
    print(f"trajectory loaded and computed in {computed_s:.1f} s; reviewed at "
          f"{time.monotonic() - started:.1f} s (2 shared cores, under load)")  # fmt: skip
