"""Issue 13's last flows in headless Chromium: compare two runs, a retrain verdict, the
memorising demo on Load.

One server for the module over a home holding the default demo and two runs of it (keep ratios
0.25 and 0.5, made with the CLI). Timings are printed (``-s``); they were taken on a shared
two-core machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dropinf.data import DEMO_DATA_SPEC
from tests.pages.test_browser import (
    LONG,
    ROOT,
    chromium,  # noqa: F401 (the module's browser fixture)
    cli,
    new_page,
    serve,
    settle,
    shot,
)
from tests.pages.test_label_issues_browser import SCREEN, card, press

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RUN_A, RUN_B = "demo-quarter", "demo-half"
VERDICT = re.compile(r"(within the noise|beyond the noise) of retraining")


@pytest.fixture(scope="module")
def two_runs_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home holding the default demo and two complete runs of it."""
    home = tmp_path_factory.mktemp("compare-browser-home")
    started = time.monotonic()
    trained = subprocess.run(
        [sys.executable, "-m", "dropinf", "train", "--demo"], cwd=ROOT, check=True,
        env={**os.environ, "DROPINF_HOME": str(home)}, capture_output=True, text=True,
    )  # fmt: skip
    checkpoint = trained.stdout.strip().splitlines()[-1]
    for key, keep in ((RUN_A, "0.25"), (RUN_B, "0.5")):
        cli(home, "compute", "--model", checkpoint, "--data", DEMO_DATA_SPEC,
            "--keep-ratio", keep, "--out", str(home / "runs" / key))  # fmt: skip
    print(f"\ndemo trained and two runs computed in {time.monotonic() - started:.1f} s")
    return home


@pytest.fixture(scope="module")
def url(two_runs_home: Path) -> Iterator[str]:
    with serve(two_runs_home) as address:
        yield address


@pytest.fixture
def page(url: str, chromium: object) -> Iterator[object]:  # noqa: F811
    page = new_page(chromium)
    page.set_viewport_size(SCREEN)
    yield page
    page.context.close()


def open_page(page: object, url: str, title: str, ready: str) -> None:
    """Open the run ``RUN_A`` and go to a page by its sidebar link, settled on ``ready``."""
    page.goto(f"{url}/?run={RUN_A}")
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
    page.get_by_text(ready).first.wait_for(timeout=LONG)
    settle(page)


def metric(page: object, label: str) -> str:
    box = page.get_by_test_id("stMetric").filter(has_text=label).first
    return box.get_by_test_id("stMetricValue").inner_text()


def test_compare_two_keep_ratios(page: object, url: str) -> None:
    started = time.monotonic()
    open_page(page, url, "Compare runs", "Top-100 suspects shared")
    print(f"\ncompare page opened in {time.monotonic() - started:.1f} s")
    assert RUN_B in page.locator(".st-key-compare_b input").input_value()
    shared = int(metric(page, "Top-100 suspects shared").split()[0])
    assert shared >= 90, "two keep ratios agree on the demo's suspects"
    assert float(metric(page, "Self-influence Spearman")) > 0.9
    proponents = page.get_by_text("Proponents of a test example")
    proponents.scroll_into_view_if_needed()
    images = page.locator('[data-testid="stImage"] img')
    images.nth(15).wait_for()
    assert images.count() == 16, "eight proponents in each run"
    shot(page, "compare")


def test_a_retrain_verdict_with_two_seeds(page: object, url: str) -> None:
    open_page(page, url, "Label issues", "Review queue")
    before = card(page)
    press(page, "x", lambda now, b=before: now.pending == b.pending - 1)
    seeds = page.locator(".st-key-retrain_seeds input")
    seeds.scroll_into_view_if_needed()
    seeds.fill("2")
    seeds.press("Enter")
    settle(page)
    started = time.monotonic()
    page.get_by_role("button", name=re.compile(r"Retrain with the decisions \(2 seeds\)")).click()
    verdict = page.get_by_text(VERDICT)
    verdict.wait_for(timeout=LONG)
    print(f"\nretrain with 2 seeds to the verdict on the page: {time.monotonic() - started:.1f} s")
    text = verdict.inner_text()
    assert "over 2 seeds" in text and "test examples" in text, text
    assert "points" in metric(page, "Paired change (95 % interval)")
    assert metric(page, "Removed / relabelled") == "1 / 0"


def test_the_memorising_demo_loads_from_the_load_page(page: object, url: str) -> None:
    page.goto(url)
    page.get_by_text("Load a model and its data").wait_for(timeout=LONG)
    settle(page)
    page.get_by_test_id("stRadio").get_by_text("Memorising", exact=True).click()
    settle(page)
    started = time.monotonic()
    page.get_by_role("button", name="Load the demo").click()
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_text("demo (memorising)").wait_for(timeout=LONG)  # the default was open
    page.get_by_text("Train accuracy").wait_for(timeout=LONG)
    settle(page)
    print(f"\nmemorising demo trained and loaded in {time.monotonic() - started:.1f} s")
    assert metric(page, "Train accuracy") == "100.0%", "it memorised every flipped label"
    assert page.get_by_text(re.compile(r"mlp from demo \(memorising\)")).count() > 0
