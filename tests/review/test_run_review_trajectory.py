"""``RunReview`` of a run over several checkpoints: one example along the training trajectory."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dropinf.core import CompressionConfig, cross_entropy_per_sample
from dropinf.engine import CheckpointInfo, EnsembleEngine, InfluenceEngine
from dropinf.review import RunReview
from dropinf.run import RunStore

EPOCHS = [1, 4, None]


def make_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def make_data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn((n, 6), generator=generator, dtype=torch.float64)
    return TensorDataset(inputs, torch.randint(0, 3, (n,), generator=generator))


@pytest.fixture(scope="module")
def ensemble_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("trajectory") / "run"
    infos = [CheckpointInfo(name=f"ckpt-{i}.pt", epoch=epoch) for i, epoch in enumerate(EPOCHS)]
    EnsembleEngine(
        [make_mlp(seed) for seed in range(3)], cross_entropy_per_sample,
        CompressionConfig(method="identity"), run_dir=run_dir, dtype=torch.float64,
        checkpoints=infos, combination="rank",
    ).fit(make_data(30, 0), 16)  # fmt: skip
    return run_dir


def test_trajectory_is_each_checkpoint_runs_own_scores_of_the_example(ensemble_dir: Path) -> None:
    review = RunReview(RunStore(ensemble_dir))
    assert review.checkpoint_epochs() == EPOCHS
    subs = [RunStore(path) for path in sorted((ensemble_dir / "checkpoints").iterdir())]
    given = review.metadata["label"]
    for index in (0, 17, 29):
        table = review.trajectory(index)
        assert table["checkpoint"].tolist() == [1, 2, 3]
        assert [None if e is pd.NA else e for e in table["epoch"].tolist()] == EPOCHS
        for row, sub in zip(table.itertuples(), subs, strict=True):
            meta = sub.train_metadata()
            assert row.self_influence == pytest.approx(sub.self_influence()[index], rel=1e-6)
            assert row.loss == pytest.approx(meta["loss"][index], rel=1e-6)
            assert row.leave_one_out_loss == pytest.approx(
                meta["loss"][index] + sub.self_influence()[index] / 30, rel=1e-6
            )
            assert row.prediction == meta["prediction"][index]
            assert row.learned == (meta["prediction"][index] == given[index])
    with pytest.raises(IndexError, match=r"\[0, 30\), found 30"):
        review.trajectory(30)


def test_a_run_of_one_model_has_no_trajectory(tmp_path: Path) -> None:
    exact = CompressionConfig(method="identity")
    engine = InfluenceEngine(make_mlp(0), cross_entropy_per_sample, exact,
                             run_dir=tmp_path / "one", dtype=torch.float64)  # fmt: skip
    engine.fit(make_data(20, 0), 8)
    review = RunReview(RunStore(tmp_path / "one"))
    assert review.trajectory(0) is None and review.checkpoint_epochs() == []
