"""The facade: ``InfluenceEngine.fit → pairwise_scores / self_influence / query``.

``fit`` streams the training set once through the capture (compressed per-sample gradients into
memmapped shards of the run directory), then fits the damped Fisher from the shards and stores the
self-influence of every training example (the phases are in ``dropinf.engine.phases``). A killed
``fit`` resumes from its last complete shard; one process (or one torchrun job, whose processes
each write their own shards: docs/scale.md) writes a run at a time (the run directory's writer
lock, see docs/reliability.md). Scores are ``I(z', z) = g(z')ᵀ (F + λI)⁻¹
g(z)``: positive = proponent.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dropinf.core import (
    CompressionConfig,
    Curvature,
    CurvatureConfig,
    GradientCapture,
    LossFn,
    batch_to,
    discover_layers,
)
from dropinf.engine import phases
from dropinf.engine.arguments import check_fit_arguments, check_team, resolve_device
from dropinf.engine.distributed import Team, locked_run
from dropinf.engine.fingerprint import dataset_fingerprint
from dropinf.engine.scoring import ShardReader, batch_metadata, influence_scores, score_array
from dropinf.errors import IncompleteRunError
from dropinf.run import RunStore, check_format

SCORE_MEMORY_BYTES = 2**30


class InfluenceEngine:
    """Influence functions on compressed per-sample gradients.

    Args:
        model: The trained model. It is moved to ``device`` and put in eval mode.
        loss_fn: ``loss_fn(model, batch) -> (B,)`` per-sample losses.
        compression: How gradients are compressed (default: dropout, keep ratio 0.25).
        curvature: Curvature kind and damping (default: auto, λ = 0.1 · mean diag F).
        run_dir: Where the run lives; None keeps it in a temporary directory.
        device: ``cpu``, ``cuda``... None picks CUDA when present.
        dtype: Precision of captured gradients, curvature solves and scores.
        store_dtype: Precision of the stored gradients: float16 by default, ``dtype`` when
            ``dtype`` is float64.
        overwrite: Replace a dropinf run whose signature (``SIGNATURE_FIELDS``) differs;
            only dropinf's own files are deleted, never a folder of other files.
        provenance: Free-form facts saved in the manifest (checkpoint hash, data spec...).
        show_progress: Show a tqdm bar with examples/s while fitting.
        shard_rows: Rows per gradient shard; None sizes shards to about 64 MiB.
        score_memory_bytes: The largest ``pairwise_scores`` result kept in memory; a larger
            one is written to a memmap beside the run (its file unlinked at once).

    Raises:
        NoCapturableLayerError: The model has no Linear or Conv2d layer.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        compression: CompressionConfig | None = None,
        curvature: CurvatureConfig | None = None,
        run_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        store_dtype: torch.dtype | None = None,
        overwrite: bool = False,
        provenance: dict[str, Any] | None = None,
        show_progress: bool = False,
        shard_rows: int | None = None,
        score_memory_bytes: int = SCORE_MEMORY_BYTES,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.loss_fn = loss_fn
        self.compression = compression or CompressionConfig()
        self.curvature_config = curvature or CurvatureConfig()
        self.dtype = dtype
        self.store_dtype = store_dtype or (dtype if dtype == torch.float64 else torch.float16)
        self.overwrite, self.provenance = overwrite, provenance or {}
        self.show_progress, self.shard_rows = show_progress, shard_rows
        self.score_memory_bytes = score_memory_bytes
        self.layout = discover_layers(self.model)
        self._temporary = None if run_dir else tempfile.TemporaryDirectory(prefix="dropinf-")
        self.store = RunStore(run_dir or self._temporary.name)
        self.progress = phases.ProgressWriter(self.store)
        self.reader = ShardReader(self.store)
        self.capture: GradientCapture | None = None
        self.curvature: Curvature | None = None
        self.team = Team.current()

    @property
    def model_dtype(self) -> torch.dtype:
        """The dtype of the model's first parameter (inputs are cast to it)."""
        return next(self.model.parameters()).dtype

    def fit(
        self,
        train_dataset: Dataset,
        batch_size: int = 256,
        test_dataset: Dataset | None = None,
        data_fingerprint: str | None = None,
    ) -> InfluenceEngine:
        """Compress every training gradient, fit the curvature and the self-influence.

        Resumes an interrupted run in the same directory; a complete run is only loaded. The
        run directory's writer lock is held throughout: one writer per run.

        Under an initialised ``torch.distributed`` process group (torchrun), every process
        calls ``fit`` with the same arguments and the same ``run_dir`` on a shared filesystem:
        each captures its own contiguous share of the shards, the curvature statistics are
        all-reduced, rank 0 writes the run-wide files, and the run (and its scores, up to
        float32 summation order) is the one a single process computes. Killed, the whole job
        is restarted and each process resumes from its own first missing shard.

        Args:
            train_dataset: Yields ``(inputs, label)`` pairs, in a fixed order.
            batch_size: Examples per capture batch.
            test_dataset: If given, its scores against every training example are stored in
                the run (``RunStore.test_scores``) before the run is marked complete.
            data_fingerprint: Identifies the training data (e.g. ``DatasetBundle.fingerprint``);
                None hashes the inputs and labels of ``train_dataset``.

        Returns:
            self.

        Raises:
            ConfigError: ``batch_size`` is not a positive integer; or, under a process group,
                no ``run_dir`` was given, or the processes were given different data.
            DatasetError: A dataset is empty.
            RunDirectoryError: The run directory is a file, cannot be created, or holds files
                dropinf did not write and no run.
            RunLockedError: Another process (or job) is writing the run directory.
            RunConfigMismatchError: The run directory holds a run with another signature
                (configs, model, data, format) and ``overwrite`` is False.
            NonFiniteError: A loss or gradient is NaN/inf, or overflows the store dtype.
        """
        check_fit_arguments(train_dataset, batch_size, test_dataset)
        self.team = Team.current()
        check_team(self.team, self._temporary is not None)
        fingerprint = data_fingerprint or dataset_fingerprint(train_dataset)
        self.team.check_same("training data fingerprint", fingerprint)
        self.reader.reset()
        with locked_run(self.store, self.team):
            phases.fit_locked(self, train_dataset, batch_size, fingerprint, test_dataset)
        return self

    def pairwise_scores(self, test_dataset: Dataset, batch_size: int = 256) -> torch.Tensor:
        """Influence of every training example on every test example.

        The test gradients are preconditioned once and the stored shards read once; a result
        larger than ``score_memory_bytes`` is a memmap (its file already unlinked: the space
        is freed with the tensor).

        Returns:
            (n_test, n_train) scores in the engine dtype; positive = proponent.
        """
        gradients, _ = self.test_gradients(test_dataset, batch_size)
        return self.scores_of_gradients(gradients)

    def query(self, test_batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """Score new test examples against the stored training gradients, without refitting.

        Args:
            test_batch: ``(inputs, labels)`` of the new examples.

        Returns:
            (B, n_train) scores; positive = proponent.
        """
        self._require_fitted()
        captured = self.capture.capture(self.loss_fn, self._batch(test_batch))
        return self.scores_of_gradients(captured.gradients.to(self.dtype))

    def test_gradients(
        self, test_dataset: Dataset, batch_size: int = 256
    ) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        """Compressed gradients (n_test, k) and label / prediction / loss of a test set."""
        self._require_fitted()
        gradients, metas = [], []
        for batch in DataLoader(test_dataset, batch_size=batch_size, shuffle=False):
            captured = self.capture.capture(self.loss_fn, self._batch(batch))
            gradients.append(captured.gradients.to(self.dtype))
            metas.append(batch_metadata(captured, batch))
        merged = {name: np.concatenate([m[name] for m in metas]) for name in metas[0]}
        return torch.cat(gradients), merged

    def self_influence(self) -> torch.Tensor:
        """``g(z)ᵀ (F + λI)⁻¹ g(z)`` of every training example, (n_train,)."""
        return torch.from_numpy(self.store.self_influence())

    @classmethod
    def load(
        cls,
        run_dir: str | Path,
        model: nn.Module,
        loss_fn: LossFn,
        device: str | torch.device | None = None,
    ) -> InfluenceEngine:
        """Reopen a complete run to query it (no gradient is recomputed).

        Raises:
            RunNotFoundError: No run in ``run_dir``.
            IncompleteRunError: The run has not finished.
            RunConfigMismatchError: ``model`` is not the model the run was computed on.
        """
        manifest = RunStore(run_dir).read_manifest()
        check_format(manifest, run_dir)
        engine = cls(
            model,
            loss_fn,
            CompressionConfig.from_dict(manifest["compression"]),
            CurvatureConfig.from_dict(manifest["curvature"]),
            run_dir=run_dir,
            device=device,
            dtype=getattr(torch, manifest["dtype"]),
            store_dtype=getattr(torch, manifest["store_dtype"]),
            provenance=manifest["provenance"],
        )
        phases.check_reopenable(engine, manifest)
        phases.restore_state(engine)
        return engine

    def scores_of_gradients(self, test_gradients: torch.Tensor) -> torch.Tensor:
        """(m, n_train) scores of compressed test gradients (m, k) against the stored ones."""
        self._require_fitted()
        n_test, n_train = test_gradients.shape[0], self.reader.n_rows
        out = score_array(n_test, n_train, self.dtype, self.score_memory_bytes, self.store.run_dir)
        return influence_scores(
            self.curvature, test_gradients, self.reader, self.device, self.dtype, out
        )

    def _require_fitted(self) -> None:
        if self.capture is None or self.curvature is None:
            raise IncompleteRunError("call fit() (or InfluenceEngine.load) before scoring")

    def _batch(self, batch: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return batch_to(batch, self.device, self.model_dtype)
