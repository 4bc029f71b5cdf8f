"""What a run builds before its gradient pass: compressors calibrated on the first batches.

``build_run_compressors`` draws seeded masks / projections, or for energy masks measures unit
energies on a calibration pass; ``batch_to`` moves a batch to the model's device and dtype.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dropinf.core.capture import LossFn, calibrate_unit_energy
from dropinf.core.compress import LayerCompressor
from dropinf.core.config import CompressionConfig
from dropinf.core.factory import build_compressor
from dropinf.core.layout import CaptureLayout


def batch_to(batch: Sequence[torch.Tensor], device: torch.device, dtype: torch.dtype) -> list:
    """Move a batch to ``device``, casting floating tensors to the model's ``dtype``."""
    return [
        item.to(device=device, dtype=dtype) if item.is_floating_point() else item.to(device)
        for item in batch
    ]


def build_run_compressors(
    model: nn.Module,
    layout: CaptureLayout,
    compression: CompressionConfig,
    train_dataset: Dataset,
    loss_fn: LossFn,
    batch_size: int,
) -> list[LayerCompressor]:
    """The compressors a run builds, one per captured layer.

    Seeded masks or projections; for ``mask="energy"`` dropout, masks chosen by the unit
    energies of the first ``compression.calibration_batches`` training batches.
    """
    energies = None
    if compression.method == "dropout" and compression.mask == "energy":
        parameter = next(model.parameters())
        loader = DataLoader(train_dataset, batch_size=batch_size, shuffle=False)
        first = itertools.islice(loader, compression.calibration_batches)
        batches = (batch_to(batch, parameter.device, parameter.dtype) for batch in first)
        energies = calibrate_unit_energy(model, layout, loss_fn, batches)
    return [
        build_compressor(spec, compression, position, energies[position] if energies else None)
        for position, spec in enumerate(layout.specs)
    ]
