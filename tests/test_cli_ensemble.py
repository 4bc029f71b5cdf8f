"""``compute`` over several checkpoints (issue 14): folders, ordering, the run, refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropinf.cli import build_parser, compute_command, compute_request, main
from dropinf.core import CompressionConfig, CurvatureConfig
from dropinf.data import load_data
from dropinf.engine import DEFAULT_COMBINATION, combine_scores
from dropinf.errors import ConfigError
from dropinf.models import build_model, save_checkpoint
from dropinf.run import RunRequest, RunStore, ensemble_section

SMALL = ["--keep-ratio", "0.5", "--device", "cpu", "--no-test-scores", "--batch-size", "512"]


def save_mlp(path: Path, seed: int, epoch: int | None, hidden: int = 8, **extra: object) -> Path:
    """A digits MLP checkpoint with random weights (``seed``) and an epoch in its metadata."""
    import torch

    torch.manual_seed(seed)
    args = {"input_dim": 64, "num_classes": 10, "hidden_sizes": [hidden]}
    model = build_model("mlp", **args)
    recorded = {"epoch": epoch, "recipe": {"lr": 0.01}} if epoch is not None else {}
    return save_checkpoint(path, model, "mlp", args, extra={**recorded, **extra})


@pytest.fixture(scope="module")
def schedule(tmp_path_factory) -> Path:
    """Three checkpoints whose name order is not their epoch order."""
    folder = tmp_path_factory.mktemp("schedule")
    save_mlp(folder / "a.safetensors", 0, epoch=30)
    save_mlp(folder / "b.safetensors", 1, epoch=1)
    save_mlp(folder / "c.pt", 2, epoch=4)
    return folder


def compute(models: list[str], out: Path, *extra: str) -> int:
    return main(["compute", "--model", *models, "--data", "digits", "--out", str(out), *SMALL,
                 *extra])  # fmt: skip


def test_a_folder_of_checkpoints_is_one_run_in_epoch_order(schedule: Path, tmp_path: Path) -> None:
    assert compute([str(schedule)], tmp_path / "run") == 0
    manifest = RunStore(tmp_path / "run").read_manifest()
    section = ensemble_section(manifest)
    assert [c["name"] for c in section["checkpoints"]] == ["b.safetensors", "c.pt", "a.safetensors"]
    assert [c["epoch"] for c in section["checkpoints"]] == [1, 4, 30]
    assert [c["learning_rate"] for c in section["checkpoints"]] == [0.01] * 3
    assert section["combination"] == DEFAULT_COMBINATION == "tracin"
    assert manifest["provenance"]["checkpoint"] == str((schedule / "a.safetensors").resolve())
    assert all(len(c["sha256"]) == 64 for c in section["checkpoints"])
    subs = [RunStore(tmp_path / "run" / "checkpoints" / c["run"]) for c in section["checkpoints"]]
    stack = np.stack([sub.self_influence() for sub in subs])
    expected = combine_scores(stack, "tracin", [0.01] * 3)
    np.testing.assert_allclose(RunStore(tmp_path / "run").self_influence(), expected, rtol=1e-6)


def test_several_models_and_suspects_of_the_ensemble(
    schedule: Path, tmp_path: Path, capsys
) -> None:
    models = [str(schedule / "b.safetensors"), str(schedule / "a.safetensors")]
    assert compute(models, tmp_path / "run", "--combination", "rank") == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["checkpoints"], printed["combination"]) == (2, "rank")
    section = ensemble_section(RunStore(tmp_path / "run").read_manifest())
    assert [c["name"] for c in section["checkpoints"]] == ["b.safetensors", "a.safetensors"]
    csv = tmp_path / "suspects.csv"
    assert main(["suspects", "--run", str(tmp_path / "run"), "--top", "5", "--out", str(csv)]) == 0
    ranking = np.load(tmp_path / "run" / "ensemble_scores.npz")["leave_one_out_loss"]
    rows = csv.read_text().splitlines()
    assert len(rows) == 6
    first_index = int(rows[1].split(",")[rows[0].split(",").index("train_index")])
    assert first_index == int(np.argmax(ranking))


def test_one_checkpoint_is_a_run_of_one_model(schedule: Path, tmp_path: Path) -> None:
    folder = tmp_path / "one"
    folder.mkdir()
    save_mlp(folder / "only.safetensors", 0, epoch=3)
    assert compute([str(folder)], tmp_path / "run") == 0
    manifest = RunStore(tmp_path / "run").read_manifest()
    assert ensemble_section(manifest) is None
    assert not (tmp_path / "run" / "checkpoints").exists()


def refused(models: list[str], out: Path, capsys) -> str:
    assert compute(models, out) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_a_folder_without_checkpoints_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no weights here")
    err = refused([str(tmp_path / "empty")], tmp_path / "run", capsys)
    assert "found none" in err and "empty" in err


def test_checkpoints_of_another_architecture_name_the_odd_one_out(
    schedule: Path, tmp_path: Path, capsys
) -> None:
    odd = save_mlp(tmp_path / "wide.safetensors", 3, epoch=8, hidden=12)
    err = refused([str(schedule), str(odd)], tmp_path / "run", capsys)
    assert "architecture" in err and "wide.safetensors" in err
    assert "a.safetensors" not in err.split("found", 1)[1]


def test_checkpoints_of_other_data_name_the_odd_one_out(schedule: Path, tmp_path: Path, capsys):
    fingerprint = load_data("digits").fingerprint
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name, seed in (("e1.safetensors", 0), ("e2.safetensors", 1)):
        save_mlp(folder / name, seed, epoch=seed + 1, data_fingerprint=fingerprint)
    save_mlp(folder / "other.safetensors", 2, epoch=9, data_fingerprint="0" * 64)
    err = refused([str(folder)], tmp_path / "run", capsys)
    assert "training data fingerprint" in err and "other.safetensors" in err
    assert "e1.safetensors" not in err


def test_a_checkpoint_given_twice_is_refused(schedule: Path, tmp_path: Path, capsys) -> None:
    path = str(schedule / "a.safetensors")
    assert "given twice" in refused([path, path], tmp_path / "run", capsys)


def test_a_missing_checkpoint_among_several_is_named(schedule: Path, tmp_path: Path, capsys):
    err = refused(
        [str(schedule / "a.safetensors"), str(tmp_path / "nope.pt")], tmp_path / "r", capsys
    )
    assert "nope.pt" in err


def test_another_ensemble_in_the_run_directory_is_refused(
    schedule: Path, tmp_path: Path, capsys
) -> None:
    assert compute([str(schedule)], tmp_path / "run") == 0
    capsys.readouterr()
    err = refused([str(schedule), "--combination", "rank"], tmp_path / "run", capsys)
    assert "combination" in err and "--overwrite" in err


def parse(command: list[str]):
    assert command[:3] == [sys.executable, "-m", "dropinf"]
    return build_parser().parse_args(command[3:])


PATHS = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1
)


@settings(max_examples=100, deadline=None)
@given(checkpoints=st.lists(PATHS, min_size=2, max_size=4), combination=st.sampled_from(
    ["rank", "standardised", "tracin"]))  # fmt: skip
def test_ensemble_command_parses_back(checkpoints: list[str], combination: str) -> None:
    request = RunRequest(Path(checkpoints[-1]), "digits", CompressionConfig(), CurvatureConfig())
    args = parse(compute_command(request, "/runs/x", checkpoints, combination))
    assert args.model == [Path(path) for path in checkpoints]
    assert args.combination == combination
    assert compute_request(args) == request


def test_ensemble_command_must_end_with_the_request_checkpoint() -> None:
    request = RunRequest(Path("last.pt"), "digits", CompressionConfig(), CurvatureConfig())
    with pytest.raises(ConfigError, match="ending with"):
        compute_command(request, "/runs/x", ["last.pt", "first.pt"])
