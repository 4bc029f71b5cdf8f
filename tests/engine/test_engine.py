"""Exactness of the engine against explicit-Hessian influence, and its run-directory behaviour."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dropinf.core import (
    DEFAULT_DAMPING_RATIOS,
    CompressionConfig,
    CurvatureConfig,
    cross_entropy_per_sample,
    discover_layers,
)
from dropinf.engine import InfluenceEngine, model_fingerprint, resolve_device
from dropinf.errors import (
    ConfigError,
    DatasetError,
    IncompleteRunError,
    NoCapturableLayerError,
    NonFiniteError,
    RunConfigMismatchError,
)
from dropinf.run import RunStore

EXACT = CompressionConfig(method="identity")


def make_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(6, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 3)
    ).double()


def make_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(3, 2, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, 3),
    ).double()


def make_data(kind: str, n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    shape = (n, 6) if kind == "mlp" else (n, 1, 5, 5)
    inputs = torch.randn(shape, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (n,), generator=generator)
    return TensorDataset(inputs, labels)


def loop_gradients(model: nn.Module, dataset: TensorDataset) -> torch.Tensor:
    """Full per-sample gradients, one ``.backward()`` per example."""
    rows = []
    for inputs, label in dataset:
        model.zero_grad()
        cross_entropy_per_sample(model, (inputs[None], label[None])).sum().backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    return torch.stack(rows)


def explicit_influence(
    train_grads: torch.Tensor, test_grads: torch.Tensor, blocks: list[slice] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and self-influence with the damped Fisher inverted explicitly."""
    fisher = train_grads.T @ train_grads / train_grads.shape[0]
    damping = DEFAULT_DAMPING_RATIOS["full"] * fisher.diagonal().mean()  # the default ratio
    if blocks is not None:
        mask = torch.zeros_like(fisher, dtype=torch.bool)
        for block in blocks:
            mask[block, block] = True
        fisher = torch.where(mask, fisher, torch.zeros_like(fisher))
    inverse = torch.linalg.inv(fisher + damping * torch.eye(fisher.shape[0], dtype=fisher.dtype))
    scores = test_grads @ inverse @ train_grads.T
    self_influence = ((train_grads @ inverse) * train_grads).sum(1)
    return scores, self_influence


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


@pytest.mark.parametrize("n_train", [40, 150], ids=["low-rank-n<k", "cholesky-n>k"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_identity_full_curvature_equals_explicit_influence(kind: str, n_train: int) -> None:
    model = make_mlp(0) if kind == "mlp" else make_cnn(0)
    train, test = make_data(kind, n_train, 1), make_data(kind, 7, 2)
    expected_scores, expected_self = explicit_influence(
        loop_gradients(model, train), loop_gradients(model, test)
    )
    engine = InfluenceEngine(
        model, cross_entropy_per_sample, EXACT, CurvatureConfig(kind="full"), dtype=torch.float64
    ).fit(train, batch_size=16)
    assert relative_error(engine.pairwise_scores(test), expected_scores) <= 1e-6
    assert relative_error(engine.self_influence().double(), expected_self) <= 1e-6


def test_block_curvature_equals_explicit_block_diagonal_influence() -> None:
    model = make_mlp(3)
    train, test = make_data("mlp", 30, 4), make_data("mlp", 5, 5)
    sizes = [p.numel() for p in model.parameters()]  # weight, bias per layer, then LayerNorm
    bounds = np.cumsum([0, *sizes])
    layer_blocks = [
        slice(bounds[0], bounds[2]),
        slice(bounds[4], bounds[6]),
        slice(bounds[2], bounds[3]),
        slice(bounds[3], bounds[4]),
    ]
    expected, _ = explicit_influence(
        loop_gradients(model, train), loop_gradients(model, test), layer_blocks
    )
    engine = InfluenceEngine(
        model, cross_entropy_per_sample, EXACT, CurvatureConfig(kind="block"), dtype=torch.float64
    ).fit(train)
    assert relative_error(engine.pairwise_scores(test), expected) <= 1e-6


def test_identity_curvature_is_gradient_similarity() -> None:
    model = make_cnn(1)
    train, test = make_data("cnn", 20, 6), make_data("cnn", 4, 7)
    expected = loop_gradients(model, test) @ loop_gradients(model, train).T
    engine = InfluenceEngine(
        model,
        cross_entropy_per_sample,
        EXACT,
        CurvatureConfig(kind="identity"),
        dtype=torch.float64,
    ).fit(train)
    assert relative_error(engine.pairwise_scores(test), expected) <= 1e-10


def kept_coordinates(model: nn.Module, engine: InfluenceEngine, full: torch.Tensor) -> torch.Tensor:
    """The coordinates of full flat gradients (loop order) that the dropout masks keep."""
    offsets, start = {}, 0
    for name, parameter in model.named_parameters():
        offsets[name] = (start, parameter.shape)
        start += parameter.numel()
    columns = []
    layout = engine.layout
    for compressor, spec in zip(engine.capture.compressors, layout.specs, strict=True):
        kept_in = every_unit(compressor.input_index, spec.in_units)
        if spec.is_factored:
            weight_start, shape = offsets[f"{spec.name}.weight"]
            kept_out = every_unit(compressor.output_index, spec.out_units)
            index = torch.arange(shape.numel()).reshape(shape[0], spec.in_units, spec.patch)
            columns.append(weight_start + index[kept_out][:, kept_in].flatten())
            if spec.has_bias:
                columns.append(offsets[f"{spec.name}.bias"][0] + kept_out)
        else:
            columns.append(offsets[spec.name][0] + kept_in)
    return full[:, torch.cat(columns)]


def every_unit(index: torch.Tensor | None, units: int) -> torch.Tensor:
    """A compressor's kept units; None (identity) keeps all."""
    return torch.arange(units) if index is None else index


def stored_and_loop(
    model: nn.Module, train: TensorDataset, config: CompressionConfig
) -> tuple[InfluenceEngine, torch.Tensor, torch.Tensor]:
    """A float64 fit of ``model``: the engine, its stored gradients, the loop's kept coordinates."""
    engine = InfluenceEngine(model, cross_entropy_per_sample, config, dtype=torch.float64)
    engine.fit(train, batch_size=10)
    stored = torch.from_numpy(np.array(engine.store.gradients()))
    return engine, stored, kept_coordinates(model, engine, loop_gradients(model, train))


@pytest.mark.parametrize("mask", ["uniform", "energy"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_batched_dropout_gradients_equal_loop_coordinates(kind: str, mask: str) -> None:
    model = make_mlp(2) if kind == "mlp" else make_cnn(2)
    train = make_data(kind, 24, 8)
    config = CompressionConfig(keep_ratio=0.5, mask=mask, seed=3)
    _engine, stored, expected = stored_and_loop(model, train, config)
    assert stored.shape == expected.shape
    assert torch.allclose(stored, expected, rtol=1e-12, atol=1e-14)


def test_same_seed_gives_bitwise_same_scores_and_other_seed_differs() -> None:
    train, test = make_data("cnn", 30, 9), make_data("cnn", 5, 10)
    model = make_cnn(4).float()
    train32 = TensorDataset(train.tensors[0].float(), train.tensors[1])
    test32 = TensorDataset(test.tensors[0].float(), test.tensors[1])

    def scores(seed: int) -> torch.Tensor:
        config = CompressionConfig(keep_ratio=0.5, mask="uniform", seed=seed)
        return (
            InfluenceEngine(model, cross_entropy_per_sample, config)
            .fit(train32)
            .pairwise_scores(test32)
        )

    assert torch.equal(scores(0), scores(0))
    assert not torch.equal(scores(0), scores(1))


def test_load_and_query_match_pairwise_scores(tmp_path) -> None:
    model = make_mlp(5).float()
    data = make_data("mlp", 40, 11)
    train = TensorDataset(data.tensors[0].float(), data.tensors[1])
    engine = InfluenceEngine(model, cross_entropy_per_sample, run_dir=tmp_path / "run").fit(train)
    expected = engine.pairwise_scores(train)
    reopened = InfluenceEngine.load(tmp_path / "run", model, cross_entropy_per_sample)
    assert torch.equal(reopened.query(train.tensors), expected)
    assert torch.equal(reopened.self_influence(), engine.self_influence())
    assert reopened.store.train_metadata()["label"].tolist() == train.tensors[1].tolist()


def test_load_refuses_other_weights_and_incomplete_runs(tmp_path) -> None:
    model = make_mlp(6)
    InfluenceEngine(
        model, cross_entropy_per_sample, run_dir=tmp_path / "run", dtype=torch.float64
    ).fit(make_data("mlp", 20, 12))
    with pytest.raises(RunConfigMismatchError, match="weights differ"):
        InfluenceEngine.load(tmp_path / "run", make_mlp(7), cross_entropy_per_sample)
    engine = InfluenceEngine(make_mlp(6), cross_entropy_per_sample, dtype=torch.float64)
    with pytest.raises(IncompleteRunError):
        engine.pairwise_scores(make_data("mlp", 3, 13))


def test_mismatched_run_directory_is_refused_unless_overwrite(tmp_path) -> None:
    model, train = make_mlp(8), make_data("mlp", 20, 14)
    run = tmp_path / "run"
    common = {"run_dir": run, "dtype": torch.float64}
    InfluenceEngine(
        model, cross_entropy_per_sample, CompressionConfig(keep_ratio=0.5), **common
    ).fit(train)
    other = CompressionConfig(keep_ratio=0.25)
    with pytest.raises(RunConfigMismatchError, match="compression"):
        InfluenceEngine(model, cross_entropy_per_sample, other, **common).fit(train)
    engine = InfluenceEngine(model, cross_entropy_per_sample, other, overwrite=True, **common)
    engine.fit(train)
    assert engine.store.read_manifest()["compression"]["keep_ratio"] == 0.25


@pytest.mark.parametrize("keep_ratio", [0.0, -0.1, 1.5, float("nan")])
def test_keep_ratio_outside_unit_interval_is_refused(keep_ratio: float) -> None:
    with pytest.raises(ConfigError, match="keep_ratio must be a number in"):
        CompressionConfig(keep_ratio=keep_ratio)


def test_unknown_method_and_curvature_are_refused() -> None:
    with pytest.raises(ConfigError, match="method must be one of"):
        CompressionConfig(method="pca")
    with pytest.raises(ConfigError, match="curvature kind must be one of"):
        CurvatureConfig(kind="eigen")
    with pytest.raises(ConfigError, match="damping must be a positive"):
        CurvatureConfig(damping=-1.0)


def test_model_without_capturable_layer_is_refused() -> None:
    model = nn.Sequential(nn.Flatten(), nn.LayerNorm(6))
    with pytest.raises(NoCapturableLayerError, match=r"nn\.Linear or nn\.Conv2d"):
        InfluenceEngine(model, cross_entropy_per_sample)


def test_nan_inputs_are_refused_with_positions() -> None:
    data = make_data("mlp", 10, 15)
    data.tensors[0][3, 0] = float("nan")
    engine = InfluenceEngine(make_mlp(9), cross_entropy_per_sample, dtype=torch.float64)
    with pytest.raises(NonFiniteError, match=r"positions \[3\]"):
        engine.fit(data, batch_size=10)
    assert engine.store.status == "failed"


def test_discover_layers_orders_factored_then_flat() -> None:
    layout = discover_layers(make_mlp(0))
    assert [spec.kind for spec in layout.specs] == ["linear", "linear", "flat", "flat"]
    assert [spec.name for spec in layout.specs][2:] == ["2.weight", "2.bias"]


@pytest.mark.parametrize("method", ["dropout", "factorized_gaussian", "gaussian", "sjlt"])
def test_every_compressor_stores_the_same_k(method: str) -> None:
    config = CompressionConfig(method=method, keep_ratio=0.5, mask="uniform")
    engine = InfluenceEngine(make_cnn(3), cross_entropy_per_sample, config, dtype=torch.float64)
    engine.fit(make_data("cnn", 12, 16))
    manifest = engine.store.read_manifest()
    # kept (out × in·patch + bias) per layer: round() rounds half to even, and keeps at least 1
    assert manifest["k"] == (2 * 1 * 9 + 2) + (1 * 2 * 9 + 1) + (2 * 4 + 2)
    assert np.isfinite(engine.self_influence().numpy()).all()


KILLED_FIT = textwrap.dedent(
    """
    import sys, time, torch
    from torch.utils.data import Dataset
    from tests.engine.test_engine import make_data, make_cnn, RUN_KWARGS
    from dropinf.engine import InfluenceEngine
    from dropinf.core import cross_entropy_per_sample

    class Slow(Dataset):
        def __init__(self, data): self.data = data
        def __len__(self): return len(self.data)
        def __getitem__(self, i):
            time.sleep(0.01)
            return self.data[i]

    engine = InfluenceEngine(make_cnn(5), cross_entropy_per_sample, run_dir=sys.argv[1],
                             **RUN_KWARGS)
    engine.fit(Slow(make_data("cnn", 300, 17)), batch_size=16)
    """
)
RUN_KWARGS = {
    "dtype": torch.float64,
    "shard_rows": 48,
    "compression": CompressionConfig(keep_ratio=0.5, mask="energy"),
}


@pytest.mark.slow
def test_killed_fit_resumes_to_the_same_scores(tmp_path) -> None:
    run = tmp_path / "killed"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_FIT, str(run)],
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    shards = run / "gradients"
    deadline = time.monotonic() + 120
    while len(list(shards.glob("shard-*.npy"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    interrupted = InfluenceEngine(make_cnn(5), cross_entropy_per_sample, run_dir=run, **RUN_KWARGS)
    assert interrupted.store.status == "running"
    rows_before = interrupted.store.read_manifest()["rows_done"]
    assert 48 <= rows_before < 300  # a kill may land between a shard and its manifest entry
    train, test = make_data("cnn", 300, 17), make_data("cnn", 6, 18)
    resumed = interrupted.fit(train, batch_size=16).pairwise_scores(test)
    fresh = InfluenceEngine(
        make_cnn(5), cross_entropy_per_sample, run_dir=tmp_path / "fresh", **RUN_KWARGS
    ).fit(train, batch_size=16)
    assert torch.equal(resumed, fresh.pairwise_scores(test))
    assert np.array_equal(interrupted.store.self_influence(), fresh.store.self_influence())


def test_float16_overflow_is_refused_with_advice() -> None:
    data = make_data("mlp", 8, 19)
    scaled = TensorDataset(data.tensors[0].float() * 1e6, data.tensors[1])
    engine = InfluenceEngine(nn.Linear(6, 3), cross_entropy_per_sample)  # gradient ∝ inputs
    with pytest.raises(NonFiniteError, match=r"store_dtype=torch\.float32"):
        engine.fit(scaled)


def test_phase_timings_are_recorded() -> None:
    engine = InfluenceEngine(make_mlp(11), cross_entropy_per_sample, dtype=torch.float64)
    timings = engine.fit(make_data("mlp", 12, 20)).store.read_manifest()["timings"]
    assert set(timings) == {"calibration", "gradients", "curvature", "self_influence"}
    assert all(seconds >= 0 for seconds in timings.values())


def test_energy_split_keeps_the_block_with_most_energy() -> None:
    from dropinf.core import UnitEnergy, energy_split

    flat_outputs = UnitEnergy(inputs=torch.ones(8), outputs=torch.ones(8))
    assert energy_split(flat_outputs, budget=16) in {(2, 8), (4, 4), (8, 2)}
    one_hot_output = UnitEnergy(inputs=torch.ones(8), outputs=torch.tensor([9.0] + [0.0] * 7))
    assert energy_split(one_hot_output, budget=16) == (1, 8)
    concentrated_inputs = UnitEnergy(
        inputs=torch.tensor([5.0, 5.0] + [0.0] * 6), outputs=torch.ones(8)
    )
    assert energy_split(concentrated_inputs, budget=16) == (8, 2)


def test_low_rank_and_cholesky_blocks_agree() -> None:
    from dropinf.core import BlockStatistics, cholesky_block, low_rank_block

    generator = torch.Generator().manual_seed(21)
    rows = torch.randn(12, 30, generator=generator, dtype=torch.float64)  # N=12 < k=30
    probe = torch.randn(4, 30, generator=generator, dtype=torch.float64)
    dense = cholesky_block(BlockStatistics(0, 30, False, rows.T @ rows), 12, damping=0.3)
    low_rank = low_rank_block(BlockStatistics(0, 30, True, rows=[rows[:5], rows[5:]]), 0.3)
    assert low_rank.basis.shape == (30, 12)
    assert torch.allclose(low_rank.precondition(probe), dense.precondition(probe), atol=1e-10)
    inner = low_rank.whiten(probe) @ low_rank.whiten(probe).T
    assert torch.allclose(inner, dense.whiten(probe) @ dense.whiten(probe).T, atol=1e-10)
    whitened_rows = dense.whiten(rows).pow(2).sum(1)
    assert torch.allclose(low_rank.training_self_influence, whitened_rows, rtol=1e-10)


def test_training_self_influence_reads_low_rank_blocks_off_their_factorisation() -> None:
    from dropinf.core import CurvatureConfig, LowRankBlock, fit_curvature

    generator = torch.Generator().manual_seed(5)
    rows = torch.randn(10, 40, generator=generator, dtype=torch.float64)
    rows[:, 28:] = rows[:, 28:29]  # a rank-one layer: most eigenvalues are floored
    shards = [rows[:6].numpy(), rows[6:].numpy()]
    config = CurvatureConfig(kind="block", damping=0.2)
    fitted = fit_curvature(shards, [4, 24, 12], 10, config, torch.device("cpu"))
    assert [type(b).__name__ for b in fitted.blocks] == ["CholeskyBlock", *["LowRankBlock"] * 2]
    chunks = [(0, rows[:6]), (6, rows[6:])]
    expected = fitted.whiten(rows).pow(2).sum(1)
    assert torch.allclose(fitted.training_self_influence(chunks), expected, rtol=1e-9)
    without = [LowRankBlock(b.start, b.stop, b.basis, b.eigenvalues, b.damping)
               if isinstance(b, LowRankBlock) else b for b in fitted.blocks]  # fmt: skip
    fitted.blocks = without  # as reloaded from disk: every block whitens the rows
    assert torch.allclose(fitted.training_self_influence(chunks), expected, rtol=1e-9)


def test_model_fingerprint_covers_every_buffer_of_a_batchnorm_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3)
    ).double()
    before = model_fingerprint(model)  # num_batches_tracked is a 0-dim int64 buffer
    model[1].num_batches_tracked += 1
    assert model_fingerprint(model) != before
    engine = InfluenceEngine(model, cross_entropy_per_sample, dtype=torch.float64)
    assert np.isfinite(engine.fit(make_data("cnn", 12, 21)).self_influence().numpy()).all()


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True, "8"])
def test_fit_refuses_a_bad_batch_size_by_name(batch_size) -> None:
    engine = InfluenceEngine(make_mlp(12), cross_entropy_per_sample, dtype=torch.float64)
    with pytest.raises(ConfigError, match=f"expected a positive integer, found {batch_size!r}"):
        engine.fit(make_data("mlp", 8, 22), batch_size=batch_size)


def test_fit_refuses_an_empty_training_set() -> None:
    engine = InfluenceEngine(make_mlp(12), cross_entropy_per_sample, dtype=torch.float64)
    with pytest.raises(DatasetError, match="found 0"):
        engine.fit(make_data("mlp", 0, 22))


@pytest.mark.parametrize("device", ["bogus", "cuda:x"])
def test_unknown_device_is_refused_by_name(device: str) -> None:
    with pytest.raises(ConfigError, match=repr(device)):
        resolve_device(device)


def mapped_shards(run_dir) -> list[str]:
    """The run's gradient shards this process has mapped into its memory (Linux)."""
    lines = Path("/proc/self/maps").read_text().splitlines()
    return [line for line in lines if str(run_dir) in line and "shard-" in line]


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_no_shard_stays_mapped_after_a_fit_or_a_query(tmp_path) -> None:
    """Mapped shard pages count in the process's RSS: a pass unmaps each shard it has read."""
    data = make_data("mlp", 40, seed=0)
    engine = InfluenceEngine(
        make_mlp(0), cross_entropy_per_sample, run_dir=tmp_path / "run", shard_rows=8
    )
    engine.fit(data, batch_size=8)
    assert len(list((tmp_path / "run" / "gradients").glob("shard-*.npy"))) == 5
    assert mapped_shards(tmp_path / "run") == []
    engine.query(data.tensors)
    assert mapped_shards(tmp_path / "run") == []


def refuse_shard_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every later ``np.load`` (how shards are opened) fail."""

    def no_read(*_args, **_kwargs):
        raise AssertionError("a shard was read")

    monkeypatch.setattr(np, "load", no_read)


@pytest.mark.parametrize("room", [10**9, 1])
def test_stored_gradients_stay_resident_only_where_they_fit(
    tmp_path, monkeypatch: pytest.MonkeyPatch, room: int
) -> None:
    """With room for the store, the queries after the first read no shard; without, they do."""
    data = make_data("mlp", 40, seed=0)
    engine = InfluenceEngine(
        make_mlp(0), cross_entropy_per_sample, run_dir=tmp_path / "run", shard_rows=8
    )
    engine.reader.resident_bytes = room
    first = engine.fit(data, batch_size=8).query(data.tensors)
    refuse_shard_reads(monkeypatch)
    if room == 1:
        with pytest.raises(AssertionError, match="a shard was read"):
            engine.query(data.tensors)
        return
    torch.testing.assert_close(engine.query(data.tensors), first)
    engine.reader.reset()  # a refit publishes new shards: they are read again
    with pytest.raises(AssertionError, match="a shard was read"):
        engine.query(data.tensors)


def test_the_cpu_keeps_no_resident_copy_by_default(tmp_path) -> None:
    """On the CPU the page cache holds the shards: a resident copy would only double them."""
    engine = InfluenceEngine(make_mlp(0), cross_entropy_per_sample, run_dir=tmp_path / "run")
    assert engine.reader.room(torch.device("cpu")) == 0


NORM_MODELS = ("batchnorm-mlp", "batchnorm-cnn", "layernorm-tokens", "groupnorm-cnn")


def make_norm_model(kind: str, seed: int) -> nn.Module:
    """A model whose norms' x̂ depends on the sample alone, with non-trivial γ, β and statistics.

    The MLPs take (B, 6) inputs, the CNNs (B, 1, 5, 5); the tokens model reads its input as 2
    tokens of 3 features (LayerNorm per token and over both, RMSNorm per token).
    """
    torch.manual_seed(seed)
    layers = {
        "batchnorm-mlp": [nn.Flatten(), nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Tanh(),
                          nn.Linear(5, 3)],
        "batchnorm-cnn": [nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(inplace=True),
                          nn.Conv2d(3, 2, 3, stride=2), nn.BatchNorm2d(2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8, 3)],
        "layernorm-tokens": [nn.Unflatten(1, (2, 3)), nn.Linear(3, 4), nn.LayerNorm(4),
                             nn.Tanh(), nn.LayerNorm([2, 4]), nn.Linear(4, 4), nn.RMSNorm(4),
                             nn.Flatten(), nn.Linear(8, 3)],
        "groupnorm-cnn": [nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(inplace=True),
                          nn.Conv2d(4, 2, 3, stride=2), nn.GroupNorm(1, 2), nn.Tanh(),
                          nn.Flatten(), nn.Linear(8, 3)],
    }[kind]  # fmt: skip
    model = nn.Sequential(*layers)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.LayerNorm | nn.RMSNorm
                      | nn.GroupNorm):  # fmt: skip
            nn.init.uniform_(module.weight, 0.5, 1.5)
            if getattr(module, "bias", None) is not None:
                nn.init.uniform_(module.bias, -0.5, 0.5)
    return model.double().eval()


@pytest.mark.parametrize("kind", NORM_MODELS)
def test_norm_gradients_come_from_hooks_and_equal_the_loop(kind: str, monkeypatch) -> None:
    """γ / β of per-sample norms: exact per-sample gradients without a vmap pass."""
    import dropinf.core.capture as capture

    def no_vmap(*_args, **_kwargs):
        raise AssertionError("a vmap pass ran for norm parameters")

    monkeypatch.setattr(capture, "flat_per_sample_grads", no_vmap)
    model = make_norm_model(kind, 4)
    train = make_data("cnn" if kind.endswith("cnn") else "mlp", 24, 9)
    config = CompressionConfig(keep_ratio=0.5, mask="uniform", seed=1)
    engine, stored, expected = stored_and_loop(model, train, config)
    assert any(not spec.is_factored for spec in engine.layout.specs)
    assert torch.allclose(stored, expected, rtol=1e-12, atol=1e-14)


def test_flat_fallback_gradients_equal_the_loop(monkeypatch) -> None:
    """Parameters no hook covers (here a PReLU's slope) get exact per-sample gradients from vmap."""
    import dropinf.core.capture as capture

    passes = []
    vmap_pass = capture.flat_per_sample_grads
    monkeypatch.setattr(
        capture, "flat_per_sample_grads", lambda *args: passes.append(1) or vmap_pass(*args)
    )
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 5), nn.PReLU(5), nn.Linear(5, 3)).double()
    train = make_data("mlp", 24, 9)
    config = CompressionConfig(keep_ratio=0.5, mask="uniform", seed=1)
    engine, stored, expected = stored_and_loop(model, train, config)
    assert passes and [spec.kind for spec in engine.layout.specs] == ["linear", "linear", "flat"]
    assert torch.allclose(stored, expected, rtol=1e-12, atol=1e-14)


def make_conv1d_model(seed: int) -> nn.Module:
    """Conv1d layers with stride, padding, dilation and a shared (called twice) layer."""
    torch.manual_seed(seed)

    class Signals(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Conv1d(2, 4, 3, padding=1)
            self.second = nn.Conv1d(4, 3, 3, stride=2, padding=2, dilation=2)
            self.again = nn.Conv1d(3, 3, 1, bias=False)
            self.head = nn.Linear(3, 3)

        def forward(self, signals: torch.Tensor) -> torch.Tensor:
            hidden = torch.tanh(self.second(torch.tanh(self.first(signals.view(-1, 2, 3)))))
            return self.head(self.again(torch.tanh(self.again(hidden))).mean(2))

    return Signals().double()


@pytest.mark.parametrize("method", ["dropout", "identity"])
def test_conv1d_layers_are_factored_and_equal_the_loop(method: str) -> None:
    """A Conv1d is captured like the 1×k Conv2d it equals: exact kept per-sample gradients."""
    model = make_conv1d_model(6)
    train = make_data("mlp", 24, 9)  # (B, 6) read as 2 channels of length 3
    config = CompressionConfig(method=method, keep_ratio=0.5, mask="uniform", seed=1)
    engine, stored, expected = stored_and_loop(model, train, config)
    assert [spec.kind for spec in engine.layout.specs] == ["conv1d"] * 3 + ["linear"]
    assert torch.allclose(stored, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("curvature", ["kfac", "ekfac", "full"])
def test_a_conv1d_scores_like_the_equal_1xk_conv2d(curvature: str) -> None:
    """Scores, K-FAC factors included, of a Conv1d model equal its Conv2d (1×k) twin's."""
    torch.manual_seed(7)
    conv1d = nn.Conv1d(2, 4, 3, padding=1, stride=2).double()
    conv2d = nn.Conv2d(2, 4, (1, 3), padding=(0, 1), stride=(1, 2)).double()
    head = nn.Linear(8, 3).double()
    with torch.no_grad():
        conv2d.weight.copy_(conv1d.weight.unsqueeze(2))
        conv2d.bias.copy_(conv1d.bias)
    twins = [
        nn.Sequential(nn.Unflatten(1, (2, 3)), conv1d, nn.Tanh(), nn.Flatten(), head),
        nn.Sequential(nn.Unflatten(1, (2, 1, 3)), conv2d, nn.Tanh(), nn.Flatten(),
                      copy.deepcopy(head)),
    ]  # fmt: skip
    train, test = make_data("mlp", 30, 10), make_data("mlp", 5, 11)
    config = CompressionConfig(keep_ratio=0.5, mask="uniform", seed=1)
    scores = [
        InfluenceEngine(model, cross_entropy_per_sample, config, CurvatureConfig(kind=curvature),
                        dtype=torch.float64).fit(train, batch_size=8).pairwise_scores(test)
        for model in twins
    ]  # fmt: skip
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-10, atol=1e-12)


def test_a_run_whose_layers_were_captured_otherwise_is_refused(tmp_path) -> None:
    """A run from a dropinf that captured a Conv1d as flat parameters is never mixed with new
    gradients: fit and load refuse it by name; overwrite recomputes it."""
    model, data = make_conv1d_model(6), make_data("mlp", 12, 9)

    def engine(**options) -> InfluenceEngine:
        return InfluenceEngine(model, cross_entropy_per_sample, dtype=torch.float64,
                               run_dir=tmp_path / "run", **options)  # fmt: skip

    engine().fit(data, batch_size=6)
    store = RunStore(tmp_path / "run")
    manifest = store.read_manifest()
    manifest["layers"][0] = {**manifest["layers"][0], "name": "first.weight", "kind": "flat"}
    store.write_manifest(manifest)
    message = r"captured differently \(expected layer first as conv1d, found first.weight as flat"
    with pytest.raises(RunConfigMismatchError, match=message):
        engine().fit(data, batch_size=6)
    with pytest.raises(RunConfigMismatchError, match=message):
        InfluenceEngine.load(tmp_path / "run", model, cross_entropy_per_sample)
    refit = engine(overwrite=True).fit(data, batch_size=6)
    assert refit.store.read_manifest()["layers"][0]["kind"] == "conv1d"
