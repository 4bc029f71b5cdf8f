"""AppTest: a training trajectory loaded, computed as one run, reviewed; the processes choice.

One DROPINF_HOME for the module (the demo and its checkpoints trained once), synchronous jobs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from dropinf import models
from dropinf.engine import DEFAULT_COMBINATION
from dropinf.run import RunStore, ensemble_section
from tests.pages.test_pages import assert_clean, new_app, open_page


@pytest.fixture(scope="module")
def trajectory_app(home: Path) -> AppTest:
    at = new_app()
    at.toggle(key="demo_trajectory").set_value(True).run()
    at.button(key="load_demo").click().run()
    assert_clean(at)
    return at


@pytest.mark.slow
def test_the_demo_trajectory_loads_every_checkpoint_in_epoch_order(trajectory_app: AppTest) -> None:
    context = trajectory_app.session_state["dropinf_context"]
    folder = models.demo_checkpoints_dir()
    assert [Path(path).parent for path in context.checkpoints] == [folder] * 5
    assert [Path(path).name for path in context.checkpoints] == [
        f"epoch-{epoch:04d}.safetensors" for epoch in (1, 2, 4, 8, 12)
    ]
    assert context.checkpoint == context.checkpoints[-1]
    assert any("5 checkpoints" in info.value and "epochs 1, 2, 4, 8, 12" in info.value
               for info in trajectory_app.info)  # fmt: skip


@pytest.mark.slow
def test_the_processes_choice_is_absent_on_the_cpu(trajectory_app: AppTest) -> None:
    at = open_page(trajectory_app, "pages/compute.py")
    assert not any(widget.key == "processes" for widget in at.number_input)
    assert at.selectbox(key="combination").value == DEFAULT_COMBINATION


@pytest.mark.slow
def test_several_gpus_offer_one_process_per_gpu(
    trajectory_app: AppTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    at = open_page(trajectory_app, "pages/compute.py")
    at.selectbox(key="device").set_value("cuda").run()
    assert at.number_input(key="processes").value == 4, "default: one process per GPU"
    at.selectbox(key="device").set_value("cpu").run()
    assert not any(widget.key == "processes" for widget in at.number_input)


@pytest.mark.slow
def test_a_trajectory_is_computed_as_one_run_and_reviewed_by_checkpoint(
    trajectory_app: AppTest, home: Path
) -> None:
    at = open_page(trajectory_app, "pages/compute.py")
    captions = " ".join(caption.value for caption in at.caption)
    assert f"5 checkpoints + data + config + {DEFAULT_COMBINATION}" in captions
    at.button(key="start").click().run()
    assert_clean(at)
    run_dir = home / "runs" / at.session_state["dropinf_run"]
    manifest = RunStore(run_dir).read_manifest()
    section = ensemble_section(manifest)
    assert manifest["status"] == "complete" and section["combination"] == DEFAULT_COMBINATION
    assert [entry["epoch"] for entry in section["checkpoints"]] == [1, 2, 4, 8, 12]
    # the context the run restores is the same trajectory
    assert at.session_state["dropinf_context"].checkpoints == trajectory_app.session_state[
        "dropinf_context"].checkpoints  # fmt: skip

    at = open_page(at, "pages/label_issues.py")
    assert any("When in training it was learned" in m.value for m in at.markdown)
    assert any(c.value.startswith(("Predicted its given label", "No checkpoint predicted"))
               for c in at.caption)  # fmt: skip
    labels = {metric.label for metric in at.metric}
    assert "Final checkpoint alone AUC" in labels
    assert any("final checkpoint alone" in c.value for c in at.caption)
