"""The gradient shards of a run: written row by row, published whole.

A shard ``gradients/shard-NNNNN.npy`` holds (rows, k) compressed training gradients, memmapped;
``shard-NNNNN.meta.npz`` beside it holds the label, prediction and loss of those rows. A shard
exists only once all its rows are in: it is filled under a temporary name and renamed into place
(metadata first).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dropinf.run.files import save_npz, temporary_path

if TYPE_CHECKING:
    from dropinf.run.store import RunStore

META_FIELDS = ("label", "prediction", "loss")
SHARD_PATTERN = re.compile(r"shard-\d{5}(\.npy|\.meta\.npz)")


def is_shard_file(path: Path) -> bool:
    """True for a gradient shard, its metadata, or a temporary of either."""
    return bool(SHARD_PATTERN.fullmatch(path.name)) or (
        path.name.startswith(".shard-") and path.name.endswith(".tmp")
    )


def meta_path(shard: Path) -> Path:
    """The metadata file beside a gradient shard."""
    return shard.with_name(shard.name.replace(".npy", ".meta.npz"))


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

    def publish(self) -> None:
        """Flush the rows and rename the shard (metadata first) into place."""
        self.gradients.flush()
        del self.gradients
        save_npz(meta_path(self.path), self.meta)
        os.replace(self.temporary, self.path)


class GradientWriter:
    """Streams rows into consecutive shards of a run, publishing each shard once it is full.

    Args:
        store: The run.
        n_rows: Rows in the whole training set.
        shard_rows: Rows per shard (the last one may hold fewer).
        k: Compressed dimension.
        dtype: Numpy dtype of the stored gradients.
    """

    def __init__(
        self, store: RunStore, n_rows: int, shard_rows: int, k: int, dtype: np.dtype
    ) -> None:
        self.store, self.n_rows, self.shard_rows = store, n_rows, shard_rows
        self.k, self.dtype = k, dtype
        self.rows_done = sum(np.load(p, mmap_mode="r").shape[0] for p in store.complete_shards())
        self.shard: ShardWriter | None = None

    def slot(self, rows: int) -> np.ndarray | None:
        """A writable (rows, k) view of the next rows when they fit in one shard, else None.

        Fill it, then call ``write(None, meta)``: the gradients skip one copy.
        """
        shard = self._current_shard()
        if shard.rows - shard.filled < rows:
            return None
        return shard.gradients[shard.filled : shard.filled + rows]

    def write(self, gradients: np.ndarray | None, meta: dict[str, np.ndarray]) -> bool:
        """Store the next rows (None: they were written into the last ``slot``).

        Returns:
            True when at least one shard was published.
        """
        if gradients is None:
            shard = self._current_shard()
            shard.append(None, meta)
            self.rows_done += len(meta["loss"])
            return self._publish_if_full()
        published = False
        offset = 0
        while offset < len(gradients):
            shard = self._current_shard()
            take = min(shard.rows - shard.filled, len(gradients) - offset)
            part = slice(offset, offset + take)
            shard.append(gradients[part], {name: values[part] for name, values in meta.items()})
            offset += take
            self.rows_done += take
            published = self._publish_if_full() or published
        return published

    def _current_shard(self) -> ShardWriter:
        if self.shard is None:
            index = self.rows_done // self.shard_rows
            rows = min(self.shard_rows, self.n_rows - index * self.shard_rows)
            self.shard = self.store.shard_writer(index, rows, self.k, self.dtype)
        return self.shard

    def _publish_if_full(self) -> bool:
        if not self.shard.full:
            return False
        self.shard.publish()
        self.shard = None
        return True
