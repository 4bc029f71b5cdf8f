"""The shared runner of the peer adapters: the common problem, loader, time limit, checks.

Every adapter takes the same trained model, the same train / test splits in the same order, the
same per-sample cross-entropy loss, float32 and the same thread count (a :class:`Problem`), and
fills a :class:`MethodResult` with its scores as (n_test, n_train), ``+ = proponent``, and a
per-example suspicion for mislabel detection. ``run_method`` runs one under the memory sampler
and a time limit.
"""

from __future__ import annotations

import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bench.adapters.measure import MethodResult, PeakMemory

BATCH = 256


@dataclass
class Problem:
    """The shared inputs of every method on one setting.

    Attributes:
        model: The trained checkpoint (every adapter gets its own deep copy).
        train: Training split (noisy labels), fixed order.
        test: Test split (the first ``n_test`` examples are scored).
        k: Compressed dimension matched across methods that have one.
        damping_ratio: Damping as a multiple of the mean diagonal of the curvature.
        num_classes: Number of classes.
        workdir: Scratch folder for methods that write to disk.
    """

    model: nn.Module
    train: Dataset
    test: Dataset
    k: int
    damping_ratio: float
    num_classes: int
    workdir: Path


def loader(dataset: Dataset, batch_size: int = BATCH) -> DataLoader:
    """A deterministic (unshuffled) loader."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


class MethodTimeoutError(TimeoutError):
    """A method ran past the benchmark's per-method time limit."""


def _on_alarm(signum: int, frame: object) -> None:
    raise MethodTimeoutError("ran past the per-method time limit")


def run_method(
    name: str,
    adapter: Callable[[Problem, MethodResult], None],
    problem: Problem,
    timeout_s: int = 0,
) -> MethodResult:
    """Run one adapter under the memory sampler; record the exception text if it fails.

    Args:
        name: Method label.
        adapter: The method's adapter.
        problem: The shared inputs.
        timeout_s: Stop the method after this many seconds (0: no limit); a stopped method is
            reported with ``error = "MethodTimeoutError: ... (> N s)"``.
    """
    result = MethodResult(name=name)
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(timeout_s)
    try:
        with PeakMemory() as memory:
            adapter(problem, result)
        result.peak_bytes = memory.peak
        check_output(result, len(problem.test), len(problem.train))
    except Exception as error:  # a peer failing is a result, not a crash of the benchmark
        result.error = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        if isinstance(error, MethodTimeoutError):
            result.error += f" (> {timeout_s} s)"
        result.note = traceback.format_exc(limit=-3)[-1500:]
        result.scores = result.suspicion = None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return result


def check_output(result: MethodResult, n_test: int, n_train: int) -> None:
    """Refuse outputs of the wrong shape or with NaN / inf (reported as the method's error)."""
    expected = {"scores": (n_test, n_train), "suspicion": (n_train,)}
    for name, shape in expected.items():
        value = getattr(result, name)
        if value is None:
            continue
        if value.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, the method returned {value.shape}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name}: expected finite values, found NaN or infinity")
