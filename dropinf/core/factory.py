"""Building compressors by method, and restoring saved masks."""

from __future__ import annotations

import torch

from dropinf.core.compress import LayerCompressor, UnitEnergy, layer_generator
from dropinf.core.config import CompressionConfig
from dropinf.core.layout import LayerSpec
from dropinf.core.masks import MaskCompressor, mask_indices
from dropinf.core.projections import (
    FactorizedGaussianCompressor,
    GaussianCompressor,
    SparseProjectionCompressor,
)


def build_compressor(
    spec: LayerSpec,
    config: CompressionConfig,
    layer_position: int,
    energy: UnitEnergy | None = None,
) -> LayerCompressor:
    """The compressor of one layer for a config.

    Args:
        spec: The layer's shape.
        config: Method, keep ratio, seed and mask strategy.
        layer_position: Index of the layer in capture order (seeds its generator).
        energy: Unit energies from a calibration pass; required for ``mask="energy"`` dropout.

    Returns:
        The layer's compressor (on the CPU).
    """
    keep_ratio, cap = config.keep_ratio_for(spec.name), config.max_kept_units
    generator = layer_generator(config.seed, layer_position)
    if config.method == "identity":
        return MaskCompressor(spec, 1.0, None, None)
    if config.method == "dropout":
        indices = mask_indices(spec, keep_ratio, generator, energy, cap)
        return MaskCompressor(spec, keep_ratio, *indices, cap)
    if config.method == "factorized_gaussian":
        return FactorizedGaussianCompressor(spec, keep_ratio, generator, cap)
    if config.method == "gaussian":
        return GaussianCompressor(spec, keep_ratio, generator, cap)
    return SparseProjectionCompressor(spec, keep_ratio, generator, cap)


def restore_mask_compressor(
    spec: LayerSpec,
    keep_ratio: float,
    state: dict[str, torch.Tensor],
    max_kept_units: int | None = None,
) -> MaskCompressor:
    """Rebuild a ``dropout`` compressor from its saved masks (they decide its k)."""
    input_index, output_index = state.get("input_index"), state.get("output_index")
    return MaskCompressor(spec, keep_ratio, input_index, output_index, max_kept_units)
