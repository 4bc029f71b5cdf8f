"""K-FAC and EK-FAC in the kept coordinates against explicitly built matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional

from dropinf.core import (
    CompressionConfig,
    Curvature,
    CurvatureConfig,
    GradientCapture,
    KroneckerStats,
    build_compressor,
    cross_entropy_per_sample,
    discover_layers,
    fit_curvature,
)
from dropinf.errors import ConfigError
from dropinf.metrics import rowwise_pearson

# Mean Pearson per test row of EK-FAC vs exact full-Fisher influence on the tiny MLP below;
# measured 0.940 / 0.929 / 0.955 over seeds 0-2.
EKFAC_MIN_PEARSON = 0.92


def capture_run(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, config: CompressionConfig
) -> tuple[GradientCapture, torch.Tensor, KroneckerStats]:
    """Compressed gradients (N, k) of a dataset and their K-FAC statistics, in one batch."""
    layout = discover_layers(model)
    compressors = [build_compressor(spec, config, i) for i, spec in enumerate(layout.specs)]
    capture = GradientCapture(model, layout, compressors)
    stats = capture.kronecker_stats()
    gradients = capture.capture(cross_entropy_per_sample, [inputs, labels], kronecker=stats)
    return capture, gradients.gradients.detach(), stats


def random_data(n: int, shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn((n, *shape), generator=generator, dtype=torch.float64)
    return inputs, torch.randint(0, 3, (n,), generator=generator)


def stored_to_row_major(outputs: int, inputs: int) -> torch.Tensor:
    """Index i of the row-major vec of ``[W | b]`` (outputs × (inputs+1)) in the stored row."""
    order = torch.empty(outputs, inputs + 1, dtype=torch.long)
    order[:, :inputs] = torch.arange(outputs * inputs).reshape(outputs, inputs)
    order[:, inputs] = outputs * inputs + torch.arange(outputs)
    return order.flatten()


@pytest.fixture
def linear_run() -> tuple[torch.Tensor, KroneckerStats, torch.Tensor, torch.Tensor]:
    """One Linear(4→3) with bias, one position per example, identity compression, float64."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    inputs, labels = random_data(40, (4,), seed=1)
    _, gradients, stats = capture_run(model, inputs, labels, CompressionConfig(method="identity"))
    augmented = torch.cat([inputs, torch.ones(40, 1, dtype=torch.float64)], dim=1)  # (N, 5)
    deltas = functional.softmax(model(inputs), dim=1) - functional.one_hot(labels, 3)  # (N, 3)
    return gradients, stats, augmented, deltas.detach()


def test_kfac_on_one_linear_layer_equals_the_explicit_kronecker_inverse(linear_run) -> None:
    gradients, stats, augmented, deltas = linear_run
    n = gradients.shape[0]
    activations, output_grads = augmented.T @ augmented / n, deltas.T @ deltas / n
    kronecker = torch.kron(output_grads, activations)  # row-major vec of the 3×5 matrix [W | b]
    damping = 0.1 * float(torch.linalg.eigvalsh(kronecker).mean())
    explicit = torch.linalg.inv(kronecker + damping * torch.eye(15, dtype=torch.float64))
    order = stored_to_row_major(3, 4)
    test = torch.randn(6, 15, dtype=torch.float64)
    expected = torch.empty_like(test)
    expected[:, order] = test[:, order] @ explicit

    curvature = fit_curvature(
        [gradients.numpy()],
        [15],
        n,
        CurvatureConfig(kind="kfac"),
        torch.device("cpu"),
        kronecker=stats,
    )

    assert curvature.blocks[0].damping == pytest.approx(damping, rel=1e-10)
    torch.testing.assert_close(curvature.precondition(test), expected, rtol=1e-9, atol=1e-12)
    whitened = curvature.whiten(test)
    torch.testing.assert_close(whitened @ whitened.T, test @ curvature.precondition(test).T)


def test_ekfac_eigenvalues_are_the_fisher_diagonal_in_the_kronecker_eigenbasis(
    linear_run,
) -> None:
    gradients, stats, _, _ = linear_run
    n = gradients.shape[0]
    curvature = fit_curvature(
        [gradients.numpy()],
        [15],
        n,
        CurvatureConfig(kind="ekfac"),
        torch.device("cpu"),
        kronecker=stats,
    )
    block = curvature.blocks[0]
    rotation = torch.kron(block.output_basis, block.input_basis)  # row-major coordinates
    row_major = gradients[:, stored_to_row_major(3, 4)]
    fisher = row_major.T @ row_major / n
    exact_diagonal = (rotation.T @ fisher @ rotation).diagonal()
    torch.testing.assert_close(block.eigenvalues.flatten(), exact_diagonal)


def conv_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 3 * 3, 3)
    ).double()


def test_accumulated_halves_sum_to_the_whole_batch() -> None:
    model, config = conv_model(0), CompressionConfig(keep_ratio=0.5, mask="uniform")
    inputs, labels = random_data(12, (4, 5, 5), seed=2)
    _, _, whole = capture_run(model, inputs, labels, config)
    _, _, first = capture_run(model, inputs[:5], labels[:5], config)
    _, _, second = capture_run(model, inputs[5:], labels[5:], config)

    merged = first + second
    keywise = {name: v + second.state()[name] for name, v in first.state().items()}
    for summed in (merged.state(), KroneckerStats.from_state(keywise).state()):
        assert summed.keys() == whole.state().keys()
        for name, value in whole.state().items():
            torch.testing.assert_close(summed[name], value, msg=name)
    assert KroneckerStats.from_state(keywise).bias == whole.bias == (True, True)


def test_merging_statistics_of_other_layers_is_refused() -> None:
    config = CompressionConfig(keep_ratio=0.5, mask="uniform")
    inputs, labels = random_data(4, (4, 5, 5), seed=2)
    _, _, conv = capture_run(conv_model(0), inputs, labels, config)
    _, _, linear = capture_run(nn.Linear(4, 3).double(), *random_data(4, (4,), 3), config)
    with pytest.raises(ConfigError, match="same layers"):
        conv.merge(linear)


def test_conv_factors_equal_an_unfold_reference() -> None:
    model, config = conv_model(1), CompressionConfig(keep_ratio=0.5, mask="uniform", seed=3)
    inputs, labels = random_data(7, (4, 5, 5), seed=4)
    capture, gradients, stats = capture_run(model, inputs, labels, config)
    conv, compressor = model[0], capture.compressors[0]
    kept_in, kept_out = compressor.input_index, compressor.output_index
    outputs = []
    hook = conv.register_forward_hook(lambda _m, _a, out: outputs.append(out))
    losses = cross_entropy_per_sample(model, [inputs, labels])
    hook.remove()
    (delta,) = torch.autograd.grad(losses.sum(), outputs)
    patches = functional.unfold(inputs[:, kept_in], 3, padding=1, stride=2)  # (B, C·9, L)
    ones = torch.ones(7, 1, patches.shape[2], dtype=torch.float64)
    a = torch.cat([patches, ones], dim=1).transpose(1, 2).reshape(-1, len(kept_in) * 9 + 1)
    d = delta[:, kept_out].flatten(2).transpose(1, 2).reshape(-1, len(kept_out))  # (B·L, k_out)

    activations, output_grads = stats.factors(0)
    torch.testing.assert_close(activations, a.T @ a / a.shape[0])
    torch.testing.assert_close(output_grads, d.T @ d / 7)
    per_example = torch.einsum(
        "blo,blc->boc", d.reshape(7, -1, len(kept_out)), a.reshape(7, -1, a.shape[1])
    )
    block = curvature_block_of(stats, gradients)
    torch.testing.assert_close(block.matrices(gradients[:, : block.stop]), per_example)


def curvature_block_of(stats: KroneckerStats, gradients: torch.Tensor):
    dims = [stats.gradients[0].shape[0] * stats.activations[0].shape[0]]
    dims.append(gradients.shape[1] - dims[0])
    curvature = fit_curvature(
        [gradients.numpy()],
        dims,
        gradients.shape[0],
        CurvatureConfig(kind="kfac"),
        torch.device("cpu"),
        kronecker=stats,
    )
    return curvature.blocks[0]


def tiny_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def ekfac_pearson(seed: int) -> float:
    model = tiny_mlp(seed)
    inputs, labels = random_data(300, (6,), seed)
    test_inputs, test_labels = random_data(20, (6,), seed + 100)
    config = CompressionConfig(method="identity")
    capture, train, stats = capture_run(model, inputs, labels, config)
    test = capture.capture(cross_entropy_per_sample, [test_inputs, test_labels]).gradients
    n = train.shape[0]
    fisher = train.T @ train / n
    damping = 0.1 * float(fisher.diagonal().mean())
    exact = test @ torch.linalg.solve(fisher + damping * torch.eye(len(fisher)), train.T)
    dims = [capture.compressors[0].k, capture.compressors[1].k]
    curvature = fit_curvature(
        [train.numpy()],
        dims,
        n,
        CurvatureConfig(kind="ekfac"),
        torch.device("cpu"),
        kronecker=stats,
    )
    approximate = curvature.precondition(test.detach()) @ train.T
    return float(rowwise_pearson(approximate.numpy(), exact.detach().numpy()).mean())


def test_ekfac_tracks_exact_influence() -> None:
    pearsons = [ekfac_pearson(seed) for seed in range(3)]
    assert min(pearsons) > EKFAC_MIN_PEARSON, pearsons


def test_saved_kronecker_curvature_scores_like_the_fitted_one() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(  # the LayerNorm is flat: a diagonal block
        nn.Conv2d(4, 6, 3, padding=1), nn.Flatten(), nn.LayerNorm(150), nn.Linear(150, 3)
    ).double()
    inputs, labels = random_data(30, (4, 5, 5), seed=5)
    config = CompressionConfig(keep_ratio=0.5, mask="uniform")
    capture, gradients, stats = capture_run(model, inputs, labels, config)
    dims = [c.k for c in capture.compressors]
    for kind in ("kfac", "ekfac"):
        fitted = fit_curvature(
            [gradients.numpy()],
            dims,
            30,
            CurvatureConfig(kind=kind),
            torch.device("cpu"),
            kronecker=stats,
        )
        assert [type(b).__name__ for b in fitted.blocks] == [
            "KroneckerBlock",
            "KroneckerBlock",
            "DiagonalBlock",
            "DiagonalBlock",
        ]
        loaded = Curvature.from_state(kind, fitted.damping, fitted.state(torch.float64))
        torch.testing.assert_close(loaded.precondition(gradients), fitted.precondition(gradients))
        chunks = [(0, gradients[:10]), (10, gradients[10:])]
        self_influence = loaded.training_self_influence(chunks)
        expected = (fitted.precondition(gradients) * gradients).sum(1)
        torch.testing.assert_close(self_influence, expected)


def test_kronecker_kinds_need_the_statistics() -> None:
    with pytest.raises(ConfigError, match="K-FAC statistics"):
        fit_curvature(
            [np.zeros((3, 4))], [4], 3, CurvatureConfig(kind="ekfac"), torch.device("cpu")
        )


def test_projection_compressors_have_no_kronecker_statistics() -> None:
    model = tiny_mlp(0)
    layout = discover_layers(model)
    config = CompressionConfig(method="gaussian")
    compressors = [build_compressor(spec, config, i) for i, spec in enumerate(layout.specs)]
    with pytest.raises(ConfigError, match="masked"):
        GradientCapture(model, layout, compressors).kronecker_stats()


@pytest.mark.parametrize(
    ("conv_arguments", "position_step"),
    [
        ({"stride": 1, "padding": 1}, 1),
        ({"stride": 1, "padding": (2, 0), "kernel_size": (3, 2)}, 1),
        ({"stride": 1, "padding": 2, "dilation": 2}, 1),
        ({"stride": 1, "padding": 1}, 2),
        ({"stride": 2, "padding": 1}, 3),
        ({"stride": 1, "padding": 2, "dilation": 2}, 2),
    ],
)
def test_conv_input_factor_equals_unfold_on_the_position_sub_grid(
    conv_arguments: dict, position_step: int
) -> None:
    torch.manual_seed(6)
    arguments = {"kernel_size": 3, **conv_arguments}
    conv = nn.Conv2d(4, 5, **arguments).double()
    model = nn.Sequential(conv, nn.Flatten(), nn.LazyLinear(3).double())
    inputs, labels = random_data(6, (4, 7, 6), seed=7)
    model(inputs)  # materialise the lazy layer
    config = CompressionConfig(keep_ratio=0.5, mask="uniform", seed=1)
    layout = discover_layers(model)
    compressors = [build_compressor(spec, config, i) for i, spec in enumerate(layout.specs)]
    capture = GradientCapture(model, layout, compressors)
    stats = capture.kronecker_stats(position_step)
    capture.capture(cross_entropy_per_sample, [inputs, labels], kronecker=stats)

    stride = tuple(s * position_step for s in conv.stride)
    kept = inputs[:, compressors[0].input_index]
    patches = functional.unfold(kept, conv.kernel_size, conv.dilation, conv.padding, stride)
    rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])  # (B·L', C·kh·kw)
    a = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(stats.factors(0)[0], a.T @ a / a.shape[0])
    assert float(stats.positions[0]) == a.shape[0]


@pytest.mark.parametrize("position_step", [0, -1, 1.5, True])
def test_a_bad_position_step_is_refused(position_step: object) -> None:
    capture, _, _ = capture_run(
        tiny_mlp(0), *random_data(4, (6,), 0), CompressionConfig(method="identity")
    )
    with pytest.raises(ConfigError, match="position_step"):
        capture.kronecker_stats(position_step)
