"""AppTest flows of issue 13's last parts: two runs compared, the memorising demo on Load.

The module's DROPINF_HOME (``home`` in conftest) holds the default demo with two runs (keep
ratios 0.25 and 0.5) and the memorising demo with one run, all made through the pages with the
synchronous job runner.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dropinf import data, models
from tests.pages.test_pages import assert_clean, new_app, open_page, run_dir_of

pytestmark = pytest.mark.slow


def compute(at: AppTest, keep_ratio: float | None = None) -> AppTest:
    at = open_page(at, "pages/compute.py")
    if keep_ratio is not None:
        at.slider(key="keep_ratio").set_value(keep_ratio).run()
    at.button(key="start").click().run()
    assert_clean(at)
    return at


@pytest.fixture(scope="module")
def demo_runs(home: Path) -> tuple[str, str]:
    """Two complete runs of the default demo: keep ratio 0.5, then the default."""
    at = new_app()
    at.button(key="load_demo").click().run()
    other = run_dir_of(compute(at, 0.5), home).name
    current = run_dir_of(compute(at, 0.25), home).name
    assert other != current
    return current, other


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_compare_shows_overlap_correlation_and_both_proponents(demo_runs, home: Path) -> None:
    current, other = demo_runs
    at = open_page(new_app({"run": current}), "pages/compare.py")
    assert at.selectbox(key="compare_b").value == other
    shown = metrics(at)
    shared = shown["Top-100 suspects shared"]
    assert int(shared.split()[0]) >= 90, shared  # keep 0.25 vs 0.5 agree on the demo's flips
    assert float(shown["Self-influence Spearman"]) > 0.9
    assert {"**Run A**", "**Run B**"} <= {m.value for m in at.markdown}
    assert len(at.get("image")) == 2 * 8, "eight proponents of the test example in each run"
    assert "Top-8 proponents shared" in metrics(at)
    at.slider(key="compare_k").set_value(10).run()
    assert "Top-10 suspects shared" in metrics(at)


def test_compare_refuses_runs_of_other_data(demo_runs, home: Path) -> None:
    current, _ = demo_runs
    at = new_app()
    at.radio(key="demo_preset").set_value("memorising").run()
    at.button(key="load_demo").click().run()
    assert_clean(at)
    assert metrics(at)["Train accuracy"] == "100.0%", "the memorising demo fits every label"
    memorising = run_dir_of(compute(at), home).name
    assert at.session_state["dropinf_context"].checkpoint == str(
        models.demo_checkpoint_path("memorising")
    )
    labels = open_page(new_app({"run": memorising}), "pages/label_issues.py")
    captions = " ".join(c.value for c in labels.caption)
    assert "vs training loss" in captions and "gap of +" in captions, captions
    shown = metrics(labels)
    assert float(shown["ROC AUC"]) > float(shown["Training-loss AUC"])
    assert_suggestions_beat_the_prediction(labels)
    refused = open_page(new_app({"run": current}), "pages/compare.py")
    refused.selectbox(key="compare_b").set_value(memorising).run()
    assert_clean(refused)
    assert any("same training data" in e.value for e in refused.error)


def assert_suggestions_beat_the_prediction(at: AppTest) -> None:
    """On the memorising demo's top suspects, the suggestion finds clean labels the model lost."""
    grid = next(df.value for df in at.dataframe if "given_class" in df.value.columns).head(100)
    clean = data.load_data(models.DEMO_PRESETS["memorising"].data_spec).clean_labels
    truth = clean[grid["train_index"].to_numpy()].astype(str)
    flipped = truth != grid["given_class"].to_numpy()
    assert flipped.sum() > 50
    predicted_right = (grid["predicted_class"].to_numpy() == truth)[flipped].mean()
    suggested_right = (grid["suggested_class"].to_numpy() == truth)[flipped].mean()
    assert predicted_right < 0.3 and suggested_right > 0.6, (predicted_right, suggested_right)
