"""The review pages' words and the influence rows behind the suggested labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dropinf import dashboard as views
from dropinf.core import CompressionConfig, cross_entropy_per_sample
from dropinf.engine import InfluenceEngine
from dropinf.review import RunComparison

N_TRAIN = 40


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory: pytest.TempPathFactory):
    """A complete run of a tiny MLP (exact compression, float64) and its training data."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(N_TRAIN, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (N_TRAIN,), generator=generator)
    engine = InfluenceEngine(
        model, cross_entropy_per_sample, CompressionConfig(method="identity"),
        run_dir=tmp_path_factory.mktemp("tiny") / "run", dtype=torch.float64,
    ).fit(TensorDataset(inputs, labels))  # fmt: skip
    return engine, inputs, labels


def test_influence_rows_are_queries_of_the_training_examples(tiny_engine) -> None:
    engine, inputs, labels = tiny_engine
    indices = np.array([7, 0, 31])
    rows = views.influence_rows(engine, indices)
    queried = engine.query((inputs[indices], labels[indices])).numpy()
    np.testing.assert_allclose(rows, queried, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        rows[np.arange(3), indices], engine.store.self_influence()[indices], rtol=1e-6
    )  # self-influence is stored in float32
    assert views.influence_rows(engine, np.array([], dtype=np.int64)).shape == (0, N_TRAIN)


def test_top_indices_follow_the_ranking() -> None:
    assert views.top_indices(np.array([0.1, 3.0, 2.0, 3.0]), 3).tolist() == [1, 3, 2]


def test_retrain_cells_say_the_change_and_the_test_size() -> None:
    report = {
        "summary": {
            "before_accuracy": {"mean": 0.95, "std": 0.01},
            "after_accuracy": {"mean": 0.97, "std": 0.005},
            "accuracy_change": {"mean": 2.0, "half_width": 0.75},
        },
        "n_test": 360, "n_removed": 3, "n_relabeled": 4,
    }  # fmt: skip
    assert views.retrain_cells(report) == [
        ("Test accuracy before", "95.00% ± 1.00%"),
        ("Test accuracy after", "97.00% ± 0.50%"),
        ("Paired change (95 % interval)", "+2.00 ± 0.75 points"),
        ("Test examples", "360"),
        ("Removed / relabelled", "3 / 4"),
    ]
    report["summary"]["accuracy_change"] = {"mean": 0.0, "half_width": None}
    labels = [label for label, _ in views.retrain_cells({**report, "n_test": 0})]
    assert labels == ["Test accuracy before", "Test accuracy after", "Removed / relabelled"]


def test_the_auc_gap_sentence_names_the_winner() -> None:
    assert "+0.100" in views.auc_gap_sentence(0.95, 0.85)
    assert "the loss misses" in views.auc_gap_sentence(0.95, 0.85)
    assert "as well" in views.auc_gap_sentence(1.0, 0.998)
    assert "loss alone ranks the flipped labels better" in views.auc_gap_sentence(0.8, 0.9)
    noisy = np.array([True, False, False, True])
    aucs = views.score_aucs({"a": np.array([4.0, 1, 2, 3]), "b": np.array([1.0, 4, 3, 2])}, noisy)
    assert aucs == {"a": 1.0, "b": 0.0}


def test_run_names_and_comparison_cells() -> None:
    row = {"key": "k" * 40, "method": "dropout", "keep_ratio": 0.25, "k": 5342}
    assert views.run_name(row) == f"dropout keep 0.25 · k 5,342 · {'k' * 24}"
    assert views.run_name({"key": "x"}) == "? · x"
    comparison = RunComparison(k=50, shared=45, self_influence_spearman=0.9876,
                               score_spearman=0.5, same_model=True)  # fmt: skip
    assert views.comparison_cells(comparison) == [
        ("Top-50 suspects shared", "45 (90%)"),
        ("Self-influence Spearman", "0.988"),
        ("Mislabel score Spearman", "0.500"),
    ]
