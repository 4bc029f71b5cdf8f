"""The CUDA path gives the CPU path's influence (run where a GPU is present; skipped elsewhere)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import TensorDataset

from dropinf import CompressionConfig, CurvatureConfig, InfluenceEngine
from dropinf.core import cross_entropy_per_sample
from dropinf.models import build_model
from tests.engine.test_engine import refuse_shard_reads

pytestmark = pytest.mark.gpu


def digits_like(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.rand(n, 1, 8, 8, generator=generator)
    return TensorDataset(inputs, torch.randint(0, 10, (n,), generator=generator))


@pytest.mark.parametrize("method", ["dropout", "identity", "gaussian", "sjlt"])
def test_cuda_scores_match_cpu_scores(method: str) -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=1, num_classes=10, input_size=8)
    train, test = digits_like(300, 0), digits_like(20, 1)
    config = CompressionConfig(method=method, keep_ratio=0.1, mask="uniform")

    def scores(device: str) -> torch.Tensor:
        engine = InfluenceEngine(
            model,
            cross_entropy_per_sample,
            config,
            CurvatureConfig(kind="block"),
            device=device,
            store_dtype=torch.float32,
        )
        return engine.fit(train, batch_size=64).pairwise_scores(test)

    on_cpu, on_cuda = scores("cpu"), scores("cuda")
    correlation = torch.corrcoef(torch.stack([on_cpu.flatten(), on_cuda.flatten()]))[0, 1]
    assert on_cuda.device.type == "cpu"  # results come back to the host
    assert correlation > 0.9999
    assert torch.allclose(on_cuda, on_cpu, rtol=1e-3, atol=1e-3 * on_cpu.abs().max().item())


def test_cuda_fit_scores_new_examples() -> None:
    torch.manual_seed(1)
    model = build_model("mlp", input_dim=64, num_classes=10, hidden_sizes=[32])
    train = digits_like(200, 2)
    engine = InfluenceEngine(model, cross_entropy_per_sample, device="cuda").fit(train)
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=8)))
    assert engine.query(batch).shape == (8, 200)
    assert torch.isfinite(engine.self_influence()).all()


def test_cuda_queries_after_the_first_read_no_shard(tmp_path, monkeypatch) -> None:
    """The stored gradients stay on the GPU between passes: later queries copy nothing."""
    torch.manual_seed(2)
    model = build_model("mlp", input_dim=64, num_classes=10, hidden_sizes=[32])
    train = digits_like(200, 3)
    engine = InfluenceEngine(
        model, cross_entropy_per_sample, run_dir=tmp_path / "run", device="cuda", shard_rows=64
    ).fit(train)
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=8)))
    first = engine.query(batch)
    refuse_shard_reads(monkeypatch)
    torch.testing.assert_close(engine.query(batch), first)


def test_cuda_conv1d_and_norm_hooks_match_cpu() -> None:
    """Conv1d (as its planar view) and the norms' hooks give the CPU's scores on CUDA."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Unflatten(1, (4, 16)), torch.nn.Conv1d(4, 8, 3, padding=1),
        torch.nn.GroupNorm(2, 8), torch.nn.ReLU(), torch.nn.Conv1d(8, 8, 3, stride=2),
        torch.nn.Flatten(), torch.nn.LayerNorm(56), torch.nn.Linear(56, 10),
    )  # fmt: skip
    generator = torch.Generator().manual_seed(4)
    inputs = torch.randn(120, 64, generator=generator)
    train = TensorDataset(inputs[:100], torch.randint(0, 10, (100,), generator=generator))
    test = TensorDataset(inputs[100:], torch.randint(0, 10, (20,), generator=generator))

    def scores(device: str) -> torch.Tensor:
        engine = InfluenceEngine(copy.deepcopy(model), cross_entropy_per_sample,
                                 curvature=CurvatureConfig(kind="ekfac"), device=device,
                                 dtype=torch.float64)  # fmt: skip
        return engine.fit(train, batch_size=32).pairwise_scores(test)

    on_cpu, on_cuda = scores("cpu"), scores("cuda")
    assert torch.allclose(on_cuda, on_cpu, rtol=1e-6, atol=1e-6 * on_cpu.abs().max().item())
