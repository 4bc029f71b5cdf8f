"""The on-disk run store: every file of a run directory is read and written here.

Layout of a run directory::

    manifest.json              config, versions, provenance, layer table, k, n, status, rows done
    progress.json              phase, done, total, examples/s, ETA (rewritten while a job runs)
    compressor.safetensors     dropout masks (projections are regenerated from the seed)
    gradients/shard-NNNNN.npy  (rows, k) compressed training gradients, memmapped
    gradients/shard-NNNNN.meta.npz   label, prediction, loss of those rows
    curvature.safetensors      Cholesky factors of the damped Fisher
    self_influence.npy         (n_train,)
    test_scores.npy            (n_test, n_train), + = proponent
    test_meta.npz              label, prediction, loss of the test examples

Every file is written under a temporary name and renamed into place, so a killed job never
leaves a half-written file that looks complete. A shard exists only once all its rows are in.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dropinf.errors import IncompleteRunError, RunNotFoundError

FORMAT_VERSION = 1
META_FIELDS = ("label", "prediction", "loss")


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


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file and a rename."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per writing process
    with open(temporary, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def atomic_write_json(path: Path, value: dict[str, Any]) -> None:
    """Write ``value`` as indented JSON, atomically."""
    atomic_write_bytes(path, json.dumps(value, indent=2, sort_keys=True).encode())


def save_npy(path: Path, array: np.ndarray) -> None:
    """Save one array in .npy format, atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        np.save(handle, array)
    os.replace(temporary, path)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save named arrays in .npz format, atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(temporary, path)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Load named arrays from an .npz file (never unpickling objects)."""
    with np.load(path, allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


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
        self.temporary = path.with_name(f".{path.name}.tmp")
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
            rows = len(meta["loss"])
            shard.append(None, meta)
            self.rows_done += rows
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


def meta_path(shard: Path) -> Path:
    """The metadata file beside a gradient shard."""
    return shard.with_name(shard.name.replace(".npy", ".meta.npz"))


class RunStore:
    """Reads and writes one run directory.

    Args:
        run_dir: The run directory (need not exist yet).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    # paths
    @property
    def manifest_path(self) -> Path:
        """``manifest.json``."""
        return self.run_dir / "manifest.json"

    @property
    def progress_path(self) -> Path:
        """``progress.json``."""
        return self.run_dir / "progress.json"

    @property
    def gradients_dir(self) -> Path:
        """Folder of the gradient shards."""
        return self.run_dir / "gradients"

    def shard_path(self, index: int) -> Path:
        """Path of gradient shard ``index``."""
        return self.gradients_dir / f"shard-{index:05d}.npy"

    def artifact_path(self, name: str) -> Path:
        """Path of a named artifact of the run (``self_influence.npy``, ...)."""
        return self.run_dir / name

    # manifest and progress
    def exists(self) -> bool:
        """True when the directory holds a manifest."""
        return self.manifest_path.is_file()

    def read_manifest(self) -> dict[str, Any]:
        """The manifest.

        Raises:
            RunNotFoundError: There is no manifest in the directory.
        """
        if not self.exists():
            raise RunNotFoundError(f"expected a run directory with manifest.json at {self.run_dir}")
        return json.loads(self.manifest_path.read_text())

    def manifest_or_none(self) -> dict[str, Any] | None:
        """The manifest, or None when there is none (yet)."""
        return self.read_manifest() if self.exists() else None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest (stamping ``updated``)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.manifest_path, {**manifest, "updated": now_iso()})

    def update_manifest(self, **changes: Any) -> dict[str, Any]:
        """Change some manifest fields and write it back."""
        manifest = {**self.read_manifest(), **changes}
        self.write_manifest(manifest)
        return manifest

    def write_progress(self, progress: dict[str, Any]) -> None:
        """Write ``progress.json``."""
        atomic_write_json(self.progress_path, progress)

    def read_progress(self) -> dict[str, Any] | None:
        """The last progress written, or None."""
        if not self.progress_path.is_file():
            return None
        return json.loads(self.progress_path.read_text())

    @property
    def status(self) -> str:
        """``running``, ``complete``, ``failed`` or ``cancelled``; ``absent`` with no manifest."""
        return self.read_manifest()["status"] if self.exists() else "absent"

    def is_complete(self) -> bool:
        """True when the run finished."""
        return self.status == "complete"

    def clear(self) -> None:
        """Delete everything in the run directory."""
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True)

    # gradient shards
    def complete_shards(self) -> list[Path]:
        """Published shards in order (a shard that is not published does not exist)."""
        return sorted(self.gradients_dir.glob("shard-*.npy"))

    def shard_writer(self, index: int, rows: int, k: int, dtype: np.dtype) -> ShardWriter:
        """A writer for shard ``index``."""
        self.gradients_dir.mkdir(parents=True, exist_ok=True)
        return ShardWriter(self.shard_path(index), rows, k, dtype)

    def iter_gradient_shards(self) -> Iterator[np.ndarray]:
        """The published shards, memmapped read-only, in row order."""
        for path in self.complete_shards():
            yield np.load(path, mmap_mode="r")

    def gradients(self) -> np.ndarray:
        """All compressed training gradients, (n_train, k)."""
        shards = list(self.iter_gradient_shards())
        if not shards:
            raise IncompleteRunError(f"run {self.run_dir} has no gradient shards yet")
        return shards[0] if len(shards) == 1 else np.concatenate(shards)

    def train_metadata(self) -> dict[str, np.ndarray]:
        """Label, prediction and loss of every training example with stored gradients."""
        metas = [load_npz(meta_path(path)) for path in self.complete_shards()]
        if not metas:
            raise IncompleteRunError(f"run {self.run_dir} has no gradient shards yet")
        merged = {name: np.concatenate([meta[name] for meta in metas]) for name in META_FIELDS}
        return typed_metadata(merged)

    # curvature and compressor state
    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        """Save named tensors as safetensors, atomically."""
        temporary = self.artifact_path(f".{name}.tmp")
        save_file({key: value.contiguous().cpu() for key, value in tensors.items()}, temporary)
        os.replace(temporary, self.artifact_path(name))

    def load_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """Load named tensors saved with ``save_tensors``.

        Raises:
            IncompleteRunError: The file has not been written yet.
        """
        path = self.artifact_path(name)
        if not path.is_file():
            raise IncompleteRunError(f"run {self.run_dir} has no {name} yet")
        return load_file(path)

    # results
    def save_self_influence(self, values: np.ndarray) -> None:
        """Save the self-influence of every training example."""
        save_npy(self.artifact_path("self_influence.npy"), values)

    def self_influence(self) -> np.ndarray:
        """Self-influence of every training example, (n_train,).

        Raises:
            IncompleteRunError: The run has not computed it yet.
        """
        return self._load_array("self_influence.npy")

    def save_test_scores(self, scores: np.ndarray, meta: dict[str, np.ndarray]) -> None:
        """Save test-by-train scores and the test examples' label, prediction and loss."""
        save_npz(self.artifact_path("test_meta.npz"), meta)
        save_npy(self.artifact_path("test_scores.npy"), scores)

    def test_scores_exist(self) -> bool:
        """True when test scores were saved."""
        return self.artifact_path("test_scores.npy").is_file()

    def test_scores(self) -> np.ndarray:
        """Test-by-train influence scores, (n_test, n_train); + = proponent."""
        return self._load_array("test_scores.npy", mmap=True)

    def test_metadata(self) -> dict[str, np.ndarray]:
        """Label, prediction and loss of the scored test examples."""
        path = self.artifact_path("test_meta.npz")
        if not path.is_file():
            raise IncompleteRunError(f"run {self.run_dir} has no test scores yet")
        return typed_metadata(load_npz(path))

    def _load_array(self, name: str, mmap: bool = False) -> np.ndarray:
        path = self.artifact_path(name)
        if not path.is_file():
            raise IncompleteRunError(f"run {self.run_dir} has no {name} yet")
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def typed_metadata(meta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Labels and predictions as int64 (-1 where unknown), losses as float64."""
    return {
        "label": meta["label"].astype(np.int64),
        "prediction": meta["prediction"].astype(np.int64),
        "loss": meta["loss"].astype(np.float64),
    }
