"""The Load page's finds, the runs and layer tables, captions with names, the map selection."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

from dropinf import dashboard as views


def write_image_folder(root: Path) -> None:
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        Image.new("L", (4, 4)).save(root / name / "a.png")


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    (tmp_path / "sets" / "deep" / "deeper" / "deepest").mkdir(parents=True)
    np.savez(tmp_path / "sets" / "noisy.npz", x_train=np.zeros((2, 3)))
    np.savez(tmp_path / "sets" / "deep" / "deeper" / "deepest" / "far.npz", x=np.zeros(1))
    write_image_folder(tmp_path / "pets")
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps({}))
    (tmp_path / "models").mkdir()
    for name in ("a.safetensors", "b.pt", "c.pth", "notes.txt"):
        (tmp_path / "models" / name).write_bytes(b"x")
    for hidden in (".venv", ".cache", "runs"):
        (tmp_path / hidden).mkdir()
        (tmp_path / hidden / "hidden.pt").write_bytes(b"x")
        np.savez(tmp_path / hidden / "hidden.npz", x=np.zeros(1))
    return tmp_path


def test_finds_lists_datasets_and_checkpoints_but_not_hidden_ones(data_root: Path) -> None:
    finds = views.find_inputs(data_root)
    assert finds.datasets == ["cifar-10-batches-py", "pets", "sets/noisy.npz"]
    assert finds.checkpoints == ["models/a.safetensors", "models/b.pt", "models/c.pth"]
    assert finds.truncated, "sets/deep/deeper/deepest lies below the walk's depth"


def test_finds_does_not_walk_into_a_dataset_folder(data_root: Path) -> None:
    (data_root / "pets" / "cat" / "inner.pt").write_bytes(b"x")
    assert "pets/cat/inner.pt" not in views.find_inputs(data_root).checkpoints


def test_finds_is_bounded_on_a_wide_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dropinf.dashboard import finds

    monkeypatch.setattr(finds, "MAX_FOLDERS", 5)
    for i in range(20):
        (tmp_path / f"f{i:02d}").mkdir()
        (tmp_path / f"f{i:02d}" / "m.pt").write_bytes(b"x")
    found = views.find_inputs(tmp_path)
    assert found.truncated and len(found.checkpoints) == 4


def test_finds_of_a_missing_root_is_empty(tmp_path: Path) -> None:
    found = views.find_inputs(tmp_path / "missing")
    assert (found.datasets, found.checkpoints) == ([], [])


def test_runs_table_has_no_none_cells_for_a_cancelled_run() -> None:
    rows = [
        {"key": "a", "status": "complete", "method": "dropout", "keep_ratio": 0.25, "k": 1200,
         "n_train": 1437, "created": "2026", "arch": "small_cnn", "data_spec": "digits",
         "path": "/x/a"},
        {"key": "b", "status": "cancelled", "method": None, "keep_ratio": None, "k": None,
         "n_train": None, "created": None, "arch": None, "data_spec": None, "path": "/x/b"},
    ]  # fmt: skip
    table = views.runs_table(rows)
    assert not table.isna().any().any()
    assert "None" not in table.to_string()
    assert table.loc[1].tolist()[:2] == ["b", "cancelled"]
    assert table.loc[0, "k"] == "1,200"


def test_runs_table_leaves_out_columns_no_run_fills() -> None:
    table = views.runs_table([{"key": "b", "status": "cancelled"}])
    assert list(table.columns) == ["run", "status"]


def test_layer_table_names_layers_by_module_path() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2))
    assert views.layer_table(model)["layer"].tolist() == ["model[0]", "model[3]"]
    assert views.module_path("features.0.conv") == "model.features[0].conv"
    assert views.module_path("fc") == "model.fc"


def test_captions_show_the_name_from_the_data_escaped() -> None:
    caption = views.train_caption_html(3, "cat", "dog", False, 0.5, name="train/<b>x</b>.png")
    assert "train/&lt;b&gt;x&lt;/b&gt;.png" in caption and "<b>x</b>" not in caption
    assert "example-name" not in views.train_caption_html(3, "cat", "dog", False)
    assert "a&amp;b.png" in views.test_caption_html(1, "cat", "dog", 0.1, name="a&b.png")


def test_influence_sections_are_worded_by_case() -> None:
    correct = views.influence_sections("cat", "cat")
    assert "supported this prediction" in correct[0][0] and correct[0][1] == 1.0
    wrong = views.influence_sections("cat", "<dog>")
    assert "Pushed toward the predicted class &lt;dog&gt;" in wrong[0][0]
    assert wrong[0][1] == -1.0, "raising the true class's loss pushes toward the prediction"
    assert "Supported the true class cat" in wrong[1][0] and wrong[1][1] == 1.0


def test_a_kept_selection_is_drawn_selected_after_a_recolour() -> None:
    coords = np.arange(12, dtype=np.float32).reshape(6, 2)
    figure = views.gradient_map_figure(coords, color_values=np.array([0, 1, 0, 1, 0, 1]),
                                       selected=[2, 3])  # fmt: skip
    chosen = {
        int(np.asarray(trace.customdata)[row, 0])
        for trace in figure.data
        for row in (trace.selectedpoints or ())
    }
    assert chosen == {2, 3}
    plain = views.gradient_map_figure(coords, color_values=np.array([0, 1, 0, 1, 0, 1]))
    assert all(trace.selectedpoints is None for trace in plain.data)
