"""Influence along the training trajectory: one run over several checkpoints of one model.

A model trained to convergence memorises its wrong labels, and its self-influence then hides
them; the checkpoints it passed through on the way do not (TracIn sums over checkpoints, TRAK
ensembles over models, for the same reason). ``EnsembleEngine`` fits one normal
``InfluenceEngine`` run per checkpoint, with the same compression and curvature configs, under
``RUN/checkpoints/NN-<name>/`` (each resumable, each reused when complete), then combines their
scores across checkpoints (``combine_scores``) into the top level of the run directory, which
``RunStore`` / ``RunReview`` open like any run (layout: ``dropinf.run.ensemble``).

What is combined: self-influence, the leave-one-out loss estimate (``loss + self_influence / N``,
the review queue's score), the loss, and test-by-train scores. What stays per checkpoint: the
gradients, compressors and curvature (the top level links the last checkpoint's, so the
gradient map, proponents and ``InfluenceEngine.load`` of the top level are the last model's).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from dropinf.core import CompressionConfig, CurvatureConfig, LossFn
from dropinf.engine import phases
from dropinf.engine.arguments import check_fit_arguments, resolve_device
from dropinf.engine.distributed import Team, locked_run
from dropinf.engine.facade import InfluenceEngine
from dropinf.engine.fingerprint import dataset_fingerprint
from dropinf.errors import (
    ConfigError,
    IncompleteRunError,
    RunConfigMismatchError,
    RunDirectoryError,
)
from dropinf.run import SIGNATURE_FIELDS, RunStore, is_dropinf_manifest
from dropinf.run.ensemble import (
    ENSEMBLE_FORMAT,
    EnsembleStore,
    ensemble_section,
    remove_stale_sub_runs,
    sub_run_name,
)

COMBINATIONS = ("rank", "standardised", "tracin")
# Measured on the memorising setting (bench/ensemble.py, bench/RESULTS.md §8), ROC AUC of the
# flips by the combined leave-one-out estimate, all 10 checkpoints / the 6 from epoch 16 on:
# tracin 0.998 / 0.994, standardised 0.996 / 0.974, rank 0.993 / 0.969 (final model alone
# 0.879). The raw (learning-rate-weighted) mean keeps each checkpoint's scale: a checkpoint that
# has memorised every label scores every example low and barely moves the mean, where rank and
# z-scores give it a full vote for the flips it hides.
DEFAULT_COMBINATION = "tracin"
# The combined array the review queue ranks an ensemble run by.
ENSEMBLE_RANKING = "leave_one_out_loss"
TEST_ROWS_PER_CHUNK = 256


@dataclass(frozen=True)
class CheckpointInfo:
    """Where one model of an ensemble came from (recorded in the run's manifest).

    Attributes:
        name: A short name; its sub-run is ``checkpoints/NN-<name>``.
        path: The checkpoint file, if any.
        sha256: The checkpoint file's sha256, if known.
        epoch: The epoch after which the weights were taken, if known.
        learning_rate: The learning rate at that point of training (TracIn's weight), if known.
    """

    name: str
    path: str | None = None
    sha256: str | None = None
    epoch: int | None = None
    learning_rate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields."""
        return asdict(self)


def combine_scores(
    per_checkpoint: np.ndarray, combination: str, weights: Sequence[float] | None = None
) -> np.ndarray:
    """Combine scores across checkpoints, each row over its last axis (the training examples).

    ``rank``: the mean over checkpoints of each score's rank among the training examples, as a
    share in (0, 1] (ties share their mean rank); scale-free, so no checkpoint dominates. Fit for
    ranking suspects, not for attribution: summed over a subset, rank shares lose the magnitudes
    that make a few examples decisive (peers-grid LDS 0.17–0.45, below the final model alone;
    bench/RESULTS.md §9).
    ``standardised``: the mean of the scores standardised per checkpoint (zero mean, unit
    variance over the training examples). ``tracin``: the learning-rate-weighted mean of the raw
    scores (TracIn's sum over checkpoints, divided by the summed rates: the same order), uniform
    when ``weights`` is None; the checkpoints with the largest scores dominate it.

    Args:
        per_checkpoint: (C, ..., n_train) scores of each checkpoint.
        combination: One of ``COMBINATIONS``.
        weights: (C,) non-negative weights of ``tracin`` (learning rates); ignored otherwise.

    Returns:
        (..., n_train) float64 combined scores; higher = more of what the scores measure.

    Raises:
        ConfigError: Unknown ``combination``, or weights that do not fit.
    """
    from scipy.stats import rankdata  # imported here: the CLI's start stays quick

    values = np.asarray(per_checkpoint, dtype=np.float64)
    if combination == "rank":
        return (rankdata(values, axis=-1) / values.shape[-1]).mean(axis=0)
    if combination == "standardised":
        centred = values - values.mean(axis=-1, keepdims=True)
        spread = centred.std(axis=-1, keepdims=True)
        return np.divide(centred, spread, out=np.zeros_like(centred), where=spread > 0).mean(0)
    if combination == "tracin":
        rates = tracin_weights(weights, len(values))
        return np.tensordot(rates / rates.sum(), values, axes=1)
    raise ConfigError(
        f"combination: expected one of {', '.join(COMBINATIONS)}, found {combination!r}"
    )


def tracin_weights(weights: Sequence[float] | None, count: int) -> np.ndarray:
    """(count,) TracIn weights: ``weights`` checked, or uniform ones.

    Raises:
        ConfigError: Not ``count`` finite non-negative numbers with a positive sum.
    """
    if weights is None:
        return np.ones(count)
    rates = np.asarray(weights, dtype=np.float64).ravel()
    if rates.size != count or not np.isfinite(rates).all() or (rates < 0).any() or rates.sum() <= 0:
        raise ConfigError(
            f"weights: expected {count} finite non-negative learning rates with a positive sum, "
            f"found {list(weights)}"
        )
    return rates


def leave_one_out_losses(self_influence: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """``loss + self_influence / N`` per row: the review's leave-one-out estimate, per checkpoint.

    The same estimate as ``dropinf.review.leave_one_out_loss`` (the engine never imports the
    review), applied to (C, n_train) arrays.
    """
    return losses + self_influence / self_influence.shape[-1]


class EnsembleEngine:
    """Influence functions over several checkpoints of one model, combined across them.

    Args:
        models: The checkpoints' models, in training order (the last is the final model). They
            must share one architecture (parameter names and shapes).
        loss_fn: ``loss_fn(model, batch) -> (B,)`` per-sample losses.
        compression: How gradients are compressed, the same for every checkpoint.
        curvature: Curvature kind and damping, the same for every checkpoint.
        run_dir: Where the run lives; None keeps it in a temporary directory.
        device: ``cpu``, ``cuda``... None picks CUDA when present.
        dtype: Precision of captured gradients, curvature solves and scores.
        store_dtype: Precision of the stored gradients (see ``InfluenceEngine``).
        overwrite: Replace a run (the top level or a checkpoint's) whose signature differs.
        provenance: Free-form facts saved in every manifest; each checkpoint's run also records
            its ``checkpoint``, ``checkpoint_sha256`` and ``epoch``.
        checkpoints: Where each model came from; None names them ``model-N``.
        combination: How scores are combined across checkpoints (``COMBINATIONS``).
        show_progress: Show a tqdm bar per checkpoint.
        shard_rows: Rows per gradient shard; None sizes shards to about 64 MiB.

    Raises:
        ConfigError: No model, an unknown combination, ``checkpoints`` of another length, or
            models of different architectures (naming the odd one out).
        NoCapturableLayerError: The models have no Linear or Conv2d layer.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        loss_fn: LossFn,
        compression: CompressionConfig | None = None,
        curvature: CurvatureConfig | None = None,
        run_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        store_dtype: torch.dtype | None = None,
        overwrite: bool = False,
        provenance: dict[str, Any] | None = None,
        checkpoints: Sequence[CheckpointInfo] | None = None,
        combination: str = DEFAULT_COMBINATION,
        show_progress: bool = False,
        shard_rows: int | None = None,
    ) -> None:
        models = list(models)
        self.checkpoints = _checked_checkpoints(models, checkpoints, combination)
        self.combination, self.overwrite = combination, overwrite
        self.provenance, self.show_progress = dict(provenance or {}), show_progress
        self.dtype, self.device = dtype, resolve_device(device)
        self._temporary = None if run_dir else tempfile.TemporaryDirectory(prefix="dropinf-")
        self.store = RunStore(run_dir or self._temporary.name)
        self.ensemble_store = EnsembleStore(self.store)
        self.run_names = [sub_run_name(i, c.name) for i, c in enumerate(self.checkpoints)]
        self.engines = [
            InfluenceEngine(
                model,
                loss_fn,
                compression,
                curvature,
                run_dir=self.ensemble_store.sub_run_dir(name),
                device=self.device,
                dtype=dtype,
                store_dtype=store_dtype,
                overwrite=overwrite,
                provenance=self._checkpoint_provenance(checkpoint),
                show_progress=show_progress,
                shard_rows=shard_rows,
            )
            for model, checkpoint, name in zip(
                models, self.checkpoints, self.run_names, strict=True
            )
        ]

    @property
    def weights(self) -> list[float]:
        """The checkpoints' TracIn weights: their learning rates when all are known, else 1."""
        rates = [checkpoint.learning_rate for checkpoint in self.checkpoints]
        return [float(r) for r in rates] if None not in rates else [1.0] * len(rates)

    def fit(
        self,
        train_dataset: Dataset,
        batch_size: int = 256,
        test_dataset: Dataset | None = None,
        data_fingerprint: str | None = None,
    ) -> EnsembleEngine:
        """Fit every checkpoint's run (each reused when complete), then combine their scores.

        The top level's writer lock is held throughout; each checkpoint's run also takes its own.
        A complete ensemble with the same signature (every checkpoint run's signature, their
        order, the combination and its weights) and, if given, the same test set is only loaded.

        Args:
            train_dataset: Yields ``(inputs, label)`` pairs, in a fixed order.
            batch_size: Examples per capture batch.
            test_dataset: If given, its combined scores against every training example are
                stored at the top level (and each checkpoint's in its run).
            data_fingerprint: Identifies the training data; None hashes ``train_dataset``.

        Returns:
            self.

        Raises:
            RunConfigMismatchError: The run directory holds another run (another ensemble, a run
                of one model) and ``overwrite`` is False; or a checkpoint's run differs.
            RunDirectoryError, RunLockedError, NonFiniteError...: As ``InfluenceEngine.fit``.
        """
        check_fit_arguments(train_dataset, batch_size, test_dataset)
        fingerprint = data_fingerprint or dataset_fingerprint(train_dataset)
        test = None if test_dataset is None else (test_dataset, dataset_fingerprint(test_dataset))
        team = Team.current()
        with locked_run(self.store, team):
            signature = self.signature(len(train_dataset), fingerprint)
            if team.from_leader(lambda: self._open_top(signature, test)):
                self._fit_checkpoints(train_dataset, batch_size, test, fingerprint, team)
                return self
            self._run_locked(train_dataset, batch_size, test, fingerprint, signature, team)
        return self

    def signature(self, n_train: int, data_fingerprint: str) -> dict[str, Any]:
        """What the top level's scores depend on.

        Every checkpoint run's signature (``SIGNATURE_FIELDS``), in order, and the combination
        with its weights.
        """
        runs = []
        for name, engine in zip(self.run_names, self.engines, strict=True):
            fresh = phases.fresh_manifest(engine, n_train, data_fingerprint)
            runs.append({"run": name, **{field: fresh[field] for field in SIGNATURE_FIELDS}})
        return {
            "format": ENSEMBLE_FORMAT,
            "combination": self.combination,
            "weights": self.weights,
            "runs": runs,
        }

    def _open_top(self, signature: dict[str, Any], test: tuple[Dataset, str] | None) -> bool:
        """Check the top level against ``signature``; True when it is complete and reusable.

        Raises:
            RunDirectoryError: The folder holds a manifest dropinf did not write.
            RunConfigMismatchError: It holds another run and ``overwrite`` is False.
        """
        saved = self.store.manifest_or_none()
        if saved is None:
            self.store.refuse_foreign_files()
        elif not is_dropinf_manifest(saved):
            raise RunDirectoryError(
                f"expected an empty folder or a dropinf run directory at {self.store.run_dir}, "
                "found a manifest.json that dropinf did not write; nothing was changed"
            )
        else:
            section = ensemble_section(saved) or {}
            if section.get("signature") == signature:
                tested = test is None or saved.get("test_fingerprint") == test[1]
                return saved.get("status") == "complete" and tested
            if not self.overwrite:
                raise RunConfigMismatchError(self._mismatch_message(saved, signature))
            self.ensemble_store.clear()
        remove_stale_sub_runs(self.ensemble_store, self.run_names)
        self.store.write_manifest(self._running_manifest(signature))
        return False

    def _mismatch_message(self, saved: dict[str, Any], signature: dict[str, Any]) -> str:
        section = ensemble_section(saved)
        if section is None:
            found = "a run of one model"
        else:
            found = "another ensemble (" + ", ".join(_differences(section, signature)) + ")"
        return (
            f"run directory {self.store.run_dir} holds {found}; expected the ensemble of "
            f"{len(self.engines)} checkpoints asked for. Use another directory or --overwrite "
            "(overwrite=True)."
        )

    def _running_manifest(self, signature: dict[str, Any]) -> dict[str, Any]:
        """The top level's manifest while its checkpoints are computed.

        Its model fingerprint names the ensemble, so no run of one model is ever taken for it.
        """
        base = phases.fresh_manifest(self.engines[-1], signature["runs"][-1]["n_train"], "")
        digest = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()
        return {
            **base,
            "data_fingerprint": signature["runs"][-1]["data_fingerprint"],
            "model_fingerprint": f"ensemble:{digest}",
            "status": "running",
            "provenance": self.provenance,
            "ensemble": self._section(signature),
        }

    def _section(self, signature: dict[str, Any]) -> dict[str, Any]:
        entries = [
            {**checkpoint.to_dict(), "run": name, "model_fingerprint": run["model_fingerprint"]}
            for checkpoint, name, run in zip(
                self.checkpoints, self.run_names, signature["runs"], strict=True
            )
        ]
        return {
            "format": ENSEMBLE_FORMAT,
            "combination": self.combination,
            "weights": self.weights,
            "ranking": ENSEMBLE_RANKING,
            "gradients_of": self.run_names[-1],
            "checkpoints": entries,
            "signature": signature,
        }

    def _run_locked(
        self,
        train: Dataset,
        batch_size: int,
        test: tuple[Dataset, str] | None,
        fingerprint: str,
        signature: dict[str, Any],
        team: Team,
    ) -> None:
        """Fit the checkpoints and publish the combined scores; the manifest says how it ended.

        Under several processes every one fits each checkpoint's run together; the leader alone
        writes the top level.
        """
        if team.leader:
            self.store.update_manifest(status="running", error=None)
        try:
            started = time.perf_counter()
            self._fit_checkpoints(train, batch_size, test, fingerprint, team)
            seconds = time.perf_counter() - started
            team.from_leader(lambda: self._publish(signature, test, seconds))
        except KeyboardInterrupt:
            if team.leader:
                self.store.update_manifest(status="cancelled")
            raise
        except Exception as error:
            if team.leader:
                self.store.update_manifest(status="failed", error=str(error))
            raise

    def _fit_checkpoints(
        self,
        train: Dataset,
        batch_size: int,
        test: tuple[Dataset, str] | None,
        fingerprint: str,
        team: Team,
    ) -> None:
        """Fit (or reopen) each checkpoint's run; the leader reports which one is in progress."""
        count = len(self.engines)
        for index, (name, engine) in enumerate(zip(self.run_names, self.engines, strict=True)):
            if team.leader:
                self.ensemble_store.write_checkpoint_progress(index, count, name)
                engine.progress = CheckpointProgress(engine.store, self.store, index, count, name)
            if self.show_progress and team.leader:
                print(f"checkpoint {index + 1}/{count}: {name}", file=sys.stderr)
            engine.fit(train, batch_size, None if test is None else test[0], fingerprint)
        if team.leader:
            self.ensemble_store.write_checkpoint_progress(count, count, "")

    def _publish(
        self, signature: dict[str, Any], test: tuple[Dataset, str] | None, seconds: float
    ) -> None:
        """Combine the checkpoints' scores into the top level, then mark it complete."""
        stores = [engine.store for engine in self.engines]
        self.store.write_progress({"phase": "ensemble", "done": 0, "total": 1})
        arrays = self._combined_arrays(stores)
        self.ensemble_store.publish_gradients_of(stores[-1])
        self.store.save_self_influence(arrays["self_influence"].astype(np.float32))
        if test is not None:
            self._publish_test_scores(stores)
        self.ensemble_store.save_scores(arrays)
        last = stores[-1].read_manifest()
        running = self.store.read_manifest()
        self.store.write_manifest({
            **last, "provenance": self.provenance, "ensemble": self._section(signature),
            "created": running["created"], "status": "complete", "error": None,
            "test_fingerprint": None if test is None else test[1],
            "timings": {"checkpoints": seconds, **_summed_timings(stores)},
        })  # fmt: skip
        n_train = last["n_train"]
        self.store.write_progress({"phase": "done", "done": n_train, "total": n_train})

    def _combined_arrays(self, stores: Sequence[RunStore]) -> dict[str, np.ndarray]:
        """The combined and per-checkpoint arrays of ``dropinf.run.ensemble.ENSEMBLE_ARRAYS``."""
        self_influence = np.stack([s.self_influence() for s in stores]).astype(np.float64)
        metadata = [store.train_metadata() for store in stores]
        losses = np.stack([meta["loss"] for meta in metadata])  # (C, n_train)
        leave_one_out = leave_one_out_losses(self_influence, losses)
        return {
            "self_influence": self.combine(self_influence),
            "leave_one_out_loss": self.combine(leave_one_out),
            "loss": self.combine(losses),
            "checkpoint_self_influence": self_influence,
            "checkpoint_loss": losses,
            "checkpoint_prediction": np.stack([meta["prediction"] for meta in metadata]),
            "weights": np.asarray(self.weights),
        }

    def _publish_test_scores(self, stores: Sequence[RunStore]) -> None:
        """Combine the checkpoints' test scores, a block of test rows at a time."""
        scores = [store.test_scores() for store in stores]  # memmapped (n_test, n_train) each
        combined = np.empty(scores[0].shape, dtype=np.float32)
        for start in range(0, combined.shape[0], TEST_ROWS_PER_CHUNK):
            rows = slice(start, start + TEST_ROWS_PER_CHUNK)
            combined[rows] = self.combine(np.stack([s[rows] for s in scores]))
        self.store.save_test_scores(combined, stores[-1].test_metadata())

    def combine(self, per_checkpoint: np.ndarray) -> np.ndarray:
        """(C, ..., n_train) per-checkpoint scores combined as this engine combines them."""
        return combine_scores(per_checkpoint, self.combination, self.weights)

    # scores
    def self_influence(self) -> torch.Tensor:
        """(n_train,) combined self-influence (float64)."""
        return torch.from_numpy(self._arrays()["self_influence"])

    def leave_one_out_loss(self) -> torch.Tensor:
        """(n_train,) combined leave-one-out loss estimate: the review queue's order."""
        return torch.from_numpy(self._arrays()["leave_one_out_loss"])

    def checkpoint_self_influence(self) -> torch.Tensor:
        """(C, n_train) self-influence of every training example at each checkpoint."""
        return torch.from_numpy(self._arrays()["checkpoint_self_influence"])

    def pairwise_scores(self, test_dataset: Dataset, batch_size: int = 256) -> torch.Tensor:
        """(n_test, n_train) test-by-train scores combined across checkpoints (float64)."""
        stack = [e.pairwise_scores(test_dataset, batch_size).numpy() for e in self.engines]
        return torch.from_numpy(self.combine(np.stack(stack)))

    def query(self, test_batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, n_train) scores of new examples, combined across checkpoints (float64)."""
        stack = [engine.query(test_batch).numpy() for engine in self.engines]
        return torch.from_numpy(self.combine(np.stack(stack)))

    def _arrays(self) -> dict[str, np.ndarray]:
        if not self.store.is_complete() or ensemble_section(self.store.read_manifest()) is None:
            raise IncompleteRunError(
                f"run {self.store.run_dir} holds no complete ensemble: call fit() first"
            )
        return self.ensemble_store.load_scores()

    @classmethod
    def load(
        cls,
        run_dir: str | Path,
        models: Sequence[nn.Module],
        loss_fn: LossFn,
        device: str | torch.device | None = None,
    ) -> EnsembleEngine:
        """Reopen a complete ensemble run to query it (nothing is recomputed).

        Args:
            run_dir: The ensemble run's top level.
            models: Its checkpoints' models, in the run's order.
            loss_fn: The loss the run was computed with.
            device: Where to score.

        Raises:
            RunNotFoundError: No run in ``run_dir``.
            IncompleteRunError: The run is not a complete ensemble.
            RunConfigMismatchError: A model is not the one its checkpoint's run was computed on,
                or there are not as many models as checkpoints.
        """
        manifest = RunStore(run_dir).read_manifest()
        section = ensemble_section(manifest)
        if section is None or manifest.get("status") != "complete":
            raise IncompleteRunError(f"expected a complete ensemble run at {run_dir}")
        if len(models) != len(section["checkpoints"]):
            raise RunConfigMismatchError(
                f"expected {len(section['checkpoints'])} models for the ensemble at {run_dir}, "
                f"found {len(models)}"
            )
        infos = [CheckpointInfo(**_info_fields(entry)) for entry in section["checkpoints"]]
        engine = cls(
            models, loss_fn, CompressionConfig.from_dict(manifest["compression"]),
            CurvatureConfig.from_dict(manifest["curvature"]), run_dir=run_dir, device=device,
            dtype=getattr(torch, manifest["dtype"]),
            store_dtype=getattr(torch, manifest["store_dtype"]), provenance=manifest["provenance"],
            checkpoints=infos, combination=section["combination"],
        )  # fmt: skip
        engine.run_names = [entry["run"] for entry in section["checkpoints"]]
        engine.engines = [
            InfluenceEngine.load(engine.ensemble_store.sub_run_dir(name), model, loss_fn, device)
            for name, model in zip(engine.run_names, models, strict=True)
        ]
        return engine

    def _checkpoint_provenance(self, checkpoint: CheckpointInfo) -> dict[str, Any]:
        recorded = {
            "checkpoint": checkpoint.path,
            "checkpoint_sha256": checkpoint.sha256,
            "epoch": checkpoint.epoch,
        }
        return {**self.provenance, **{k: v for k, v in recorded.items() if v is not None}}


def fit_ensemble(
    models: Sequence[nn.Module],
    loss_fn: LossFn,
    train_dataset: Dataset,
    run_dir: str | Path | None = None,
    *,
    batch_size: int = 256,
    test_dataset: Dataset | None = None,
    data_fingerprint: str | None = None,
    **engine_options: Any,
) -> EnsembleEngine:
    """Fit one run over several checkpoints: ``EnsembleEngine(...).fit(...)`` in one call.

    Args:
        models: The checkpoints' models, in training order.
        loss_fn: ``loss_fn(model, batch) -> (B,)`` per-sample losses.
        train_dataset: Yields ``(inputs, label)`` pairs, in a fixed order.
        run_dir: Where the run lives; None keeps it in a temporary directory.
        batch_size: Examples per capture batch.
        test_dataset: If given, its combined scores are stored in the run.
        data_fingerprint: Identifies the training data; None hashes ``train_dataset``.
        **engine_options: Any other argument of ``EnsembleEngine``.

    Returns:
        The fitted engine.
    """
    engine = EnsembleEngine(models, loss_fn, run_dir=run_dir, **engine_options)
    return engine.fit(train_dataset, batch_size, test_dataset, data_fingerprint)


class CheckpointProgress(phases.ProgressWriter):
    """A checkpoint run's progress writer that also reports at the ensemble's top level.

    The top level's ``progress.json`` gets the checkpoint run's phase, done, total, rate and ETA,
    plus ``checkpoint`` (its sub-run), ``checkpoint_index`` and ``checkpoints`` (the count).
    """

    def __init__(self, store: RunStore, top: RunStore, index: int, count: int, name: str) -> None:
        """Write ``store``'s progress and mirror it, with checkpoint ``index`` of ``count``."""
        super().__init__(store)
        self.top, self.index, self.count, self.name = top, index, count, name

    def write(self, phase: str, done: int, total: int, rate: float | None) -> None:
        """Report ``done`` of ``total`` units of ``phase``, here and at the top level."""
        before = (self.phase, self.time)
        super().write(phase, done, total, rate)
        if (self.phase, self.time) == before:
            return  # throttled
        checkpoint = {
            "checkpoint": self.name,
            "checkpoint_index": self.index,
            "checkpoints": self.count,
        }
        self.top.write_progress({**(self.store.read_progress() or {}), **checkpoint})


def _checked_checkpoints(
    models: list[nn.Module], checkpoints: Sequence[CheckpointInfo] | None, combination: str
) -> list[CheckpointInfo]:
    """The checkpoints' descriptions, after checking what the ensemble is given.

    Raises:
        ConfigError: See ``EnsembleEngine``.
    """
    if not models:
        raise ConfigError("models: expected at least one model, found none")
    if combination not in COMBINATIONS:
        raise ConfigError(
            f"combination: expected one of {', '.join(COMBINATIONS)}, found {combination!r}"
        )
    infos = list(checkpoints) if checkpoints is not None else None
    if infos is not None and len(infos) != len(models):
        raise ConfigError(
            f"checkpoints: expected one description per model ({len(models)}), found {len(infos)}"
        )
    _check_one_architecture(models)
    return infos or [CheckpointInfo(name=f"model-{index}") for index in range(len(models))]


def _check_one_architecture(models: Sequence[nn.Module]) -> None:
    shapes = [
        sorted((name, tuple(t.shape)) for name, t in model.state_dict().items()) for model in models
    ]
    for index, found in enumerate(shapes[1:], start=1):
        if found != shapes[0]:
            differing = sorted(set(map(str, found)) ^ set(map(str, shapes[0])))[:3]
            raise ConfigError(
                f"models: expected one architecture (parameter names and shapes of model 0), "
                f"found model {index} differing in {', '.join(differing)}"
            )


def _differences(section: dict[str, Any], signature: dict[str, Any]) -> list[str]:
    """What differs between a saved ensemble's signature and the one asked for."""
    saved = section.get("signature") or {}
    keys = ("format", "combination", "weights")
    differing = [key for key in keys if saved.get(key) != signature[key]]
    saved_runs, runs = saved.get("runs") or [], signature["runs"]
    if len(saved_runs) != len(runs):
        differing.append(f"{len(saved_runs)} checkpoints, not {len(runs)}")
    for old, new in zip(saved_runs, runs, strict=False):
        fields = [field for field in new if old.get(field) != new[field]]
        if fields:
            differing.append(f"checkpoint {new['run']}: {', '.join(fields)}")
    return differing[:4] or ["its signature"]


def _summed_timings(stores: Sequence[RunStore]) -> dict[str, float]:
    """Each phase's seconds summed over the checkpoints' runs (as recorded by them)."""
    total: dict[str, float] = {}
    for store in stores:
        for phase, seconds in (store.read_manifest().get("timings") or {}).items():
            total[phase] = total.get(phase, 0.0) + float(seconds)
    return total


def _info_fields(entry: dict[str, Any]) -> dict[str, Any]:
    fields = ("name", "path", "sha256", "epoch", "learning_rate")
    return {field: entry.get(field) for field in fields}
