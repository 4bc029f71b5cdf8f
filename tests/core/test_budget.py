"""The dimension budget: kept units capped per layer, the same k for every method."""

from __future__ import annotations

import pytest
import torch

from dropinf.core import (
    DEFAULT_MAX_KEPT_UNITS,
    CompressionConfig,
    LayerSpec,
    UnitEnergy,
    build_compressor,
    compressed_size,
    discover_layers,
    energy_split,
    mask_indices,
)
from dropinf.errors import ConfigError
from dropinf.models import small_cnn

CIFAR_CNN_SPECS = discover_layers(small_cnn(in_channels=3, input_size=32)).specs


def test_small_cnn_on_cifar_shapes_stays_within_the_budget() -> None:
    cap = DEFAULT_MAX_KEPT_UNITS
    size = compressed_size(CIFAR_CNN_SPECS, CompressionConfig())
    assert size.k <= len(CIFAR_CNN_SPECS) * (cap**2 + cap)
    assert size.k == 3250  # conv 8×9+8, conv 16×63+16, linear 32×64+32, linear 2×32+2
    assert size.bytes_per_example == 2 * size.k
    uncapped = compressed_size(CIFAR_CNN_SPECS, CompressionConfig(max_kept_units=None))
    assert uncapped.k == 132_418  # q²·|W|: the 16 384→128 layer alone keeps 4 096 × 32


@pytest.mark.parametrize("method", ["dropout", "factorized_gaussian", "sjlt"])
@pytest.mark.parametrize("cap", [None, 64, 16, 5])
def test_every_method_stores_the_predicted_k_under_the_cap(method: str, cap: int | None) -> None:
    config = CompressionConfig(method=method, mask="uniform", max_kept_units=cap)
    specs = [spec for spec in CIFAR_CNN_SPECS if spec.out_units < 1000]
    built = [build_compressor(spec, config, i).k for i, spec in enumerate(specs)]
    assert tuple(built) == compressed_size(specs, config).layer_dims


def test_conv_inputs_are_capped_in_columns() -> None:
    conv = LayerSpec("conv", "conv2d", in_units=32, out_units=64, patch=9, has_bias=True)
    config = CompressionConfig(keep_ratio=1.0, mask="uniform", max_kept_units=64)
    inputs, outputs = mask_indices(conv, 1.0, torch.Generator().manual_seed(0), None, 64)
    assert (len(inputs), len(outputs)) == (7, 64)  # 7 channels × 9 = 63 columns ≤ 64
    assert build_compressor(conv, config, 0).k == 64 * 63 + 64
    wide_kernel = LayerSpec("conv", "conv2d", in_units=3, out_units=8, patch=121)
    assert build_compressor(wide_kernel, config, 0).k_in == 121  # at least one channel


def test_flat_layers_keep_at_most_the_square_of_the_cap() -> None:
    flat = LayerSpec("embedding", "flat", in_units=100_000)
    config = CompressionConfig(max_kept_units=8, mask="uniform")
    assert compressed_size([flat], config).k == 64


def test_energy_masks_split_within_the_caps() -> None:
    energy = UnitEnergy(torch.ones(100), torch.tensor([100.0] + [1.0] * 99))
    assert energy_split(energy, budget=64) == (1, 64)
    assert energy_split(energy, budget=64, max_out=8, max_in=8) == (8, 8)
    layer = LayerSpec("fc", "linear", in_units=100, out_units=100)
    inputs, outputs = mask_indices(layer, 0.5, torch.Generator(), energy, max_kept_units=10)
    assert len(inputs) <= 10 and len(outputs) <= 10


@pytest.mark.parametrize("cap", [0, -3, 2.5, True, "64"])
def test_bad_caps_are_refused(cap: object) -> None:
    with pytest.raises(ConfigError, match="max_kept_units"):
        CompressionConfig(max_kept_units=cap)


def test_configs_saved_before_the_budget_reopen_uncapped() -> None:
    saved = CompressionConfig().to_dict()
    del saved["max_kept_units"]
    assert CompressionConfig.from_dict(saved).max_kept_units is None
