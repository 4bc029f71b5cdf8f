"""In headless Chromium: the Load page's data-root picker, and the gradient map's selection.

A fresh server over a home holding the demo's complete run (made by the CLI) and a data root
with one .npz and one checkpoint. The map job starts on its own when the map page opens; a box
selection survives recolouring, lists the most suspicious first, loses one item on its button,
and a point's hover names its classes and suspicion.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from test_browser import LONG, ROOT, box_select, chromium, new_page, serve, settle

pytestmark = [pytest.mark.browser, pytest.mark.slow]
__all__ = ["chromium"]  # the shared browser fixture, used by name below

RUN_KEY = "demo-run"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("picker-home")
    root = tmp_path_factory.mktemp("picker-root")
    np.savez(root / "blobs.npz", x_train=np.zeros((4, 2), np.float32), y_train=np.arange(4) % 2)
    (root / "weights").mkdir()
    (root / "weights" / "model.safetensors").write_bytes(b"x")
    env = {**os.environ, "DROPINF_HOME": str(home)}
    checkpoint = subprocess.run(
        [sys.executable, "-m", "dropinf", "train", "--demo"],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "dropinf", "compute", "--model", checkpoint,
         "--data", "digits:noise=0.1,seed=0", "--out", str(home / "runs" / RUN_KEY)],
        cwd=ROOT, env=env, check=True, capture_output=True,
    )  # fmt: skip
    os.environ["DROPINF_DATA_ROOT"] = str(root)  # serve() passes os.environ on
    try:
        with serve(home) as url:
            yield url
    finally:
        del os.environ["DROPINF_DATA_ROOT"]


def test_the_load_page_offers_what_lies_under_the_data_root(app_url: str, chromium: object):
    page = new_page(chromium)
    page.goto(app_url)
    settle(page)
    page.get_by_role("tab", name="Bring a model").click()
    page.get_by_text("Data root").wait_for()
    assert page.get_by_text("DROPINF_DATA_ROOT=").count() > 0
    open_dropdown(page, "Datasets found", "blobs.npz").click()
    settle(page)
    assert page.get_by_label("Dataset", exact=True).input_value() == "blobs.npz"
    page.get_by_label("Dataset", exact=True).fill("/etc/passwd")
    page.get_by_label("Dataset", exact=True).press("Enter")
    page.get_by_text("inside the data root").first.wait_for()
    assert page.get_by_label("Dataset", exact=True).is_visible(), "the form stays"
    assert page.get_by_role("button", name="Load model and data").is_visible()


def open_dropdown(page: object, label: str, option: str, attempts: int = 3) -> object:
    """Open the selectbox showing ``label`` until ``option`` is listed; returns the option.

    A rerun that lands just after the click closes the list again, so the click is repeated.
    """
    choice = page.get_by_role("option", name=option)
    for _ in range(attempts):
        settle(page)
        page.get_by_test_id("stSelectbox").filter(has_text=label).click()
        try:
            choice.wait_for(timeout=10_000)
            return choice
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
    choice.wait_for(timeout=10_000)  # the last chance fails with playwright's own message
    return choice


def selected_count(page: object) -> int:
    text = page.get_by_text(re.compile(r"^\d[\d,]* selected")).first.inner_text()
    return int(text.split()[0].replace(",", ""))


def test_the_map_selection_survives_recolouring_and_drops_one(app_url: str, chromium: object):
    page = new_page(chromium)
    page.goto(f"{app_url}/gradient_map?run={RUN_KEY}")
    plot = page.locator(".js-plotly-plot .nsewdrag").first
    plot.wait_for(timeout=LONG)  # no button pressed: the map job started on its own
    settle(page)
    box = plot.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    box_select(page, plot)
    page.get_by_text(re.compile(r"selected, most suspicious first")).wait_for(timeout=LONG)
    settle(page)
    before = selected_count(page)
    page.get_by_test_id("stSelectbox").filter(has_text="Colour by").click()
    page.get_by_role("option", name="Self-influence").click()
    settle(page)
    assert selected_count(page) == before, "recolouring keeps the selection"
    page.locator('[class*="st-key-drop-"] button').first.click()
    expected = f"{before - 1:,} selected"  # the rerun may lag on a loaded machine
    page.get_by_text(re.compile(rf"^{expected}")).first.wait_for(timeout=LONG)
    assert selected_count(page) == before - 1


def test_hovering_a_point_names_it(app_url: str, chromium: object):
    page = new_page(chromium)
    page.goto(f"{app_url}/gradient_map?run={RUN_KEY}")
    plot = page.locator(".js-plotly-plot .nsewdrag").first
    plot.wait_for(timeout=LONG)
    settle(page)
    box = plot.bounding_box()
    for fx in np.linspace(0.1, 0.9, 17):
        for fy in np.linspace(0.1, 0.9, 17):
            page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
            if page.locator(".hoverlayer .hovertext").count():
                hover = page.locator(".hoverlayer .hovertext").first.text_content()
                assert "suspicion" in hover and "given" in hover
                return
    pytest.fail("no point answered a hover")
