"""Every dashboard page opened by streamlit's AppTest, and the flows AppTest can drive.

The flows share one DROPINF_HOME per module (the demo checkpoint and its run are made once) and
use the synchronous job runner (``DROPINF_SYNC_JOBS=1``), so a started job has finished when the
script run returns.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dropinf.core import CompressionConfig

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
PAGES = [
    "pages/load.py",
    "pages/compute.py",
    "pages/explore.py",
    "pages/gradient_map.py",
    "pages/label_issues.py",
    "pages/compare.py",
]
SLOW = 600


def new_app(query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=SLOW)
    at.session_state["dropinf_sync_jobs"] = True
    at.query_params.update(query or {})
    at.run()
    assert_clean(at)
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def open_page(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run()
    assert_clean(at)
    return at


def run_dir_of(at: AppTest, home: Path) -> Path:
    return home / "runs" / at.session_state["dropinf_run"]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_opens_without_a_model(home: Path, page: str) -> None:
    at = open_page(new_app(), page)
    assert at.title, "each page has a title"


def test_bad_checkpoint_path_shows_the_message(home: Path) -> None:
    at = new_app()
    at.radio(key="ckpt_source").set_value("Path on the server").run()
    at.text_input(key="ckpt_path").input("no/such/model.safetensors").run()
    assert_clean(at)
    assert any("none at" in e.value for e in at.error), [e.value for e in at.error]


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd"])
def test_paths_outside_the_data_root_are_refused(home: Path, path: str) -> None:
    at = new_app()
    at.radio(key="ckpt_source").set_value("Path on the server").run()
    at.text_input(key="ckpt_path").input(path).run()
    assert any("inside the data root" in e.value for e in at.error)
    at.text_input(key="ckpt_path").input("").run()
    at.text_input(key="data_spec").input(f"{path}:noise=0.1").run()
    assert any("inside the data root" in e.value for e in at.error)


@pytest.fixture(scope="module")
def loaded_app(home: Path) -> AppTest:
    at = new_app()
    at.button(key="load_demo").click().run()
    assert_clean(at)
    return at


@pytest.mark.slow
def test_a_new_session_opens_on_the_prepared_demo(loaded_app: AppTest) -> None:
    at = new_app()  # the demo checkpoint now exists, as `make run` prepares it
    assert at.session_state["dropinf_context"].title == "demo"
    assert "Parameters" in {metric.label for metric in at.metric}  # the Load page's summary


@pytest.mark.slow
def test_load_demo_shows_the_summary(loaded_app: AppTest) -> None:
    labels = {m.label for m in loaded_app.metric}
    assert {"Parameters", "Capturable layers", "Train accuracy", "Test accuracy"} <= labels


@pytest.mark.slow
def test_bad_dataset_spec_shows_the_loader_message(loaded_app: AppTest, home: Path) -> None:
    at = new_app()
    checkpoint = next((home / "demo").glob("*.safetensors"))
    at.radio(key="ckpt_source").set_value("Path on the server").run()
    at.text_input(key="ckpt_path").input(str(checkpoint.relative_to(home))).run()
    at.text_input(key="data_spec").input("digits:noise=2").run()
    at.button(key="load_own").click().run()
    assert_clean(at)
    assert at.error, "the loader's message is shown"
    at.text_input(key="data_spec").input("digits:noise=0.1,seed=0").run()
    at.button(key="load_own").click().run()
    assert_clean(at)
    assert not at.error and any(m.label == "Test accuracy" for m in at.metric)


@pytest.fixture(scope="module")
def computed_app(loaded_app: AppTest) -> AppTest:
    at = open_page(loaded_app, "pages/compute.py")
    assert any(m.label == "Compressed dimension k" for m in at.metric)
    at.button(key="start").click().run()
    assert_clean(at)
    return at


@pytest.mark.slow
def test_compute_finishes_and_is_reused(computed_app: AppTest, home: Path) -> None:
    at = computed_app
    assert any("The run finished" in s.value for s in at.success), [e.value for e in at.error]
    manifest = json.loads((run_dir_of(at, home) / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert at.radio(key="mask").value == manifest["compression"]["mask"] == CompressionConfig().mask
    assert at.query_params["run"] == run_dir_of(at, home).name
    assert len(at.dataframe) >= 1, "the runs table lists the run"
    fresh = new_app()
    fresh.button(key="load_demo").click().run()
    fresh = open_page(fresh, "pages/compute.py")
    assert any("already ran" in s.value for s in fresh.success), "same request, same run"


@pytest.mark.slow
def test_background_run_can_be_cancelled_and_resumed(
    loaded_app: AppTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DROPINF_SYNC_JOBS", "0")
    at = open_page(loaded_app, "pages/compute.py")
    at.session_state["dropinf_sync_jobs"] = False
    at.slider(key="keep_ratio").set_value(0.5).run()
    at.button(key="start").click().run()
    assert_clean(at)
    at.button(key="cancel").click().run()
    assert_clean(at)
    assert any("cancelled" in w.value for w in at.warning), [w.value for w in at.warning]
    at.button(key="resume").click().run()
    assert_clean(at)
    at.button(key="cancel").click().run()
    at.session_state["dropinf_sync_jobs"] = True
    at.slider(key="keep_ratio").set_value(0.25).run()
    assert_clean(at)


@pytest.mark.slow
def test_explore_choose_and_open_detail(computed_app: AppTest) -> None:
    at = open_page(computed_app, "pages/explore.py")
    assert len(at.image) > 10, "the test image and proponent / opponent thumbnails"
    at.segmented_control(key="explore_mode").set_value("By class").run()
    at.selectbox(key="explore_class").set_value(3).run()
    assert_clean(at)
    assert at.query_params["test"]
    at.segmented_control(key="explore_mode").set_value("Misclassified only").run()
    assert_clean(at)
    opener = next(b for b in at.button if b.key and b.key.startswith("gallery1-"))
    opener.click().run()
    assert_clean(at)
    assert any(s.value.startswith("Training example #") for s in at.subheader)
    assert any(m.label == "Self-influence" for m in at.metric)


@pytest.mark.slow
def test_an_uploaded_picture_is_scored_by_a_query(computed_app: AppTest) -> None:
    from dropinf import dashboard as views
    from dropinf import data

    picture = views.thumbnail_png(data.load_data("digits").thumbnail("test", 3))
    at = open_page(computed_app, "pages/explore.py")
    at.segmented_control(key="explore_mode").set_value("Upload an image").run()
    at.file_uploader(key="upload_test").upload("digit.png", picture, "image/png").run()
    assert_clean(at)
    assert any(m.label == "Predicted" for m in at.metric)
    assert sum(1 for b in at.button if b.key and b.key.startswith("gallery")) >= 8
    at.segmented_control(key="explore_mode").set_value("By index").run()
    assert_clean(at)


@pytest.mark.slow
def test_deep_link_reopens_the_view(computed_app: AppTest, home: Path) -> None:
    key = run_dir_of(computed_app, home).name
    at = open_page(new_app({"run": key, "test": "7"}), "pages/explore.py")
    assert at.selectbox(key="explore_pick_By index").value == 7
    assert any(m.label == "True label" for m in at.metric)


@pytest.mark.slow
def test_label_issues_relabel_persists_and_exports(computed_app: AppTest, home: Path) -> None:
    at = open_page(computed_app, "pages/label_issues.py")
    assert any(m.label == "ROC AUC" for m in at.metric), "detection quality for the demo"
    at.button(key="relabel").click().run()
    assert_clean(at)
    decisions = json.loads((run_dir_of(at, home) / "decisions.json").read_text())
    assert [d["action"] for d in decisions["decisions"].values()] == ["relabel"]
    assert len(at.get("download_button")) == 2, "CSV and JSON export"
    at.button(key="undo").click().run()
    decisions = json.loads((run_dir_of(at, home) / "decisions.json").read_text())
    assert decisions["decisions"] == {}
    at.button(key="remove").click().run()
    assert_clean(at)


@pytest.mark.slow
def test_flags_persist_and_lead_the_queue(computed_app: AppTest, home: Path) -> None:
    from dropinf import review

    run_dir = run_dir_of(computed_app, home)
    flagged = max(set(range(1000)) - set(review.load_decisions(run_dir)))
    review.update_flags(run_dir, add=[flagged])
    at = open_page(new_app({"run": run_dir.name}), "pages/label_issues.py")
    assert at.selectbox(key="queue_pick").value == flagged, "a flag from another session leads"
    assert any("flagged for review" in c.value for c in at.caption)
    at.button(key="keep").click().run()
    assert_clean(at)
    assert at.selectbox(key="queue_pick").value != flagged, "decided: it leaves the queue"
    assert review.load_flags(run_dir) == [flagged]
    assert review.fixes_from_decisions(review.load_decisions(run_dir))[1] == {}
    review.update_flags(run_dir, remove=[flagged])


@pytest.mark.slow
def test_undo_reverts_in_order_across_sessions_and_goes_back(
    computed_app: AppTest, home: Path
) -> None:
    from dropinf import review

    at = open_page(computed_app, "pages/label_issues.py")
    run_dir = run_dir_of(at, home)
    before = review.load_decisions(run_dir)
    first = at.selectbox(key="queue_pick").value
    at.button(key="keep").click().run()
    second = at.selectbox(key="queue_pick").value
    at.button(key="remove").click().run()
    assert_clean(at)
    other = open_page(new_app({"run": run_dir.name}), "pages/label_issues.py")
    other.button(key="undo").click().run()
    assert_clean(other)
    assert other.selectbox(key="queue_pick").value == second, "back to the undone example"
    assert review.load_decisions(run_dir)[first].action == "keep"
    other.button(key="undo").click().run()
    assert other.selectbox(key="queue_pick").value == first
    assert review.load_decisions(run_dir) == before


@pytest.mark.slow
def test_retrain_reports_before_and_after(computed_app: AppTest) -> None:
    at = open_page(computed_app, "pages/label_issues.py")
    at.button(key="relabel").click().run()  # the button needs a decision to verify
    at.button(key="retrain").click().run()
    assert_clean(at)
    labels = {m.label for m in at.metric}
    expected = {"Test accuracy before", "Test accuracy after", "Paired change (95 % interval)"}
    assert expected <= labels, [e.value for e in at.error]
    verdict = " ".join(info.value for info in at.info)
    assert "seeds" in verdict and "test examples" in verdict, verdict


@pytest.mark.slow
def test_gradient_map_computes_in_a_job(computed_app: AppTest) -> None:
    at = open_page(computed_app, "pages/gradient_map.py")
    at.button(key="compute_map").click().run()
    assert_clean(at)
    for colour in ("Predicted label", "Self-influence", "Review status"):
        at.selectbox(key="map_colour").set_value(colour).run()
        assert_clean(at)
    at.toggle(key="map_overlay").set_value(True).run()
    assert_clean(at)


def write_run(run_dir: Path, checkpoint: Path, data_spec: str = "digits") -> Path:
    """A complete-looking run whose provenance names ``checkpoint`` and ``data_spec``."""
    from dropinf.run import RunStore

    provenance = {"checkpoint": str(checkpoint), "data_spec": data_spec, "arch": "small_cnn"}
    RunStore(run_dir).write_manifest({"status": "complete", "provenance": provenance})
    return run_dir


def assert_not_opened(at: AppTest, home: Path, key: str, outside: Path, told: bool = True) -> None:
    """Run ``key`` is not open, and neither a run, a model nor data from outside."""
    if "dropinf_run" in at.session_state:  # e.g. the demo's own run, selected by Compute
        assert at.session_state["dropinf_run"] != key
        assert (home / "runs" / at.session_state["dropinf_run"]).parent == home / "runs"
        assert at.query_params["run"] == at.session_state["dropinf_run"]
    else:
        assert "run" not in at.query_params
    if "dropinf_context" in at.session_state:
        context = at.session_state["dropinf_context"]
        assert not (context.checkpoint + context.data_spec).count(str(outside))
    refusals = [e.value for e in at.error if "inside" in e.value or "run key" in e.value]
    assert not told or refusals, [e.value for e in at.error]


@pytest.mark.parametrize("form", ["absolute", "relative"])
def test_a_run_in_the_url_must_lie_in_the_runs_folder(home: Path, tmp_path: Path, form: str):
    outside = write_run(tmp_path / "outside-run", tmp_path / "model.safetensors")
    runs = home / "runs"
    runs.mkdir(exist_ok=True)
    key = str(outside) if form == "absolute" else os.path.relpath(outside, runs)
    at = new_app({"run": key})
    assert_not_opened(at, home, key, tmp_path)
    for page in PAGES:
        assert_not_opened(open_page(at, page), home, key, tmp_path, told=False)


def test_a_run_linked_from_outside_is_neither_opened_nor_offered(home: Path, tmp_path: Path):
    outside = write_run(tmp_path / "outside-run", tmp_path / "model.safetensors")
    link = home / "runs" / "linked-run"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(outside)
    try:
        at = new_app({"run": "linked-run"})
        assert_not_opened(at, home, "linked-run", tmp_path)
        pickers = [s for s in at.selectbox if s.key == "sidebar_run_picker"]
        assert all("linked-run" not in s.options for s in pickers)
    finally:
        link.unlink()


@pytest.mark.parametrize("escapes", ["checkpoint", "data"])
def test_a_run_whose_model_or_data_lies_outside_is_not_loaded(
    home: Path, tmp_path: Path, escapes: str
):
    checkpoint = tmp_path / "model.safetensors" if escapes == "checkpoint" else home / "m.pt"
    spec = f"{tmp_path / 'x.npz'}:noise=0.1" if escapes == "data" else "digits"
    key = f"escapes-{escapes}"
    write_run(home / "runs" / key, checkpoint, spec)
    at = new_app({"run": key})
    assert_not_opened(at, home, key, tmp_path)


@pytest.mark.parametrize("name", [".hidden.pt", "../../model.pt"])
def test_upload_names_with_folders_or_hidden_are_refused(home: Path, name: str):
    at = new_app()
    at.file_uploader(key="ckpt_upload").upload(name, b"weights", "application/octet-stream").run()
    assert_clean(at)
    assert any("upload name" in e.value for e in at.error), [e.value for e in at.error]
    assert not any(p.name.endswith(name.split("/")[-1]) for p in (home / "uploads").glob("*"))
