"""AppTest flows of issues 12 and 13 (dashboard side): the Load picker, uploads with an
architecture, job failures that say what to change, the fresh-run message, the runs table,
Explore's wording and detail panel, and the gradient map's selection, order and autostart.

One DROPINF_HOME and data root per module; jobs run synchronously unless a test says otherwise.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from tests.pages.test_pages import assert_clean, new_app, open_page

ROOT = Path(__file__).resolve().parents[2]

REFUSING_JOB = "import sys; print('error: expected a 10-class model, found 3', file=sys.stderr); "
REFUSING_JOB += "sys.exit(2)"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("dropinf-home")
    root = tmp_path_factory.mktemp("data-root")
    np.savez(root / "blobs.npz", x_train=np.zeros((4, 2), np.float32), y_train=np.arange(4) % 2)
    (root / "models").mkdir()
    (root / "models" / "cnn.pt").write_bytes(small_cnn_weights())  # no sidecar
    (root / ".venv").mkdir()
    (root / ".venv" / "hidden.pt").write_bytes(b"x")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("DROPINF_HOME", str(home))
    patcher.setenv("DROPINF_DATA_ROOT", str(root))
    patcher.setenv("DROPINF_SYNC_JOBS", "1")
    yield home
    patcher.undo()


def test_the_load_page_says_what_the_data_root_is(home: Path) -> None:
    import os

    at = new_app()
    note = next(i.value for i in at.info if "Data root" in i.value)
    assert f"`{os.environ['DROPINF_DATA_ROOT']}`" in note
    assert "DROPINF_DATA_ROOT=" in note and "restart the server" in note
    assert "1 dataset(s) and 1 checkpoint(s)" in note, "the hidden .venv is not searched"


def test_the_pickers_fill_the_path_fields(home: Path) -> None:
    at = new_app()
    at.selectbox(key="data_pick").set_value("blobs.npz").run()
    assert at.text_input(key="data_spec").value == "blobs.npz"
    at.radio(key="ckpt_source").set_value("Path on the server").run()
    assert at.selectbox(key="ckpt_pick").options == ["models/cnn.pt"]
    at.selectbox(key="ckpt_pick").set_value("models/cnn.pt").run()
    assert at.text_input(key="ckpt_path").value == "models/cnn.pt"
    assert_clean(at)


@pytest.mark.parametrize("field", ["data_spec", "ckpt_path"])
def test_a_path_outside_the_root_keeps_the_form(home: Path, field: str) -> None:
    at = new_app()
    at.radio(key="ckpt_source").set_value("Path on the server").run()
    at.text_input(key=field).input("/etc/passwd").run()
    assert_clean(at)
    assert any("inside the data root" in e.value for e in at.error)
    keys = {w.key for w in at.text_input}
    assert {"data_spec", "ckpt_path"} <= keys, "both fields stay"
    assert at.button(key="load_own").disabled, "the Load button stays, disabled"


def small_cnn_weights() -> bytes:
    from dropinf import models

    model = models.build_model("small_cnn")
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def uploaded_app(home: Path) -> AppTest:
    at = new_app()
    at.selectbox(key="arch").set_value("small_cnn").run()
    at.file_uploader(key="ckpt_upload").upload("my model.pt", small_cnn_weights(), "").run()
    at.text_input(key="data_spec").input("digits").run()
    at.button(key="load_own").click().run()
    assert_clean(at)
    return at


def test_an_upload_with_an_architecture_gets_a_sidecar_and_its_own_name(
    uploaded_app: AppTest, home: Path
) -> None:
    context = uploaded_app.session_state["dropinf_context"]
    assert context.title == "my model.pt" and context.arch == "small_cnn"
    sidecar = Path(context.checkpoint + ".json")
    assert json.loads(sidecar.read_text())["arch"] == "small_cnn"
    assert any("my model.pt" in c.value for c in uploaded_app.caption)
    assert not any(Path(context.checkpoint).name in c.value for c in uploaded_app.caption)


def test_the_layer_table_names_module_paths(uploaded_app: AppTest) -> None:
    layers = next(frame.value for frame in uploaded_app.dataframe if "layer" in frame.value)
    assert layers["layer"].tolist()[:2] == ["model[0]", "model[2]"]


def test_a_refused_input_says_so_and_the_command_carries_the_arch(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dropinf.cli

    requests = []

    def refusing_command(request: object, run_dir: object, **options: object) -> list[str]:
        requests.append(request)
        return [sys.executable, "-c", REFUSING_JOB]

    monkeypatch.setattr(dropinf.cli, "compute_command", refusing_command)
    at = new_app()
    at.selectbox(key="arch").set_value("small_cnn").run()
    at.radio(key="ckpt_source").set_value("Path on the server").run()
    at.selectbox(key="ckpt_pick").set_value("models/cnn.pt").run()
    at.text_input(key="data_spec").input("digits").run()
    at.button(key="load_own").click().run()
    at = open_page(at, "pages/compute.py")
    at.button(key="start").click().run()
    assert_clean(at)
    assert requests[0].arch == "small_cnn" and requests[0].arch_args == {}
    warning = next(w.value for w in at.warning if "failed" in w.value)
    assert "error: expected a 10-class model, found 3" in warning
    assert "Fix the input" in warning and "start it again to resume" not in warning


def test_the_runs_table_shows_no_none_for_a_cancelled_run(home: Path) -> None:
    from dropinf.run import RunStore

    RunStore(home / "runs" / "cancelled-run").write_manifest({"status": "cancelled"})
    at = open_page(new_app(), "pages/compute.py")
    table = at.dataframe[-1].value
    assert "cancelled-run" in table["run"].tolist()
    assert "None" not in table.to_string() and not table.isna().any().any()


# ---------------------------------------------------------------------------------------------
# A computed demo run
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def computed_app(home: Path) -> AppTest:
    at = new_app()
    at.button(key="load_demo").click().run()
    at = open_page(at, "pages/compute.py")
    at.button(key="start").click().run()
    assert_clean(at)
    return at


@pytest.mark.slow
def test_a_fresh_run_says_it_finished_not_that_it_was_reused(computed_app: AppTest) -> None:
    assert any("The run finished" in s.value for s in computed_app.success)
    assert not any("already ran" in s.value for s in computed_app.success)
    again = new_app({"run": computed_app.session_state["dropinf_run"]})
    again = open_page(again, "pages/compute.py")
    assert any("already ran" in s.value for s in again.success), "another session reuses it"


def html_texts(at: AppTest) -> list[str]:
    return [element.proto.body for element in at.get("html")]


@pytest.mark.slow
def test_explore_words_a_correct_and_a_wrong_prediction(computed_app: AppTest) -> None:
    at = open_page(computed_app, "pages/explore.py")
    picked = at.selectbox(key="explore_pick_By index")
    assert "✗" not in picked.format_func(picked.value), "test #0 is predicted right"
    assert any("Proponents (supported this prediction" in h for h in html_texts(at))
    at.segmented_control(key="explore_mode").set_value("Misclassified only").run()
    headings = html_texts(at)
    assert any("Pushed toward the predicted class" in h for h in headings)
    assert any("Supported the true class" in h for h in headings)
    assert not any("Proponents" in h for h in headings)
    assert any("at its true label" in c.value for c in at.caption), "what the scores mean"


@pytest.mark.slow
def test_the_detail_opens_beside_the_gallery_and_closes_on_a_mode_change(
    computed_app: AppTest,
) -> None:
    at = open_page(computed_app, "pages/explore.py")
    next(b for b in at.button if b.key and b.key.startswith("gallery1-")).click().run()
    assert_clean(at)
    beside = [c for c in at.columns if any("Training example #" in s.value for s in c.subheader)]
    assert beside and any(b.key and b.key.startswith("gallery") for b in at.columns[1].button)
    assert at.get("plotly_chart"), "the histogram stays below"
    at.segmented_control(key="explore_mode").set_value("By class").run()
    assert at.session_state["train_detail"] is None
    assert not any("Training example #" in s.value for s in at.subheader)


def map_app(computed_app: AppTest) -> AppTest:
    at = open_page(computed_app, "pages/gradient_map.py")
    if any(b.key == "compute_map" for b in at.button):
        at.button(key="compute_map").click().run()
    assert_clean(at)
    return at


@pytest.mark.slow
def test_a_map_selection_survives_recolouring_sorted_by_suspicion(
    computed_app: AppTest, home: Path
) -> None:
    from dropinf.review import RunReview
    from dropinf.run import RunStore

    at = map_app(computed_app)
    run_key = at.session_state["dropinf_run"]
    selection = [5, 17, 40, 300, 2]
    at.session_state[f"map_selection-{run_key}"] = selection
    at.run()
    at.selectbox(key="map_colour").set_value("Self-influence").run()
    assert_clean(at)
    assert any("5 selected" in m.value for m in at.markdown), "the selection stays"
    shown = [int(b.key.split("-")[1]) for b in at.button if b.key and b.key.startswith("drop-")]
    suspicion = RunReview(RunStore(home / "runs" / run_key)).primary_score()
    assert shown == sorted(selection, key=lambda i: -float(suspicion[i]))
    at.button(key=f"drop-{shown[0]}").click().run()
    assert at.session_state[f"map_selection-{run_key}"] == [i for i in selection if i != shown[0]]
    at.button(key="flag_selected").click().run()
    assert at.toast and at.toast[0].icon == ":material/flag:"


@pytest.mark.slow
def test_a_failed_map_job_says_why_and_a_new_run_maps_on_its_own(
    computed_app: AppTest, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dropinf import dashboard as views
    from dropinf import run as runs

    source = home / "runs" / computed_app.session_state["dropinf_run"]
    copy = home / "runs" / "copied-run"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("umap.npz"))
    jobs = runs.job_dir(copy)
    jobs.mkdir(parents=True, exist_ok=True)
    (jobs / "map.log").write_text("error: expected a complete run, found shards missing\n")
    (jobs / "map.exit").write_text("2\n")
    at = open_page(new_app({"run": copy.name}), "pages/gradient_map.py")
    failure = next(e.value for e in at.error if "map job failed" in e.value)
    assert "found shards missing" in failure and "Fix the input" in failure
    for name in ("map.log", "map.exit"):
        (jobs / name).unlink()
    monkeypatch.setenv("DROPINF_SYNC_JOBS", "0")
    at = new_app({"run": copy.name})
    at.session_state["dropinf_sync_jobs"] = False
    at = open_page(at, "pages/gradient_map.py")
    runner = runs.JobRunner()
    try:
        assert runner.status(copy, views.MAP_JOB).state in ("running", "complete")
    finally:
        runner.cancel(copy, views.MAP_JOB)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["map", "retrain"])
def test_named_jobs_report_their_progress(computed_app: AppTest, home: Path, name: str) -> None:
    import os

    from dropinf import run as runs

    run_dir = home / "runs" / f"progress-{name}"
    shutil.copytree(home / "runs" / computed_app.session_state["dropinf_run"], run_dir,
                    ignore=shutil.ignore_patterns("umap.npz"))  # fmt: skip
    runs.job_dir(run_dir).mkdir(parents=True, exist_ok=True)
    (runs.job_dir(run_dir) / f"{name}.lock").write_text(json.dumps({"pid": os.getpid()}))
    progress = {"phase": "gradients", "done": 500, "total": 1437}
    runs.job_progress_path(run_dir, name).write_text(json.dumps(progress))
    status = runs.job_status(run_dir, name)
    assert (status.state, status.done, status.total) == ("running", 500, 1437)
    if name == "map":
        at = open_page(new_app({"run": run_dir.name}), "pages/gradient_map.py")
        bar = at.get("progress")[0].proto
        assert "stored gradients: 500 / 1,437" in bar.text and bar.value == 34
