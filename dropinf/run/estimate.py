"""What a run will cost, before it is started.

``estimate_run`` says a run's compressed dimension k (exact: the run's own compressors, calibrated
like the engine's), the size of its gradient store and its time on this machine;
``resolve_curvature_kind`` the concrete curvature ``auto`` stands for; ``check_resources`` refuses
a run whose gradient store or curvature would not fit this machine, before it starts.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

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
from dropinf.errors import ConfigError

STORE_BYTES_PER_VALUE = 2  # the gradient store holds float16
TIMING_BATCH = 64
# Measured against `python -m dropinf compute` on 2 cores (small_cnn and an MLP on digits,
# k ≈ 3 300, full curvature): the curvature's passes (float16 shards read in chunks, widened,
# accumulated; Cholesky; triangular solves) run at about a fifth of one dense float64 product's
# rate, and the job spends about 4 s starting (interpreter, torch, model and data).
CURVATURE_EFFICIENCY = 0.2
STARTUP_SECONDS = 4.0
KRONECKER_KINDS = ("kfac", "ekfac")
MASK_METHODS = ("dropout", "identity")  # compressors whose kept blocks have Kronecker factors
CHUNK_ROWS = 4096  # rows of stored gradients read at once by the curvature and scoring passes
FLOAT64_BYTES = 8
KNOBS = "lower --max-kept-units or --keep-ratio / use --curvature ekfac"


@dataclass(frozen=True)
class RunEstimate:
    """The size and time of a run, before it is started.

    Attributes:
        k: Compressed dimension (exactly the run's).
        n_train: Training examples (rows of the gradient store).
        store_bytes: Size of the float16 gradient store.
        curvature_kind: The concrete curvature (``full``, ``block``, ``kfac``, ``ekfac`` or
            ``identity``).
        capture_seconds: Everything but the curvature: the job's start-up (``STARTUP_SECONDS``),
            calibration, capturing the training and test gradients, and the test × train score
            products.
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
    calibration batches), so k is exact. Time = the job's start-up, the calibration, one timed
    capture batch scaled to the training + test examples, the test × train score products at
    the measured float64 matmul rate, and the curvature's dense algebra (``curvature_flops``) at
    ``CURVATURE_EFFICIENCY`` of that rate.

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
    kind = resolve_curvature_kind(curvature, compression, capture.k)
    flops = curvature_flops(kind, [c.k for c in compressors], len(bundle.train), n_examples)
    per_example = seconds_per_example(capture, bundle.train, loss_fn)
    scoring_s = 2 * len(bundle.test) * len(bundle.train) * capture.k / matmul_flops_per_s()
    return RunEstimate(
        k=capture.k,
        n_train=len(bundle.train),
        store_bytes=capture.k * len(bundle.train) * STORE_BYTES_PER_VALUE,
        curvature_kind=kind,
        capture_seconds=STARTUP_SECONDS + calibration_s + per_example * n_examples + scoring_s,
        curvature_seconds=flops / (matmul_flops_per_s() * CURVATURE_EFFICIENCY),
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
    """Dense float64 matmul throughput of this machine (one 1024² product, timed once).

    float64: the curvature is accumulated, factored and solved in float64.
    """
    matrix = torch.randn(1024, 1024, dtype=torch.float64)
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


def resolve_curvature_kind(
    curvature: CurvatureConfig, compression: CompressionConfig, k: int
) -> str:
    """The concrete curvature kind of a run: ``CurvatureConfig.resolve_kind`` for its compressor."""
    return curvature.resolve_kind(k, kronecker_factored=compression.method in MASK_METHODS)


def curvature_bytes(
    kind: str, compressors: Sequence[LayerCompressor], n_train: int, itemsize: int
) -> int:
    """Peak memory of fitting a run's curvature, in bytes (the largest terms).

    ``full`` / ``block``: each block of k_b coordinates holds ``Σ g gᵀ`` (k_b², ``itemsize``)
    while the shards are read, then is factored in float64 (about three k_b² copies); a block
    with N < k_b holds its N rows and an N² Gram instead. ``kfac`` / ``ekfac``: per factored
    layer its two factors and their eigenbases (``cols² + k_out²``, four float64 copies), and a
    float64 diagonal of the other coordinates. Plus one chunk of rows in float64.
    """
    dims = [compressor.k for compressor in compressors]
    chunk = CHUNK_ROWS * sum(dims) * FLOAT64_BYTES
    if kind == "identity":
        return 0
    if kind in KRONECKER_KINDS:
        factors = sum(
            getattr(c, "k_out", 0) ** 2 + (getattr(c, "k_in", 0) + 1) ** 2 for c in compressors
        )
        return 4 * factors * FLOAT64_BYTES + 2 * sum(dims) * FLOAT64_BYTES + chunk
    blocks = [sum(dims)] if kind == "full" else dims
    held = [d * d * itemsize if n_train >= d else n_train * d * itemsize for d in blocks]
    factoring = [
        3 * d * d * FLOAT64_BYTES if n_train >= d else 2 * n_train**2 * FLOAT64_BYTES
        for d in blocks
    ]
    return sum(held) + max(factoring, default=0) + chunk


def available_memory_bytes() -> int:
    """Memory the kernel says a new process can take (``MemAvailable``), else physical memory."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (its nearest existing folder)."""
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def check_resources(
    run_dir: Path,
    rows_to_store: int,
    store_itemsize: int,
    kind: str,
    compressors: Sequence[LayerCompressor],
    n_train: int,
    itemsize: int,
) -> None:
    """Refuse a run whose gradient store or curvature would not fit this machine.

    Args:
        run_dir: The run directory (its file system takes the store).
        rows_to_store: Training rows whose gradients are still to be written.
        store_itemsize: Bytes per stored value.
        kind: The concrete curvature kind.
        compressors: The run's compressors (their k and kept units).
        n_train: Training examples.
        itemsize: Bytes per value of the engine's dtype (curvature accumulation).

    Raises:
        ConfigError: The store needs more than the free disk, or the curvature more than the
            available memory; the message has the estimate, what is available and the knobs.
    """
    k = sum(compressor.k for compressor in compressors)
    store = rows_to_store * k * store_itemsize
    free = free_disk_bytes(run_dir)
    if store > free:
        raise ConfigError(
            f"the gradient store needs {size_text(store)} ({rows_to_store} examples × k {k} × "
            f"{store_itemsize} bytes), {size_text(free)} free under {run_dir}; {KNOBS}"
        )
    memory = curvature_bytes(kind, compressors, n_train, itemsize)
    available = available_memory_bytes()
    if memory > available:
        raise ConfigError(
            f"the {kind} curvature needs about {size_text(memory)} of memory (k {k}), "
            f"{size_text(available)} available; {KNOBS}"
        )


def size_text(size: int) -> str:
    """Bytes in the largest unit that keeps the number ≥ 1 (``1.5 GB``)."""
    value, unit = float(size), "B"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            break
        value /= 1024
    return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
