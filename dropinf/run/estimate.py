"""What a run will cost, before it is started.

``estimate_run`` says a run's compressed dimension k (exact: the run's own compressors, calibrated
like the engine's), the size of its gradient store and its time on this machine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dropinf.core import (
    CompressionConfig,
    CurvatureConfig,
    GradientCapture,
    LayerCompressor,
    LossFn,
    batch_to,
    build_run_compressors,
    cross_entropy_per_sample,
    curvature_flops,
    discover_layers,
)
from dropinf.data import DatasetBundle

STORE_BYTES_PER_VALUE = 2  # the gradient store holds float16
TIMING_BATCH = 64


@dataclass(frozen=True)
class RunEstimate:
    """The size and time of a run, before it is started.

    Attributes:
        k: Compressed dimension (exactly the run's).
        n_train: Training examples (rows of the gradient store).
        store_bytes: Size of the float16 gradient store.
        curvature_kind: The concrete curvature (``full``, ``block`` or ``identity``).
        capture_seconds: Calibration plus capturing the training and test gradients.
        curvature_seconds: Factoring, accumulating and applying the curvature blocks.
    """

    k: int
    n_train: int
    store_bytes: int
    curvature_kind: str
    capture_seconds: float
    curvature_seconds: float

    @property
    def seconds(self) -> float:
        """The whole run's estimated wall-clock time."""
        return self.capture_seconds + self.curvature_seconds


def estimate_run(
    model: nn.Module,
    bundle: DatasetBundle,
    compression: CompressionConfig,
    curvature: CurvatureConfig,
    loss_fn: LossFn = cross_entropy_per_sample,
    batch_size: int = 256,
) -> RunEstimate:
    """k, gradient-store size and time of a run, from timed samples on this machine.

    The run's compressors are built as the engine builds them (energy masks from the same
    calibration batches), so k is exact. Time = the calibration, one timed capture batch scaled
    to the training + test examples, and the curvature's dense algebra at the measured matmul
    rate (see ``curvature_flops``).

    Args:
        model: The model, in eval mode, on its device.
        bundle: The dataset (its training split is captured, its test split scored).
        compression: The run's compression config.
        curvature: The run's curvature config.
        loss_fn: ``loss_fn(model, batch) -> (B,)`` per-sample losses.
        batch_size: The run's capture batch size (sets the calibration batches).

    Returns:
        The estimate.

    Raises:
        NoCapturableLayerError: The model has no layer to capture.
    """
    layout = discover_layers(model)
    started = time.perf_counter()
    compressors = build_run_compressors(
        model, layout, compression, bundle.train, loss_fn, batch_size
    )
    calibration_s = time.perf_counter() - started
    capture = GradientCapture(model, layout, _on_model_device(model, compressors))
    n_examples = len(bundle.train) + len(bundle.test)
    kind = curvature.resolve_kind(capture.k)
    flops = curvature_flops(kind, [c.k for c in compressors], len(bundle.train), n_examples)
    per_example = seconds_per_example(capture, bundle.train, loss_fn)
    return RunEstimate(
        k=capture.k,
        n_train=len(bundle.train),
        store_bytes=capture.k * len(bundle.train) * STORE_BYTES_PER_VALUE,
        curvature_kind=kind,
        capture_seconds=calibration_s + per_example * n_examples,
        curvature_seconds=flops / matmul_flops_per_s(),
    )


def seconds_per_example(
    capture: GradientCapture, train: Dataset, loss_fn: LossFn = cross_entropy_per_sample
) -> float:
    """Seconds one example takes through a capture (the second of two timed batches)."""
    batch = _model_batch(capture.model, next(iter(DataLoader(train, batch_size=TIMING_BATCH))))
    capture.capture(loss_fn, batch)
    started = time.perf_counter()
    capture.capture(loss_fn, batch)
    return (time.perf_counter() - started) / len(batch[0])


@cache
def matmul_flops_per_s() -> float:
    """Dense float32 matmul throughput of this machine (one 1024² product, timed once)."""
    matrix = torch.randn(1024, 1024)
    torch.mm(matrix, matrix)
    started = time.perf_counter()
    torch.mm(matrix, matrix)
    return 2 * 1024**3 / max(time.perf_counter() - started, 1e-9)


def _model_batch(model: nn.Module, batch: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    parameter = next(model.parameters())
    return batch_to(batch, parameter.device, parameter.dtype)


def _on_model_device(
    model: nn.Module, compressors: Sequence[LayerCompressor]
) -> list[LayerCompressor]:
    device = next(model.parameters()).device
    return [compressor.to(device) for compressor in compressors]
