"""K-FAC / EK-FAC through ``InfluenceEngine``, streamed scores, refusing what will not fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import TensorDataset

from dropinf.core import CompressionConfig, CurvatureConfig, cross_entropy_per_sample
from dropinf.engine import InfluenceEngine, phases
from dropinf.errors import ConfigError
from dropinf.run import RunStore


def linear_data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    return TensorDataset(inputs, torch.randint(0, 3, (n,), generator=generator))


def linear_engine(run_dir: Path, kind: str, **changes: object) -> InfluenceEngine:
    torch.manual_seed(0)
    return InfluenceEngine(
        nn.Linear(4, 3).double(),
        cross_entropy_per_sample,
        CompressionConfig(method="identity"),
        CurvatureConfig(kind=kind),
        run_dir=run_dir,
        **{"shard_rows": 16, "dtype": torch.float64, **changes},
    )


def explicit_kfac_scores(engine: InfluenceEngine, train: TensorDataset, test: TensorDataset):
    """``g'ᵀ (Δ ⊗ A + λI)⁻¹ g`` with A, Δ built from the data, in row-major vec of [W | b]."""
    model, (inputs, labels) = engine.model, train.tensors
    augmented = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=torch.float64)], dim=1)
    deltas = (functional.softmax(model(inputs), 1) - functional.one_hot(labels, 3)).detach()
    n = len(inputs)
    kronecker = torch.kron(deltas.T @ deltas / n, augmented.T @ augmented / n)  # (15, 15)
    damping = 0.1 * float(torch.linalg.eigvalsh(kronecker).mean())
    inverse = torch.linalg.inv(kronecker + damping * torch.eye(15, dtype=torch.float64))

    def row_major(dataset: TensorDataset) -> torch.Tensor:
        x, y = dataset.tensors
        x1 = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
        d = (functional.softmax(model(x), 1) - functional.one_hot(y, 3)).detach()
        return (d[:, :, None] * x1[:, None, :]).reshape(len(x), -1)  # (n, 15)

    return row_major(test) @ inverse @ row_major(train).T


def test_engine_kfac_scores_equal_the_explicit_kronecker_inverse(tmp_path: Path) -> None:
    train, test = linear_data(40, seed=1), linear_data(5, seed=2)
    engine = linear_engine(tmp_path / "run", "kfac").fit(train, batch_size=8)
    expected = explicit_kfac_scores(engine, train, test)
    # rtol 1e-6: core's KroneckerBlock.tensors saves λ through a float32 tensor (see report)
    torch.testing.assert_close(engine.pairwise_scores(test), expected, rtol=1e-6, atol=1e-12)
    shards = engine.store.complete_shards()
    assert [p.with_suffix("").with_suffix(".kfac.safetensors").is_file() for p in shards] == [
        True
    ] * 3
    assert engine.store.read_manifest()["curvature_kind"] == "kfac"


def test_engine_ekfac_self_influence_equals_the_streamed_recomputation(tmp_path: Path) -> None:
    train = linear_data(40, seed=1)
    engine = linear_engine(tmp_path / "run", "ekfac").fit(train, batch_size=8)
    gradients = torch.from_numpy(np.array(engine.store.gradients()))
    expected = (gradients * engine.curvature.precondition(gradients)).sum(1)
    torch.testing.assert_close(engine.self_influence().double(), expected, rtol=1e-6, atol=0)


def failing_after(calls: int, original):
    count = [0]

    def metadata(*args: object) -> dict:
        count[0] += 1
        if count[0] > calls:
            raise RuntimeError("killed")
        return original(*args)

    return metadata


def test_resume_with_another_batch_size_gives_the_same_kfac_curvature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = linear_data(40, seed=1)
    whole = linear_engine(tmp_path / "whole", "kfac").fit(train, batch_size=8)
    monkeypatch.setattr(phases, "batch_metadata", failing_after(4, phases.batch_metadata))
    with pytest.raises(RuntimeError, match="killed"):  # after rows 0-19: shard 0 published
        linear_engine(tmp_path / "run", "kfac").fit(train, batch_size=5)
    monkeypatch.undo()
    resumed = linear_engine(tmp_path / "run", "kfac").fit(train, batch_size=8)
    want, got = whole.store.load_curvature(), resumed.store.load_curvature()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-12, atol=1e-14)


def test_auto_resolves_to_ekfac_above_max_full_dim(tmp_path: Path) -> None:
    engine = linear_engine(tmp_path / "run", "auto")
    engine.curvature_config = CurvatureConfig(max_full_dim=10)
    engine.fit(linear_data(40, seed=1), batch_size=8)
    assert engine.store.read_manifest()["curvature_kind"] == "ekfac"
    reopened = InfluenceEngine.load(engine.store.run_dir, engine.model, cross_entropy_per_sample)
    test = linear_data(3, seed=2)
    torch.testing.assert_close(reopened.pairwise_scores(test), engine.pairwise_scores(test))


@pytest.mark.parametrize(
    ("patched", "message"),
    [
        ("free_disk_bytes", r"gradient store needs .* free under .*--max-kept-units"),
        ("available_memory_bytes", r"full curvature needs .* available; lower --max-kept"),
    ],
)
def test_a_run_that_would_not_fit_is_refused_before_its_gradients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, patched: str, message: str
) -> None:
    monkeypatch.setattr(f"dropinf.run.estimate.{patched}", lambda *_: 100)
    engine = linear_engine(tmp_path / "run", "full")
    with pytest.raises(ConfigError, match=message):
        engine.fit(linear_data(40, seed=1), batch_size=8)
    assert RunStore(tmp_path / "run").complete_shards() == []


def test_pairwise_scores_beyond_the_memory_budget_are_a_memmap(tmp_path: Path) -> None:
    train, test = linear_data(40, seed=1), linear_data(9, seed=2)
    engine = linear_engine(tmp_path / "run", "kfac").fit(train, batch_size=8)
    in_memory = engine.pairwise_scores(test)
    engine.score_memory_bytes = 64
    mapped = engine.pairwise_scores(test)
    maps = Path("/proc/self/maps").read_text()
    assert ".pairwise-" in maps and "(deleted)" in maps  # file-backed, already unlinked
    torch.testing.assert_close(mapped, in_memory, rtol=0, atol=0)
    assert not list((tmp_path / "run").glob(".pairwise-*"))


def test_query_of_few_rows_against_float16_shards_matches_float32(tmp_path: Path) -> None:
    train, test = linear_data(40, seed=1), linear_data(3, seed=2)
    engine = linear_engine(tmp_path / "run", "full", dtype=torch.float32)
    engine.model.float()
    single = TensorDataset(train.tensors[0].float(), train.tensors[1])
    engine.fit(single, batch_size=8)
    batch = [test.tensors[0].float(), test.tensors[1]]
    gradients = engine.capture.capture(cross_entropy_per_sample, batch).gradients
    stored = torch.from_numpy(np.array(engine.store.gradients())).float()
    expected = engine.curvature.precondition(gradients) @ stored.T
    got = engine.query(batch)  # float16 products: each score rounded to 11 significant bits
    tolerance = 2**-10 * float(expected.abs().max())
    assert float((got - expected).abs().max()) <= tolerance
    fifth_best = expected.topk(5, dim=1).values[:, -1:]  # the top 5 agree up to rounding ties
    got_best = expected.gather(1, got.topk(5, dim=1).indices)
    assert bool((got_best >= fifth_best - 2 * tolerance).all())
