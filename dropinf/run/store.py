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
    .dropinf.lock              the writer lock: flock'ed by the one process writing the run

Every file is written under a temporary name unique to the writing process and renamed into
place, so a killed job never leaves a half-written file that looks complete. A shard exists only
once all its rows are in. Only the files named here (and derived caches, and the review's
decisions) count as dropinf's: ``clear`` deletes the run's own files and nothing else, and a
folder holding anything else without a dropinf manifest is refused (see docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dropinf.errors import (
    CorruptRunError,
    IncompleteRunError,
    RunDirectoryError,
    RunLockedError,
    RunNotFoundError,
)

FORMAT_VERSION = 2
META_FIELDS = ("label", "prediction", "loss")
LOCK_FILE = ".dropinf.lock"
GRADIENTS_DIR = "gradients"
MAP_FILE = "umap.npz"
DECISIONS_FILE = "decisions.json"
RETRAIN_REPORT_FILE = "retrain_report.json"
RUN_FILES = (
    "manifest.json",
    "progress.json",
    "compressor.safetensors",
    "curvature.safetensors",
    "self_influence.npy",
    "test_scores.npy",
    "test_meta.npz",
    MAP_FILE,  # derived from the gradients: stale once the run is replaced
)
REVIEW_FILES = (DECISIONS_FILE, f"{DECISIONS_FILE}.lock", RETRAIN_REPORT_FILE)
SHARD_PATTERN = re.compile(r"shard-\d{5}(\.npy|\.meta\.npz)")


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


def _read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; empty when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def is_shard_file(path: Path) -> bool:
    """True for a gradient shard, its metadata, or a temporary of either."""
    return bool(SHARD_PATTERN.fullmatch(path.name)) or (
        path.name.startswith(".shard-") and path.name.endswith(".tmp")
    )


def is_dropinf_manifest(manifest: dict[str, Any]) -> bool:
    """True when a manifest carries dropinf's marker: an integer format and a dropinf version."""
    versions = manifest.get("versions")
    return (
        isinstance(manifest.get("format"), int)
        and isinstance(versions, dict)
        and ("dropinf" in versions)
    )


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
        return self.run_dir / GRADIENTS_DIR

    @property
    def lock_path(self) -> Path:
        """``.dropinf.lock``, the writer lock (never deleted)."""
        return self.run_dir / LOCK_FILE

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
            CorruptRunError: The manifest is not a JSON object.
        """
        if not self.exists():
            raise RunNotFoundError(f"expected a run directory with manifest.json at {self.run_dir}")
        try:
            manifest = json.loads(self.manifest_path.read_bytes())
        except ValueError as error:
            raise CorruptRunError(
                f"expected a JSON manifest at {self.manifest_path}, found invalid JSON ({error}); "
                "remove the folder by hand if it holds nothing of yours"
            ) from None
        if not isinstance(manifest, dict):
            raise CorruptRunError(
                f"expected a JSON object in {self.manifest_path}, found {type(manifest).__name__}"
            )
        return manifest

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

    # the folder: where it may be, what may be in it, who writes it
    def check_location(self) -> None:
        """Check that the run directory is, or can become, a folder of dropinf's.

        Raises:
            RunDirectoryError: The path is a file or lies below one, or the folder holds files
                that dropinf did not write and no manifest.
        """
        for folder in (self.run_dir, *self.run_dir.parents):
            if folder.is_dir():
                break
            if folder.exists() or folder.is_symlink():
                raise RunDirectoryError(
                    f"expected a folder for the run at {self.run_dir}, found a file at {folder}"
                )
        if not self.exists():
            self.refuse_foreign_files()

    def refuse_foreign_files(self) -> None:
        """Refuse a folder that holds anything dropinf did not write.

        Raises:
            RunDirectoryError: It does, listing (some of) those files.
        """
        foreign = self.foreign_entries()
        if foreign:
            names = ", ".join(str(path.relative_to(self.run_dir)) for path in foreign[:5])
            names += ", …" if len(foreign) > 5 else ""
            raise RunDirectoryError(
                f"expected an empty folder or a dropinf run directory at {self.run_dir}, found "
                f"{len(foreign)} files not written by dropinf ({names}); "
                "nothing was changed: choose an empty or new folder"
            )

    def foreign_entries(self) -> list[Path]:
        """Files and folders in the run directory whose names are not dropinf's."""
        if not self.run_dir.is_dir():
            return []
        ours = {*RUN_FILES, *REVIEW_FILES, LOCK_FILE}
        foreign = [
            path
            for path in sorted(self.run_dir.iterdir())
            if path.name not in ours and not is_temporary(path.name) and path != self.gradients_dir
        ]
        if self.gradients_dir.is_dir():
            foreign += [p for p in sorted(self.gradients_dir.iterdir()) if not is_shard_file(p)]
        return foreign

    def prepare(self) -> None:
        """Create the run directory (and its parents).

        Raises:
            RunDirectoryError: It cannot be created (a file in the way, no permission...).
        """
        self.check_location()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunDirectoryError(
                f"expected a writable folder for the run at {self.run_dir}, found: "
                f"{error.strerror or error}"
            ) from None

    @contextlib.contextmanager
    def writer_lock(self, activity: str = "computed") -> Iterator[None]:
        """Hold the run's writer lock for the block: one writing process per run directory.

        Args:
            activity: What the holder does, for the message a second writer gets.

        Raises:
            RunLockedError: Another process holds the lock.
            RunDirectoryError: The run directory cannot be created.
        """
        self.prepare()
        descriptor = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunLockedError(self._locked_message(activity)) from None
            holder = {"pid": os.getpid(), "activity": activity, "since": now_iso()}
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, json.dumps(holder).encode(), 0)
            yield
        finally:
            os.close(descriptor)  # releases the flock, also when the process is killed

    def _locked_message(self, activity: str) -> str:
        holder = _read_json_object(self.lock_path)
        who = f"PID {holder['pid']}" if "pid" in holder else "another process"
        since = f" since {holder['since']}" if "since" in holder else ""
        return (
            f"run directory {self.run_dir} is already being {holder.get('activity', activity)} "
            f"by {who}{since}; wait for it to finish (then the run is reused) or stop that process"
        )

    def clear(self) -> None:
        """Delete the run's own files (manifest first), keeping anything else in the folder.

        Deletes the files in ``RUN_FILES``, the gradient shards and their temporaries; keeps the
        review's decisions, the writer lock and every file dropinf did not write.
        """
        for name in RUN_FILES:
            self.artifact_path(name).unlink(missing_ok=True)
        self.remove_temporaries()
        if self.gradients_dir.is_dir():
            for path in self.gradients_dir.iterdir():
                if is_shard_file(path) and path.is_file():
                    path.unlink()
            with contextlib.suppress(OSError):
                self.gradients_dir.rmdir()  # only when nothing else is in it
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def remove_temporaries(self) -> None:
        """Delete temporaries of the run's files left by killed writers (hold the writer lock)."""
        for name in RUN_FILES:
            for path in self.run_dir.glob(f".{glob.escape(name)}.*.tmp"):
                path.unlink(missing_ok=True)
        if self.gradients_dir.is_dir():
            for path in self.gradients_dir.glob(".shard-*.tmp"):
                path.unlink(missing_ok=True)

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
        temporary = temporary_path(self.artifact_path(name))
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
