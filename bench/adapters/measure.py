"""Measuring helpers of the peer adapters: phase timers, peak memory, bytes on disk."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident memory of this process now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES


class PeakMemory:
    """Samples this process's RSS in a thread; ``peak`` is the highest RSS above the start."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.baseline = rss_bytes()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes() - self.baseline)
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes() - self.baseline)


@dataclass
class MethodResult:
    """What one attribution method produced on one setting.

    Attributes:
        name: Method label shown in the tables.
        phases: Seconds per phase: ``gradients`` (incl. compression), ``curvature``, ``scoring``
            (all test examples), ``self_influence``; a phase the method fuses into another is
            absent.
        scores: (n_test, n_train) attribution, + = proponent; None for detection-only methods.
        suspicion: (n_train,) the method's mislabel detection score (self-influence for the
            influence peers, the leave-one-out loss for dropinf, 1 - label quality for cleanlab).
        self_influence: (n_train,) self-influence where the detection score is another one.
        peak_bytes: Peak resident memory above the process's level at the start.
        bytes_stored: Bytes the method keeps for later queries (disk or cache tensors).
        k: Compressed dimension, where the method has one.
        note: Free text (what the method computes, deviations).
        error: The exception text when the method failed; the other fields are then empty.
        skipped: Why the method was not run on this setting (empty when it ran).
    """

    name: str
    phases: dict[str, float] = field(default_factory=dict)
    scores: np.ndarray | None = None
    suspicion: np.ndarray | None = None
    self_influence: np.ndarray | None = None
    peak_bytes: int = 0
    bytes_stored: int = 0
    k: int | None = None
    note: str = ""
    error: str | None = None
    skipped: str = ""

    @property
    def total_s(self) -> float:
        """End-to-end seconds: the sum of the phases."""
        return float(sum(self.phases.values()))


@contextmanager
def phase(result: MethodResult, name: str) -> Iterator[None]:
    """Time a block and add it to ``result.phases[name]``."""
    start = time.perf_counter()
    yield
    result.phases[name] = result.phases.get(name, 0.0) + time.perf_counter() - start


def folder_bytes(folder: str | Path) -> int:
    """Total size of the files under a folder."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
