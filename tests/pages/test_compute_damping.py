"""The Compute page's damping: each kind's measured default named, a ratio of one's own applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dropinf.core import default_damping_text
from tests.pages.test_pages import assert_clean, new_app, open_page, run_dir_of

pytestmark = pytest.mark.slow


def test_a_damping_ratio_set_on_the_page_reaches_the_run(home: Path) -> None:
    at = new_app()
    at.button(key="load_demo").click().run()
    at = open_page(at, "pages/compute.py")
    assert default_damping_text() in at.checkbox(key="auto_damping").help
    at.selectbox(key="curvature").set_value("block").run()
    at.checkbox(key="auto_damping").uncheck().run()
    at.number_input(key="damping_ratio").set_value(3.0).run()
    at.button(key="start").click().run()
    assert_clean(at)
    manifest = json.loads((run_dir_of(at, home) / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["curvature"]["damping_ratio"] == 3.0
    assert manifest["curvature_kind"] == "block"


def test_automatic_damping_leaves_the_kinds_own_ratio(home: Path) -> None:
    at = new_app()
    at.button(key="load_demo").click().run()
    at = open_page(at, "pages/compute.py")
    at.selectbox(key="curvature").set_value("block").run()
    at.button(key="start").click().run()
    assert_clean(at)
    manifest = json.loads((run_dir_of(at, home) / "manifest.json").read_text())
    assert manifest["curvature"]["damping_ratio"] is None
