"""The math of dropout-compressed influence, with no files and no user interface.

Configs (one dataclass per stage), the capture of per-sample compressed gradients (hooks on
Linear / Conv2d, ``vmap`` for the rest), the compressors (dropout masks and the baselines at equal
k), the compressors a run calibrates, the curvature kinds (full, block, kfac, ekfac, identity) and
the loss functions. May import only torch, numpy and ``dropinf.errors``; everything else in
dropinf builds on it.
"""

from __future__ import annotations

from dropinf.core.budget import compressed_size
from dropinf.core.calibration import batch_to, build_run_compressors
from dropinf.core.capture import CapturedBatch, GradientCapture, LossFn, calibrate_unit_energy
from dropinf.core.compress import LayerCompressor, UnitEnergy
from dropinf.core.config import (
    COMPRESSION_METHODS,
    CURVATURE_KINDS,
    DEFAULT_DAMPING_RATIOS,
    DEFAULT_MAX_KEPT_UNITS,
    MASK_STRATEGIES,
    CompressionConfig,
    CurvatureConfig,
    default_damping_text,
)
from dropinf.core.curvature import (
    BlockStatistics,
    Curvature,
    LowRankBlock,
    cholesky_block,
    curvature_flops,
    fit_curvature,
    low_rank_block,
)
from dropinf.core.factory import build_compressor, restore_mask_compressor
from dropinf.core.kronecker import KroneckerStats
from dropinf.core.layer_ops import gather_units, write_layer
from dropinf.core.layout import CaptureLayout, LayerSpec, discover_layers, factored_spec
from dropinf.core.losses import cross_entropy_per_sample
from dropinf.core.masks import energy_split, mask_indices

__all__ = [
    "COMPRESSION_METHODS",
    "CURVATURE_KINDS",
    "DEFAULT_DAMPING_RATIOS",
    "DEFAULT_MAX_KEPT_UNITS",
    "MASK_STRATEGIES",
    "BlockStatistics",
    "CaptureLayout",
    "CapturedBatch",
    "CompressionConfig",
    "Curvature",
    "CurvatureConfig",
    "GradientCapture",
    "KroneckerStats",
    "LayerCompressor",
    "LayerSpec",
    "LossFn",
    "LowRankBlock",
    "UnitEnergy",
    "batch_to",
    "build_compressor",
    "build_run_compressors",
    "calibrate_unit_energy",
    "cholesky_block",
    "compressed_size",
    "cross_entropy_per_sample",
    "curvature_flops",
    "default_damping_text",
    "discover_layers",
    "energy_split",
    "factored_spec",
    "fit_curvature",
    "gather_units",
    "low_rank_block",
    "mask_indices",
    "restore_mask_compressor",
    "write_layer",
]
