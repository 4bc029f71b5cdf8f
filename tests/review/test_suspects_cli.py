"""``python -m dropinf suspects``: the review queue of a run as CSV, in RunReview's order."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dropinf.cli import main
from dropinf.data import load_data
from dropinf.review import RunReview
from dropinf.run import RunStore

DATA = "digits:noise=0.1,seed=0"
TINY = ["--arch", "mlp", "--arch-args", '{"hidden_sizes": [16]}', "--epochs", "2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("suspects")
    model, run = folder / "mlp.safetensors", folder / "run"
    assert main(["train", *TINY, "--data", DATA, "--out", str(model)]) == 0
    assert main(["compute", "--model", str(model), "--data", DATA, "--keep-ratio", "0.5",
                 "--out", str(run), "--device", "cpu"]) == 0  # fmt: skip
    return run


def test_suspects_csv_follows_the_label_issues_queue(run_dir: Path, tmp_path: Path) -> None:
    review = RunReview(RunStore(run_dir), load_data(DATA).class_names)
    review.decide([int(review.queue()["train_index"].iloc[1])], "keep")
    out = tmp_path / "out" / "suspects.csv"
    assert main(["suspects", "--run", str(run_dir), "--top", "25", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert table["train_index"].tolist() == review.queue()["train_index"].tolist()[:25]
    assert {"given_class", "predicted_class", "suggested_label", "score"} <= set(table.columns)
    assert table["score"].is_monotonic_decreasing


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--run", "no/such/run"], "expected a run directory"),
        (["--run", "{tmp}"], "expected a complete run"),
    ],
)
def test_bad_runs_end_with_an_error_and_status_2(
    arguments: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    arguments = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    assert main(["suspects", *arguments, "--out", str(tmp_path / "s.csv")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and "Traceback" not in error
