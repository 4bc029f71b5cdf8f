"""Runs over several checkpoints: the top level of an ensemble run and its checkpoints.

An ensemble run directory holds one complete, normal run per checkpoint, and at its top level
the scores combined across them, laid out so that ``RunStore`` and ``RunReview`` open it like
any run::

    manifest.json                  the last checkpoint's run manifest + an ``ensemble`` section
    self_influence.npy             the combined self-influence
    test_scores.npy, test_meta.npz the combined test scores (when the checkpoints have them)
    compressor.safetensors, curvature.safetensors, gradients/   hard links to the last
                                   checkpoint's files (its gradients: map, proponents, queries)
    ensemble_scores.npz            combined and per-checkpoint scores (``ENSEMBLE_ARRAYS``)
    checkpoints_progress.json      which checkpoint is being computed (a named job progress)
    checkpoints/NN-<name>/         one normal run per checkpoint (resumable, reused each)

The ``ensemble`` section names the checkpoints (path, sha256, epoch, learning rate, sub-run), the
combination and the signature the top level is reused by. This module also lists and checks
checkpoint files for an ensemble: a folder's checkpoints in epoch order, and one architecture,
one shape and one training set for all of them.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dropinf.errors import CheckpointError, CheckpointMismatchError, IncompleteRunError
from dropinf.run.files import (
    atomic_write_json,
    load_npz,
    read_json_object,
    save_npz,
    temporary_path,
)
from dropinf.run.jobs import job_progress_path
from dropinf.run.shards import is_shard_file, kronecker_path, meta_path
from dropinf.run.store import LOCK_FILE, RunStore

if TYPE_CHECKING:
    from dropinf.models import LoadedCheckpoint

ENSEMBLE_FORMAT = 1
CHECKPOINTS_DIR = "checkpoints"
ENSEMBLE_SCORES_FILE = "ensemble_scores.npz"
CHECKPOINTS_JOB = "checkpoints"  # the named progress: checkpoints done of all
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
# Combined (n_train,) arrays, then per-checkpoint (C, n_train) ones, then (C,) weights.
ENSEMBLE_ARRAYS = (
    "self_influence",
    "leave_one_out_loss",
    "loss",
    "checkpoint_self_influence",
    "checkpoint_loss",
    "checkpoint_prediction",
    "weights",
)
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def sub_run_name(index: int, name: str) -> str:
    """The folder of checkpoint ``index``'s run: ``NN-<name>`` (``name`` made path-safe)."""
    safe = _UNSAFE_NAME.sub("_", Path(name).stem).strip("._") or "model"
    return f"{index:02d}-{safe[:60]}"


def ensemble_section(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``ensemble`` section of a run manifest, or None for a run of one model."""
    section = (manifest or {}).get("ensemble")
    return section if isinstance(section, dict) else None


class EnsembleStore:
    """Reads and writes the ensemble files of a run directory, beside its ``RunStore``.

    Args:
        store: The store of the ensemble run's top level.
    """

    def __init__(self, store: RunStore) -> None:
        self.store = store

    @property
    def run_dir(self) -> Path:
        """The top-level run directory."""
        return self.store.run_dir

    @property
    def checkpoints_dir(self) -> Path:
        """``checkpoints/``: one run directory per checkpoint."""
        return self.run_dir / CHECKPOINTS_DIR

    def sub_run_dir(self, name: str) -> Path:
        """The run directory of the checkpoint whose sub-run is called ``name``."""
        return self.checkpoints_dir / name

    def sub_run_dirs(self) -> list[Path]:
        """The checkpoints' run directories named by the manifest, in checkpoint order.

        Raises:
            IncompleteRunError: The run is not an ensemble run.
        """
        section = ensemble_section(self.store.manifest_or_none())
        if section is None:
            raise IncompleteRunError(f"run {self.run_dir} is not a run over several checkpoints")
        return [self.sub_run_dir(entry["run"]) for entry in section["checkpoints"]]

    @property
    def scores_path(self) -> Path:
        """``ensemble_scores.npz``."""
        return self.run_dir / ENSEMBLE_SCORES_FILE

    def save_scores(self, arrays: dict[str, np.ndarray]) -> None:
        """Save the combined and per-checkpoint scores (the names in ``ENSEMBLE_ARRAYS``)."""
        save_npz(self.scores_path, {name: arrays[name] for name in ENSEMBLE_ARRAYS})

    def scores_exist(self) -> bool:
        """True when the ensemble scores were saved."""
        return self.scores_path.is_file()

    def load_scores(self) -> dict[str, np.ndarray]:
        """The combined and per-checkpoint scores, by the names in ``ENSEMBLE_ARRAYS``.

        Raises:
            IncompleteRunError: They have not been saved yet.
        """
        if not self.scores_exist():
            raise IncompleteRunError(f"run {self.run_dir} has no {ENSEMBLE_SCORES_FILE} yet")
        return load_npz(self.scores_path)

    @property
    def progress_path(self) -> Path:
        """``checkpoints_progress.json``, read back by ``job_status(run, CHECKPOINTS_JOB)``."""
        return job_progress_path(self.run_dir, CHECKPOINTS_JOB)

    def write_checkpoint_progress(self, done: int, total: int, name: str) -> None:
        """Report ``done`` of ``total`` checkpoints computed, ``name`` the one in progress."""
        progress = {"phase": "checkpoints", "done": done, "total": total, "checkpoint": name}
        atomic_write_json(self.progress_path, progress)

    def read_checkpoint_progress(self) -> dict[str, Any]:
        """The last checkpoint progress written ({} when none)."""
        return read_json_object(self.progress_path)

    def clear(self) -> None:
        """Delete the top level's own files, ensemble ones included; keep the checkpoints' runs."""
        self.store.clear()
        self.scores_path.unlink(missing_ok=True)
        self.progress_path.unlink(missing_ok=True)

    def publish_gradients_of(self, source: RunStore) -> None:
        """Give the top level the compressors, curvature and gradient shards of ``source``.

        Files are hard-linked (copied where the file system cannot link), so they cost no
        space and ``RunStore.clear`` of either run never touches the other's data. A shard's
        metadata and statistics are linked before the shard: a published shard has them.
        """
        self._remove_shards()
        _link(source.compressor_path, self.store.compressor_path)
        _link(source.curvature_path, self.store.curvature_path)
        self.store.gradients_dir.mkdir(parents=True, exist_ok=True)
        for shard in source.complete_shards():
            target = self.store.gradients_dir / shard.name
            for companion, into in ((meta_path, meta_path), (kronecker_path, kronecker_path)):
                if companion(shard).is_file():
                    _link(companion(shard), into(target))
            _link(shard, target)

    def _remove_shards(self) -> None:
        if self.store.gradients_dir.is_dir():
            for path in sorted(self.store.gradients_dir.iterdir(), reverse=True):  # .npy first
                if is_shard_file(path) and path.is_file():
                    path.unlink()


def _link(source: Path, target: Path) -> None:
    """Publish ``source`` at ``target`` as a hard link (a copy where links fail), atomically."""
    temporary = temporary_path(target)
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def checkpoint_files(folder: str | Path) -> list[Path]:
    """The checkpoint files of a folder (``CHECKPOINT_SUFFIXES``), by name; sidecars excluded.

    Raises:
        CheckpointError: ``folder`` is not a folder, or holds no checkpoint.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"expected a folder of checkpoints at {folder}, found none")
    found = sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and path.suffix in CHECKPOINT_SUFFIXES and not path.name.startswith(".")
    )
    if not found:
        raise CheckpointError(
            f"expected checkpoints ({', '.join('*' + s for s in CHECKPOINT_SUFFIXES)}) in "
            f"{folder}, found none"
        )
    return found


def checkpoint_epoch(checkpoint: LoadedCheckpoint) -> int | None:
    """The epoch a checkpoint was taken after (``extra.epoch``), or None when not recorded."""
    epoch = checkpoint.extra.get("epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def checkpoint_learning_rate(checkpoint: LoadedCheckpoint) -> float | None:
    """The learning rate of the recipe a checkpoint was trained with, or None when unknown."""
    recipe = checkpoint.extra.get("recipe")
    rate = recipe.get("lr") if isinstance(recipe, dict) else None
    valid = isinstance(rate, int | float) and not isinstance(rate, bool)
    return float(rate) if valid and math.isfinite(rate) and rate > 0 else None


def in_epoch_order(checkpoints: Sequence[LoadedCheckpoint]) -> list[LoadedCheckpoint]:
    """Checkpoints ordered by the epoch in their metadata, then by file name (no epoch last)."""

    def key(checkpoint: LoadedCheckpoint) -> tuple[bool, int, str]:
        epoch = checkpoint_epoch(checkpoint)
        return epoch is None, epoch or 0, checkpoint.path.name

    return sorted(checkpoints, key=key)


def check_one_model_family(checkpoints: Sequence[LoadedCheckpoint]) -> None:
    """Refuse checkpoints that cannot form one ensemble, naming the odd one out.

    Checked in turn: one file given twice, one architecture and arguments, one set of tensor
    names and shapes, and one training set among those that record a data fingerprint.

    Raises:
        CheckpointMismatchError: They differ; the message names the checkpoint(s) that differ
            from the others and what the others have.
    """
    paths = [checkpoint.path.resolve() for checkpoint in checkpoints]
    twice = [path for path, count in Counter(paths).items() if count > 1]
    if twice:
        raise CheckpointMismatchError(
            f"expected each checkpoint once in an ensemble, found {twice[0]} given twice"
        )
    _refuse_odd_one_out(checkpoints, "architecture", _architecture_of)
    _refuse_odd_one_out(checkpoints, "tensor shapes", _shapes_of)
    recorded = [c for c in checkpoints if isinstance(c.extra.get("data_fingerprint"), str)]
    _refuse_odd_one_out(
        recorded, "training data fingerprint", lambda c: c.extra["data_fingerprint"][:12]
    )


def _architecture_of(checkpoint: LoadedCheckpoint) -> str:
    return f"{checkpoint.arch} {sorted(checkpoint.arch_args.items())}"


def _shapes_of(checkpoint: LoadedCheckpoint) -> str:
    state = checkpoint.model.state_dict()
    return str(sorted((name, tuple(tensor.shape)) for name, tensor in state.items()))


def _refuse_odd_one_out(
    checkpoints: Sequence[LoadedCheckpoint],
    what: str,
    describe: Callable[[LoadedCheckpoint], str],
) -> None:
    """Refuse when ``describe`` differs among ``checkpoints``, naming the odd ones out.

    The odd ones are those differing from the most common description (the first one's on a tie).
    """
    descriptions = [describe(checkpoint) for checkpoint in checkpoints]
    if len(set(descriptions)) <= 1:
        return
    counts = Counter(descriptions)
    common = max(counts, key=lambda text: (counts[text], -descriptions.index(text)))
    odd = [c for c, text in zip(checkpoints, descriptions, strict=True) if text != common]
    shown = ", ".join(f"{c.path.name} ({_short(describe(c))})" for c in odd[:3])
    raise CheckpointMismatchError(
        f"expected one {what} for all checkpoints of an ensemble ({_short(common)}), found "
        f"{shown}{', …' if len(odd) > 3 else ''}"
    )


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def remove_stale_sub_runs(ensemble: EnsembleStore, keep: Sequence[str]) -> None:
    """Clear the runs of ``checkpoints/`` no longer in the ensemble (their own files only).

    Each is cleared under its writer lock; its folder goes too when nothing else is left in it.

    Raises:
        RunLockedError: Another process is writing one of them.
    """
    if not ensemble.checkpoints_dir.is_dir():
        return
    for folder in sorted(ensemble.checkpoints_dir.iterdir()):
        stale = RunStore(folder)
        if folder.is_dir() and folder.name not in keep and stale.exists():
            with stale.writer_lock("cleared"):
                stale.clear()
            with contextlib.suppress(OSError):
                (folder / LOCK_FILE).unlink()
                folder.rmdir()
