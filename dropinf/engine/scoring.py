"""Scores against a run's stored gradients: ``I(z', z) = g(z')ᵀ (F + λI)⁻¹ g(z)``.

The stored training gradients are streamed chunk by chunk, one shard mapped at a time
(``ShardReader``; host memory independent of n_train), and kept on an accelerator between
passes when they fit in half its free memory; the test gradients are preconditioned once; a
score matrix beyond a memory budget is a memmap. The fitted curvature is rebuilt from the run's
saved state.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from dropinf.core import CapturedBatch, Curvature
from dropinf.run import RunStore

HALF_QUERY_ROWS = 16  # up to this many test rows, float16 shards are multiplied as stored
SCORE_CHUNK_ROWS = 4096


class ShardReader:
    """A run's published gradient shards, read in chunks, one shard mapped at a time.

    The shard list and row counts are read once and kept, so repeated queries do not list the
    folder again; ``reset`` forgets them (after a fit wrote new shards). Each pass maps a shard
    only while its chunks are read: mapped pages count in the process's resident memory, so
    keeping every shard mapped would make it grow with n_train.
    """

    def __init__(
        self,
        store: RunStore,
        indices: Sequence[int] | None = None,
        resident_bytes: int | None = None,
    ) -> None:
        """Read the shards of ``store`` (only those of ``indices``: one process's share).

        Args:
            store: The run.
            indices: The shards to read; None reads all.
            resident_bytes: The most bytes of stored gradients kept on the scoring device
                between passes (``device_chunks``); None: half the free memory of an
                accelerator, none on the CPU (whose page cache already holds the shards).
        """
        self.store, self.indices, self.resident_bytes = store, indices, resident_bytes
        self._rows: dict[Path, int] | None = None
        self._resident: tuple[torch.device, list[tuple[int, torch.Tensor]]] | None = None

    @property
    def shard_rows(self) -> dict[Path, int]:
        """Rows of each published shard (of ``indices``), in row order."""
        if self._rows is None:
            self._rows = {
                path: np.load(path, mmap_mode="r").shape[0]
                for path in self.store.gradient_shard_paths(self.indices)
            }
        return self._rows

    def reset(self) -> None:
        """Forget the shard list and the resident chunks."""
        self._rows, self._resident = None, None

    def raw_chunks(self, rows: int = SCORE_CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, (≤ rows, k) memmapped slice) over the run, in order, not copied.

        A shard stays mapped while a chunk of it is referenced, so a caller keeps results, not
        chunks.
        """
        start = 0
        for path in self.shard_rows:
            shard = np.load(path, mmap_mode="r")
            for offset in range(0, shard.shape[0], rows):
                chunk = shard[offset : offset + rows]
                yield start, chunk
                start += chunk.shape[0]
            del shard, chunk

    @property
    def n_rows(self) -> int:
        """Rows stored."""
        return sum(self.shard_rows.values())

    def device_chunks(
        self, device: torch.device, rows: int = SCORE_CHUNK_ROWS
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, (≤ rows, k) stored gradients on ``device``, as stored) over the run.

        A pass that copies every chunk to a device with room for them all (``resident_bytes``)
        keeps the copies: the next passes (self-influence, then each query) read no shard and
        copy nothing. Chunks are never written by callers.
        """
        if self._resident is not None and self._resident[0] == device:
            yield from self._resident[1]
            return
        room = self.room(device)
        keep = room > 0 and self.stored_bytes() <= room
        kept = []
        for start, chunk in self.raw_chunks(rows):
            tensor = as_tensor(chunk).to(device)
            if keep:
                kept.append((start, tensor))
            yield start, tensor
        if keep:
            self._resident = (device, kept)

    def stored_bytes(self) -> int:
        """Bytes of the stored gradients read (headers excluded)."""
        if not self.shard_rows:
            return 0
        first = np.load(next(iter(self.shard_rows)), mmap_mode="r")
        return self.n_rows * first.shape[1] * first.dtype.itemsize

    def room(self, device: torch.device) -> int:
        """The most bytes of stored gradients to keep resident on ``device``."""
        if self.resident_bytes is not None:
            return self.resident_bytes
        if device.type != "cuda":
            return 0
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2


def as_tensor(chunk: np.ndarray) -> torch.Tensor:
    """A read-only memmapped chunk as a tensor, without a copy (it is never written)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns on non-writable arrays
        return torch.from_numpy(chunk)


def stored_gradient_chunks(
    store: RunStore,
    device: torch.device,
    dtype: torch.dtype,
    rows: int = SCORE_CHUNK_ROWS,
    reader: ShardReader | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, stored training gradients as a (rows, k) tensor) over a run, in order."""
    for start, chunk in (reader or ShardReader(store)).device_chunks(device, rows):
        yield start, chunk.to(dtype)


def load_curvature(store: RunStore, device: torch.device) -> Curvature:
    """The fitted curvature of a run."""
    manifest = store.read_manifest()
    tensors = store.load_curvature()
    curvature = Curvature.from_state(manifest["curvature_kind"], manifest["damping"], tensors)
    return curvature.to(device)


def score_array(
    n_test: int, n_train: int, dtype: torch.dtype, budget: int, folder: Path
) -> np.ndarray:
    """An (n_test, n_train) array for scores: in memory, or a memmap beyond ``budget`` bytes.

    The memmap's file is created in ``folder`` and unlinked at once: its space is freed when
    the last reference to the array goes, and nothing is left behind by a killed process.
    """
    numpy_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    if n_test * n_train * numpy_dtype.itemsize <= budget:
        return np.empty((n_test, n_train), dtype=numpy_dtype)
    folder.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=".pairwise-", suffix=".tmp", dir=folder)
    os.close(descriptor)
    try:
        return np.lib.format.open_memmap(name, "w+", numpy_dtype, (n_test, n_train))
    finally:
        os.unlink(name)


def influence_scores(
    curvature: Curvature,
    test_gradients: torch.Tensor,
    reader: ShardReader,
    device: torch.device,
    dtype: torch.dtype,
    out: np.ndarray | None = None,
) -> torch.Tensor:
    """(m, n_train) scores of test gradients (m, k) against every stored shard, on the CPU.

    The shards are read once, chunk by chunk. A few test rows against float16 shards on the
    CPU are multiplied in float16 as stored (the rows scaled to at most 1; float32 where a
    score would overflow): no float32 copy of the shards is made.

    Args:
        curvature: The run's fitted curvature.
        test_gradients: (m, k) compressed test gradients.
        reader: The run's shards.
        device: Where to multiply.
        dtype: Precision of the products (and of a new result).
        out: An (m, n_train) array to fill (e.g. a memmap); None allocates one.

    Returns:
        The scores (sharing memory with ``out`` when given).
    """
    preconditioned = curvature.precondition(test_gradients.to(device)).to(dtype)  # (m, k)
    scores = torch.from_numpy(out) if out is not None else None
    parts = [torch.zeros((preconditioned.shape[0], 0), dtype=dtype)]  # a share may be empty
    for start, chunk in reader.device_chunks(device):
        part = chunk_scores(preconditioned, chunk).cpu()
        if scores is None:
            parts.append(part)
        else:
            scores[:, start : start + part.shape[1]] = part.to(scores.dtype)
    return scores if scores is not None else torch.cat(parts, dim=1)


def chunk_scores(preconditioned: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
    """``preconditioned @ chunkᵀ``, (m, rows) in the dtype of ``preconditioned``."""
    if (
        chunk.dtype == torch.float16
        and chunk.device.type == "cpu"
        and preconditioned.shape[0] <= HALF_QUERY_ROWS
    ):
        scale = preconditioned.abs().amax().clamp(min=torch.finfo(torch.float32).tiny)
        half = (chunk @ (preconditioned / scale).to(torch.float16).T).T  # (m, rows)
        if bool(torch.isfinite(half).all()):
            return half.to(preconditioned.dtype) * scale
    return preconditioned @ chunk.to(preconditioned.dtype).T


def batch_metadata(captured: CapturedBatch, batch: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    """Label, prediction and loss of each example of a batch (-1 where unknown)."""
    size = captured.losses.shape[0]
    unknown = torch.full((size,), -1)
    labels = batch[1] if len(batch) > 1 and batch[1].ndim == 1 else unknown
    predictions = unknown if captured.predictions is None else captured.predictions
    return {
        "label": labels.cpu().numpy(),
        "prediction": predictions.cpu().numpy(),
        "loss": captured.losses.double().cpu().numpy(),
    }
