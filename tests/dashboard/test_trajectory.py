"""Training trajectories on the pages: files, order, progress, when an example was learned."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn

from dropinf.dashboard import (
    Finds,
    checkpoint_epochs,
    ensemble_progress_text,
    epochs_text,
    learned_sentence,
    ordered_trajectory,
    trajectory_figure,
    trajectory_files,
)
from dropinf.dashboard.style import OPPONENT_COLOR, PROPONENT_COLOR
from dropinf.errors import CheckpointError, CheckpointMismatchError
from dropinf.run import JobStatus

PHASES = {"gradients": "Capturing the training gradients", "ensemble": "Combining"}
NAMES = ["zero", "one", "two", "three"]


def table(epochs: list[int | None], predictions: list[int], given: int) -> pd.DataFrame:
    count = len(predictions)
    return pd.DataFrame({
        "checkpoint": range(1, count + 1), "epoch": pd.array(epochs, "Int64"),
        "self_influence": [float(10 * i + 1) for i in range(count)],
        "loss": [1.0 / (i + 1) for i in range(count)],
        "leave_one_out_loss": [0.0] * count,
        "prediction": predictions, "learned": [p == given for p in predictions],
    })  # fmt: skip


def test_progress_names_the_checkpoint_its_epoch_and_the_phase() -> None:
    status = JobStatus("running", done=576, total=1437, phase="gradients", checkpoint="02-e4",
                       checkpoint_index=2, checkpoints=5)  # fmt: skip
    text = ensemble_progress_text(status, PHASES, "Working", [1, 2, 4, 8, 12])
    assert (
        text == "Checkpoint 3 of 5 · epoch 4 · Capturing the training gradients: 576 / 1,437 (40%)"
    )
    assert ensemble_progress_text(status, PHASES, "Working", []).startswith(
        "Checkpoint 3 of 5 · Capturing"
    )  # epochs unknown: none named
    combining = JobStatus("running", phase="ensemble", total=1)  # the top level's own phase
    assert ensemble_progress_text(combining, PHASES, "Working", [1, 2]) == "Combining…"
    one_model = JobStatus("running", done=5, total=10, phase="gradients")
    assert ensemble_progress_text(one_model, PHASES, "Working") == (
        "Capturing the training gradients: 5 / 10 (50%)"
    )


def test_checkpoint_epochs_come_from_the_manifest_ensemble_section() -> None:
    manifest = {"ensemble": {"checkpoints": [{"epoch": 1}, {"epoch": None}, {}, {"epoch": 8}]}}
    assert checkpoint_epochs(manifest) == [1, None, None, 8]
    assert checkpoint_epochs({"k": 3}) == [] and checkpoint_epochs(None) == []
    assert epochs_text([1, None, 8]) == "epochs 1, ?, 8" and epochs_text([None]) == ""


@pytest.mark.parametrize(
    ("predictions", "expected"),
    [
        ([1, 1, 1], "Predicted its given label one from every checkpoint."),
        ([2, 3, 1], "Predicted its given label one from epoch 4 on; before, it predicted two, "
                    "three (a label fitted late)."),
        ([0, 0, 0], "No checkpoint predicted its given label one: the model never fitted it "
                    "(the last predicted zero)."),
        ([1, 2, 2], "Predicted its given label one at epoch 1 but not at the end (the last "
                    "checkpoint predicted two)."),
        ([1, 2, 1], "Predicted its given label one from epoch 4 on, after changing its mind "
                    "(not at epoch 2)."),
    ],
)  # fmt: skip
def test_learned_sentence_says_when_the_given_label_was_fitted(predictions, expected) -> None:
    assert learned_sentence(table([1, 2, 4], predictions, 1), NAMES.__getitem__, 1) == expected


def test_learned_sentence_names_checkpoints_when_epochs_are_unknown() -> None:
    rows = table([None, None, None], [3, 3, 1], given=1)
    assert "from checkpoint 3 on" in learned_sentence(rows, NAMES.__getitem__, 1)


def test_trajectory_figure_marks_each_checkpoint_by_whether_it_predicted_the_label() -> None:
    rows = table([1, 2, 4, 8], [2, 1, 1, 3], given=1)
    figure = trajectory_figure(rows, NAMES.__getitem__)
    influence, loss = figure.data
    assert list(influence.x) == [1, 2, 4, 8] and list(influence.y) == [1.0, 11.0, 21.0, 31.0]
    assert list(influence.marker.color) == [OPPONENT_COLOR, PROPONENT_COLOR, PROPONENT_COLOR,
                                            OPPONENT_COLOR]  # fmt: skip
    assert [row[0] for row in influence.customdata] == ["two", "one", "one", "three"]
    assert list(loss.y) == [1.0, 0.5, 1 / 3, 0.25] and loss.yaxis == "y2"
    assert figure.layout.xaxis.title.text == "epoch" and figure.layout.xaxis.type == "log"
    unknown = trajectory_figure(table([1, None], [1, 1], given=1), NAMES.__getitem__)
    assert list(unknown.data[0].x) == [1, 2] and unknown.layout.xaxis.title.text == "checkpoint"


def test_class_names_are_escaped_in_the_figure() -> None:
    figure = trajectory_figure(table([1], [0], given=1), lambda _: "<b>x</b>")
    assert "<b>" not in str(figure.data[0].customdata)


def test_trajectory_files_expand_a_folder_and_keep_files_once(tmp_path: Path) -> None:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for name in ("epoch-2.pt", "epoch-1.safetensors", "epoch-1.safetensors.json", ".hidden.pt"):
        (folder / name).write_bytes(b"x")
    assert trajectory_files([folder]) == [folder / "epoch-1.safetensors", folder / "epoch-2.pt"]
    files = [folder / "epoch-2.pt", folder / "epoch-2.pt", folder / "epoch-1.safetensors"]
    assert trajectory_files(files) == files[1:]
    with pytest.raises(CheckpointError, match="found none"):
        trajectory_files([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="found none"):
        trajectory_files([tmp_path / "empty"])


def checkpoint(name: str, epoch: int | None, hidden: int = 4) -> SimpleNamespace:
    """What ``ordered_trajectory`` reads of a ``LoadedCheckpoint``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, hidden), nn.Linear(hidden, 2))
    extra = {} if epoch is None else {"epoch": epoch}
    return SimpleNamespace(path=Path(f"/c/{name}"), arch="mlp", arch_args={"h": hidden},
                           model=model, extra=extra)  # fmt: skip


def test_ordered_trajectory_sorts_by_epoch_and_refuses_odd_ones_out() -> None:
    found = [checkpoint("z.pt", 8), checkpoint("a.pt", None), checkpoint("m.pt", 2)]
    assert [c.path.name for c in ordered_trajectory(found)] == ["m.pt", "z.pt", "a.pt"]
    with pytest.raises(CheckpointError, match=r"at least 2 checkpoints .* found 1 \(z\.pt\)"):
        ordered_trajectory(found[:1])
    odd = [*found, checkpoint("wide.pt", 12, hidden=9)]
    with pytest.raises(CheckpointMismatchError, match=r"wide\.pt"):
        ordered_trajectory(odd)


def test_checkpoint_folders_are_those_holding_two_or_more() -> None:
    finds = Finds(checkpoints=["a.pt", "demo/x-checkpoints/e1.pt", "demo/x-checkpoints/e2.pt",
                               "demo/final.pt", "b.pt"])  # fmt: skip
    assert finds.checkpoint_folders == [".", "demo/x-checkpoints"]
