"""The gradient shards of a run: written row by row, published whole.

A shard ``gradients/shard-NNNNN.npy`` holds (rows, k) compressed training gradients, memmapped;
``shard-NNNNN.meta.npz`` beside it holds the label, prediction and loss of those rows, and, for
the Kronecker curvature kinds, ``shard-NNNNN.kfac.safetensors`` the K-FAC factor sums of those
rows (``KroneckerStats.state``: summable across shards). A shard exists only once all its rows are
in: it is filled under a temporary name and renamed into place, its metadata and statistics first,
so a published shard always has them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from dropinf.run.files import save_npz, save_tensors, temporary_path

if TYPE_CHECKING:
    from dropinf.run.store import RunStore

META_FIELDS = ("label", "prediction", "loss")
SHARD_PATTERN = re.compile(r"shard-\d{5}(\.npy|\.meta\.npz|\.kfac\.safetensors)")


def is_shard_file(path: Path) -> bool:
    """True for a gradient shard, its metadata, or a temporary of either."""
    return bool(SHARD_PATTERN.fullmatch(path.name)) or (
        path.name.startswith(".shard-") and path.name.endswith(".tmp")
    )


def meta_path(shard: Path) -> Path:
    """The metadata file beside a gradient shard."""
    return shard.with_name(shard.name.replace(".npy", ".meta.npz"))


def kronecker_path(shard: Path) -> Path:
    """The K-FAC statistics file beside a gradient shard."""
    return shard.with_name(shard.name.replace(".npy", ".kfac.safetensors"))


def typed_metadata(meta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Labels and predictions as int64 (-1 where unknown), losses as float64."""
    return {
        "label": meta["label"].astype(np.int64),
        "prediction": meta["prediction"].astype(np.int64),
        "loss": meta["loss"].astype(np.float64),
    }


class ShardWriter:
    """Fills one gradient shard row by row in a temporary memmap, then publishes it.

    Args:
        path: The shard's final path.
        rows: Rows the shard will hold.
        k: Compressed dimension.
        dtype: Numpy dtype of the stored gradients.
    """

    def __init__(self, path: Path, rows: int, k: int, dtype: np.dtype) -> None:
        self.path = path
        self.rows = rows
        self.temporary = temporary_path(path)
        self.gradients = np.lib.format.open_memmap(
            self.temporary, mode="w+", dtype=dtype, shape=(rows, k)
        )
        self.meta = {name: np.zeros(rows, dtype=np.float64) for name in META_FIELDS}
        self.filled = 0

    def append(self, gradients: np.ndarray | None, meta: dict[str, np.ndarray]) -> None:
        """Add the next rows (None: their gradients are already in place)."""
        stop = self.filled + len(meta["loss"])
        if gradients is not None:
            self.gradients[self.filled : stop] = gradients
        for name in META_FIELDS:
            self.meta[name][self.filled : stop] = meta[name]
        self.filled = stop

    @property
    def full(self) -> bool:
        """True once every row is filled."""
        return self.filled >= self.rows

    def publish(self, kronecker: dict[str, torch.Tensor] | None = None) -> None:
        """Flush the rows and rename the shard into place, its metadata and statistics first.

        Args:
            kronecker: The K-FAC factor sums of exactly this shard's rows, if the run keeps them.
        """
        self.gradients.flush()
        del self.gradients
        save_npz(meta_path(self.path), self.meta)
        if kronecker is not None:
            save_tensors(kronecker_path(self.path), kronecker)
        os.replace(self.temporary, self.path)


def shard_count(n_rows: int, shard_rows: int) -> int:
    """How many shards hold ``n_rows`` rows at ``shard_rows`` per shard (the last may be short)."""
    return -(-n_rows // shard_rows)


def shard_index(path: Path) -> int:
    """The index NNNNN of ``shard-NNNNN.npy``."""
    return int(path.name.removeprefix("shard-").removesuffix(".npy"))


class GradientWriter:
    """Streams rows into the shards of a run, publishing each shard once it is full.

    Rows are written shard by shard (``pending_shards``): a batch never straddles two shards,
    so whatever is summed per batch (the K-FAC statistics) is exactly per shard, whatever the
    batch size, also on resume. Shard i always holds rows ``i·shard_rows`` onwards, so several
    processes, each writing its own ``shares`` of the shard indices, fill the same shards one
    process would, under the same names, never the same file.

    Args:
        store: The run.
        n_rows: Rows in the whole training set.
        shard_rows: Rows per shard (the last one may hold fewer).
        k: Compressed dimension.
        dtype: Numpy dtype of the stored gradients.
        share: The shard indices this writer fills (None: every shard).
    """

    def __init__(
        self,
        store: RunStore,
        n_rows: int,
        shard_rows: int,
        k: int,
        dtype: np.dtype,
        share: range | None = None,
    ) -> None:
        self.store, self.n_rows, self.shard_rows = store, n_rows, shard_rows
        self.k, self.dtype = k, dtype
        self.share = range(shard_count(n_rows, shard_rows)) if share is None else share
        self.rows_done = sum(np.load(p, mmap_mode="r").shape[0] for p in store.complete_shards())
        self.shard: ShardWriter | None = None
        self.index: int | None = None

    def shard_range(self, index: int) -> range:
        """The rows of shard ``index``."""
        start = index * self.shard_rows
        return range(start, min(start + self.shard_rows, self.n_rows))

    def published(self) -> set[int]:
        """The indices of the shards published so far (by any process)."""
        return {shard_index(path) for path in self.store.complete_shards()}

    def rows_published(self) -> int:
        """Rows in the shards published so far (by any process; lists the folder)."""
        return sum(len(self.shard_range(index)) for index in self.published())

    def share_rows(self) -> tuple[int, int]:
        """(rows of this writer's share, of those already published)."""
        published = self.published()
        rows = [len(self.shard_range(index)) for index in self.share]
        done = [n for index, n in zip(self.share, rows, strict=True) if index in published]
        return sum(rows), sum(done)

    def pending_shards(self) -> Iterator[range]:
        """The rows of each shard of the share not yet published, in order."""
        published = self.published()
        for index in self.share:
            if index not in published:
                self.index = index
                yield self.shard_range(index)

    def slot(self, rows: int) -> np.ndarray:
        """A writable (rows, k) view of the next rows of the current shard.

        Fill it, then call ``write(None, meta)``: the gradients skip one copy.
        """
        shard = self._current_shard()
        return shard.gradients[shard.filled : shard.filled + rows]

    def write(
        self,
        gradients: np.ndarray | None,
        meta: dict[str, np.ndarray],
        kronecker: Callable[[], dict[str, torch.Tensor]] | None = None,
    ) -> bool:
        """Store the next rows of the current shard (None: they were written into ``slot``).

        Args:
            gradients: (rows, k) gradients, or None when already in the last ``slot``.
            meta: Label, prediction and loss of the rows.
            kronecker: Gives the K-FAC statistics of the whole shard, published with it when
                these rows fill it.

        Returns:
            True when the shard was published.
        """
        shard = self._current_shard()
        shard.append(gradients, meta)
        self.rows_done += len(meta["loss"])
        if not shard.full:
            return False
        shard.publish(None if kronecker is None else kronecker())
        self.shard = None
        return True

    def _current_shard(self) -> ShardWriter:
        """The shard being filled: the one ``pending_shards`` gave, else the next in row order."""
        if self.shard is None:
            index = self.rows_done // self.shard_rows if self.index is None else self.index
            rows = len(self.shard_range(index))
            self.shard = self.store.shard_writer(index, rows, self.k, self.dtype)
        return self.shard
