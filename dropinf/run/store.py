"""The on-disk run store: every file of a run directory is read and written here.

Layout of a run directory::

    manifest.json              config, versions, provenance, layer table, k, n, status, rows done
    progress.json              phase, done, total, examples/s, ETA (rewritten while a job runs)
    compressor.safetensors     dropout masks (projections are regenerated from the seed)
    gradients/shard-NNNNN.npy  (rows, k) compressed training gradients, memmapped
    gradients/shard-NNNNN.meta.npz   label, prediction, loss of those rows
    gradients/shard-NNNNN.kfac.safetensors   K-FAC factor sums of those rows (kfac / ekfac runs)
    curvature.safetensors      the fitted curvature (Cholesky / low-rank / Kronecker blocks)
    self_influence.npy         (n_train,)
    test_scores.npy            (n_test, n_train), + = proponent
    test_meta.npz              label, prediction, loss of the test examples
    .dropinf.lock              the writer lock: flock'ed by the one process writing the run
                               (under torchrun, by rank 0 for the whole job)

Every file is written under a temporary name unique to the writing process and renamed into
place (``dropinf.run.files``), so a killed job never leaves a half-written file that looks
complete. A shard exists only once all its rows are in (``dropinf.run.shards``); shard i holds
rows ``i·shard_rows`` onwards whichever process wrote it, so a run computed by several processes
(each writing its own shards into the shared folder) has the same layout. The manifest's
schema and reuse rule live in ``dropinf.run.manifest``. Only the files named here (and derived
caches, and the review's decisions) count as dropinf's: ``clear`` deletes the run's own files and
nothing else, and a folder holding anything else without a dropinf manifest is refused (see
docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from dropinf.core import CompressionConfig, LayerCompressor, LayerSpec
from dropinf.errors import (
    CorruptRunError,
    IncompleteRunError,
    RunDirectoryError,
    RunLockedError,
    RunNotFoundError,
)
from dropinf.run.compressors import compressor_tensors, restore_compressors
from dropinf.run.files import (
    atomic_write_json,
    is_temporary,
    load_npz,
    now_iso,
    read_json_object,
    save_npy,
    save_npz,
    save_tensors,
)
from dropinf.run.shards import (
    META_FIELDS,
    ShardWriter,
    is_shard_file,
    kronecker_path,
    meta_path,
    typed_metadata,
)

LOCK_FILE = ".dropinf.lock"
GRADIENTS_DIR = "gradients"
MANIFEST_FILE = "manifest.json"
PROGRESS_FILE = "progress.json"
COMPRESSOR_FILE = "compressor.safetensors"
CURVATURE_FILE = "curvature.safetensors"
SELF_INFLUENCE_FILE = "self_influence.npy"
TEST_SCORES_FILE = "test_scores.npy"
TEST_META_FILE = "test_meta.npz"
MAP_FILE = "umap.npz"
DECISIONS_FILE = "decisions.json"
RETRAIN_REPORT_FILE = "retrain_report.json"
RUN_FILES = (
    MANIFEST_FILE,
    PROGRESS_FILE,
    COMPRESSOR_FILE,
    CURVATURE_FILE,
    SELF_INFLUENCE_FILE,
    TEST_SCORES_FILE,
    TEST_META_FILE,
    MAP_FILE,  # derived from the gradients: stale once the run is replaced
)
REVIEW_FILES = (DECISIONS_FILE, f"{DECISIONS_FILE}.lock", RETRAIN_REPORT_FILE)


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
        return self.run_dir / MANIFEST_FILE

    @property
    def progress_path(self) -> Path:
        """``progress.json``."""
        return self.run_dir / PROGRESS_FILE

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
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):  # not made since
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
            holder = json.dumps({"pid": os.getpid(), "activity": activity, "since": now_iso()})
            os.pwrite(descriptor, holder.encode(), 0)  # never empty: written, then cut to size
            os.ftruncate(descriptor, len(holder.encode()))
            yield
        finally:
            os.close(descriptor)  # releases the flock, also when the process is killed

    def _locked_message(self, activity: str) -> str:
        holder = self._lock_holder()
        who = f"PID {holder['pid']}" if "pid" in holder else "another process"
        since = f" since {holder['since']}" if "since" in holder else ""
        return (
            f"run directory {self.run_dir} is already being {holder.get('activity', activity)} "
            f"by {who}{since}; wait for it to finish (then the run is reused) or stop that process"
        )

    def _lock_holder(self, attempts: int = 40) -> dict[str, Any]:
        """The lock holder's record; waits briefly for a holder that has locked but not yet written.

        Args:
            attempts: Reads 25 ms apart before settling for an unnamed holder.
        """
        for _ in range(attempts):
            holder = read_json_object(self.lock_path)
            if "pid" in holder:
                return holder
            time.sleep(0.025)
        return holder

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

    def iter_gradient_shards(self, indices: Iterable[int] | None = None) -> Iterator[np.ndarray]:
        """The published shards (or those of ``indices``), memmapped read-only, in row order.

        Raises:
            IncompleteRunError: A shard of ``indices`` is not published.
        """
        for path in self.gradient_shard_paths(indices):
            yield np.load(path, mmap_mode="r")

    def gradient_shard_paths(self, indices: Iterable[int] | None = None) -> list[Path]:
        """The published shards' paths (or those of ``indices``), in row order.

        Raises:
            IncompleteRunError: A shard of ``indices`` is not published.
        """
        if indices is None:
            return self.complete_shards()
        return [self._existing(self.shard_path(index)) for index in indices]

    def kronecker_states(
        self, indices: Iterable[int] | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        """The K-FAC factor sums published with each shard (or those of ``indices``), in order.

        Sum them for the run's (or a process's share of it).

        Raises:
            CorruptRunError: A published shard lacks its statistics (a run computed for
                another curvature kind, or a file removed by hand).
            IncompleteRunError: A shard of ``indices`` is not published.
        """
        for path in self.gradient_shard_paths(indices):
            statistics = kronecker_path(path)
            if not statistics.is_file():
                raise CorruptRunError(
                    f"expected K-FAC statistics {statistics.name} beside {path.name} in "
                    f"{self.gradients_dir}, found none; recompute the run with --overwrite"
                )
            yield load_file(statistics)

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

    # compressors and curvature
    @property
    def compressor_path(self) -> Path:
        """``compressor.safetensors``: what rebuilds the run's compressors."""
        return self.artifact_path(COMPRESSOR_FILE)

    def compressor_exists(self) -> bool:
        """True when the compressors were saved."""
        return self.compressor_path.is_file()

    def save_compressors(self, compressors: Sequence[LayerCompressor]) -> None:
        """Save what rebuilds the run's compressors (dropout masks; the rest is the seed)."""
        save_tensors(self.compressor_path, compressor_tensors(compressors))

    def load_compressors(
        self, specs: Sequence[LayerSpec], compression: CompressionConfig
    ) -> list[LayerCompressor]:
        """The run's compressors, one per captured layer, on the CPU.

        Args:
            specs: The captured layers, in capture order.
            compression: The run's compression config.

        Raises:
            IncompleteRunError: The compressors have not been saved yet.
        """
        return restore_compressors(
            load_file(self._existing(self.compressor_path)), specs, compression
        )

    @property
    def curvature_path(self) -> Path:
        """``curvature.safetensors``: the fitted curvature's state."""
        return self.artifact_path(CURVATURE_FILE)

    def curvature_exists(self) -> bool:
        """True when the curvature was saved."""
        return self.curvature_path.is_file()

    def save_curvature(self, state: dict[str, torch.Tensor]) -> None:
        """Save the fitted curvature's state (``Curvature.state``)."""
        save_tensors(self.curvature_path, state)

    def load_curvature(self) -> dict[str, torch.Tensor]:
        """The fitted curvature's state (``Curvature.from_state`` rebuilds it).

        Raises:
            IncompleteRunError: The curvature has not been saved yet.
        """
        return load_file(self._existing(self.curvature_path))

    # results
    @property
    def self_influence_path(self) -> Path:
        """``self_influence.npy``."""
        return self.artifact_path(SELF_INFLUENCE_FILE)

    def self_influence_exists(self) -> bool:
        """True when the self-influence was saved."""
        return self.self_influence_path.is_file()

    def save_self_influence(self, values: np.ndarray) -> None:
        """Save the self-influence of every training example."""
        save_npy(self.self_influence_path, values)

    def self_influence(self) -> np.ndarray:
        """Self-influence of every training example, (n_train,).

        Raises:
            IncompleteRunError: The run has not computed it yet.
        """
        return self._load_array(self.self_influence_path)

    @property
    def test_scores_path(self) -> Path:
        """``test_scores.npy``."""
        return self.artifact_path(TEST_SCORES_FILE)

    def save_test_scores(self, scores: np.ndarray, meta: dict[str, np.ndarray]) -> None:
        """Save test-by-train scores and the test examples' label, prediction and loss."""
        save_npz(self.artifact_path(TEST_META_FILE), meta)
        save_npy(self.test_scores_path, scores)

    def test_scores_exist(self) -> bool:
        """True when test scores were saved."""
        return self.test_scores_path.is_file()

    def test_scores(self) -> np.ndarray:
        """Test-by-train influence scores, (n_test, n_train); + = proponent."""
        return self._load_array(self.test_scores_path, mmap=True)

    def test_metadata(self) -> dict[str, np.ndarray]:
        """Label, prediction and loss of the scored test examples."""
        path = self.artifact_path(TEST_META_FILE)
        if not path.is_file():
            raise IncompleteRunError(f"run {self.run_dir} has no test scores yet")
        return typed_metadata(load_npz(path))

    def _load_array(self, path: Path, mmap: bool = False) -> np.ndarray:
        return np.load(self._existing(path), mmap_mode="r" if mmap else None, allow_pickle=False)

    def _existing(self, path: Path) -> Path:
        """``path``, once the run has written it.

        Raises:
            IncompleteRunError: It has not been written yet.
        """
        if not path.is_file():
            raise IncompleteRunError(f"run {self.run_dir} has no {path.name} yet")
        return path
