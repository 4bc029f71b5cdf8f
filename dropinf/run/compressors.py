"""The compressors of a run, as saved in ``compressor.safetensors`` and rebuilt from it.

Dropout masks chosen by calibration cannot be regenerated, so their kept indices are saved (one
``<layer position>.<name>`` tensor each, plus ``k``: each layer's compressed dimension). Every
other method is rebuilt from the run's config and seed alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dropinf.core import (
    CompressionConfig,
    LayerCompressor,
    LayerSpec,
    build_compressor,
    restore_mask_compressor,
)


def compressor_tensors(compressors: Sequence[LayerCompressor]) -> dict[str, torch.Tensor]:
    """The tensors that rebuild ``compressors`` (``restore_compressors`` reads them back)."""
    tensors = {
        f"{position}.{name}": value
        for position, compressor in enumerate(compressors)
        for name, value in compressor.state().items()
    }
    tensors["k"] = torch.tensor([c.k for c in compressors])
    return tensors


def restore_compressors(
    saved: dict[str, torch.Tensor], specs: Sequence[LayerSpec], compression: CompressionConfig
) -> list[LayerCompressor]:
    """The compressors of a run, from its saved tensors and its compression config.

    Args:
        saved: Tensors written from ``compressor_tensors``.
        specs: The captured layers, in capture order.
        compression: The run's compression config.

    Returns:
        One compressor per layer, on the CPU.
    """
    if compression.method != "dropout":
        return [
            build_compressor(spec, compression, position) for position, spec in enumerate(specs)
        ]
    compressors: list[LayerCompressor] = []
    for position, spec in enumerate(specs):
        prefix = f"{position}."
        state = {n[len(prefix) :]: v for n, v in saved.items() if n.startswith(prefix)}
        compressors.append(
            restore_mask_compressor(spec, compression.keep_ratio_for(spec.name), state)
        )
    return compressors
