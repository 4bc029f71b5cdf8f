"""Crash-consistent file writes: a temporary name per process, then a rename.

Every file of a run is written under a temporary name unique to the writing process and renamed
into place, so a killed writer never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file


def now_iso() -> str:
    """The current UTC time in ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing) for the block.

    Serialises read-modify-write of a file across processes (two browser sessions, a job).
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def temporary_path(path: Path) -> Path:
    """The temporary name ``path`` is written under before its rename: unique per process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def is_temporary(name: str) -> bool:
    """True for a name ``temporary_path`` (or the review's ``mkstemp``) makes."""
    return name.startswith(".") and name.endswith(".tmp")


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file and a rename."""
    temporary = temporary_path(path)
    with open(temporary, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def atomic_write_json(path: Path, value: dict[str, Any]) -> None:
    """Write ``value`` as indented JSON, atomically."""
    atomic_write_bytes(path, json.dumps(value, indent=2, sort_keys=True).encode())


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; empty when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def save_npy(path: Path, array: np.ndarray) -> None:
    """Save one array in .npy format, atomically."""
    temporary = temporary_path(path)
    with open(temporary, "wb") as handle:
        np.save(handle, array)
    os.replace(temporary, path)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save named arrays in .npz format, atomically."""
    temporary = temporary_path(path)
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(temporary, path)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Load named arrays from an .npz file (never unpickling objects)."""
    with np.load(path, allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save named tensors as safetensors (contiguous, on the CPU), atomically."""
    temporary = temporary_path(path)
    save_file({key: value.contiguous().cpu() for key, value in tensors.items()}, temporary)
    os.replace(temporary, path)
