"""The phases of a fit: calibrate, gradients, curvature, self-influence, test scores.

Each phase reads what it needs from the engine's state and the run store, and commits its result
to the store before the next one starts, so a killed fit resumes at the first missing phase: the
manifest's ``k`` commits the compressors, ``rows_done`` the published shards, the saved
self-influence the curvature phases, ``test_fingerprint`` the test scores.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from dropinf import __version__
from dropinf.core import (
    Curvature,
    GradientCapture,
    KroneckerStats,
    LayerCompressor,
    batch_to,
    build_run_compressors,
    fit_curvature,
)
from dropinf.engine.fingerprint import dataset_fingerprint, loss_name, model_fingerprint
from dropinf.engine.scoring import (
    batch_metadata,
    load_curvature,
    stored_gradient_chunks,
)
from dropinf.errors import IncompleteRunError, RunConfigMismatchError, RunDirectoryError
from dropinf.run import (
    KRONECKER_KINDS,
    GradientWriter,
    Manifest,
    RunStore,
    check_resources,
    is_dropinf_manifest,
    layer_fields,
    mismatch_message,
    new_manifest,
    resolve_curvature_kind,
    signature_differences,
    size_text,
)

if TYPE_CHECKING:
    from dropinf.engine.facade import InfluenceEngine

PROGRESS_INTERVAL = 0.5


class ProgressWriter:
    """Writes a run's ``progress.json``, at most every ``PROGRESS_INTERVAL`` s within a phase."""

    def __init__(self, store: RunStore) -> None:
        """Create a writer for ``store``."""
        self.store = store
        self.phase, self.time = "", 0.0

    def write(self, phase: str, done: int, total: int, rate: float | None) -> None:
        """Report ``done`` of ``total`` units of ``phase`` at ``rate`` examples/s (if known)."""
        now = time.monotonic()
        if phase == self.phase and now - self.time < PROGRESS_INTERVAL:
            return
        self.phase, self.time = phase, now
        eta = (total - done) / rate if rate else None
        self.store.write_progress(
            {"phase": phase, "done": done, "total": total, "examples_per_s": rate, "eta_s": eta}
        )


def open_run(engine: InfluenceEngine, n_train: int, data_fingerprint: str) -> dict[str, Any]:
    """Create the run, or check that the existing one has the same signature.

    Call with the writer lock held. Only dropinf's own files are ever cleared: a folder without
    a manifest must hold nothing else, and a manifest must carry dropinf's marker.

    Raises:
        RunDirectoryError: The folder holds a manifest dropinf did not write.
        RunConfigMismatchError: The saved run's signature differs and overwriting was not asked.
    """
    store = engine.store
    fresh = fresh_manifest(engine, n_train, data_fingerprint)
    saved = store.manifest_or_none()
    if saved is None:
        store.refuse_foreign_files()
    elif not is_dropinf_manifest(saved):
        raise RunDirectoryError(
            f"expected an empty folder or a dropinf run directory at {store.run_dir}, "
            "found a manifest.json that dropinf did not write; nothing was changed"
        )
    elif not signature_differences(saved, fresh):
        return saved
    elif not engine.overwrite:
        raise RunConfigMismatchError(mismatch_message(store.run_dir, saved, fresh))
    store.clear()
    store.write_manifest(fresh)
    return fresh


def fit_locked(
    engine: InfluenceEngine,
    train: Dataset,
    batch_size: int,
    data_fingerprint: str,
    test: Dataset | None,
) -> None:
    """Open the run and run what it lacks; a complete run (with ``test`` scored) is only loaded.

    Call with the writer lock held.
    """
    manifest = open_run(engine, len(train), data_fingerprint)
    test_fingerprint = dataset_fingerprint(test) if test is not None else None
    if test is not None and manifest.get("test_fingerprint") != test_fingerprint:
        run_missing_phases(engine, train, batch_size, (test, test_fingerprint))
    elif manifest["status"] == "complete":
        restore_state(engine)
    else:
        run_missing_phases(engine, train, batch_size, None)


def check_reopenable(engine: InfluenceEngine, manifest: dict[str, Any]) -> None:
    """Refuse to reopen a run that is not complete, or was computed on another model.

    Raises:
        IncompleteRunError: The run has not finished.
        RunConfigMismatchError: The engine's model is not the run's.
    """
    run_dir = engine.store.run_dir
    if manifest["status"] != "complete":
        raise IncompleteRunError(f"run {run_dir} is {manifest['status']}, not complete")
    if model_fingerprint(engine.model) != manifest["model_fingerprint"]:
        raise RunConfigMismatchError(
            f"the model's weights differ from the model run {run_dir} was computed on "
            f"(expected fingerprint {manifest['model_fingerprint'][:12]}…)"
        )


def fresh_manifest(engine: InfluenceEngine, n_train: int, data_fingerprint: str) -> Manifest:
    """The manifest of a new run of ``engine`` on ``n_train`` examples."""
    return new_manifest(
        compression=engine.compression,
        curvature=engine.curvature_config,
        dtype=engine.dtype,
        store_dtype=engine.store_dtype,
        loss=loss_name(engine.loss_fn),
        model_fingerprint=model_fingerprint(engine.model),
        data_fingerprint=data_fingerprint,
        n_train=n_train,
        specs=engine.layout.specs,
        provenance=engine.provenance,
        dropinf_version=__version__,
    )


def run_missing_phases(
    engine: InfluenceEngine, train: Dataset, batch_size: int, test: tuple[Dataset, str] | None
) -> None:
    """Run the missing phases (and score ``test``: dataset, fingerprint), then mark complete.

    The manifest says ``running`` meanwhile, then ``complete``, ``failed`` (with the error) or
    ``cancelled`` (on KeyboardInterrupt).
    """
    store = engine.store
    store.update_manifest(status="running", error=None)
    try:
        _run_phases(engine, train, batch_size, test)
    except KeyboardInterrupt:
        store.update_manifest(status="cancelled")
        raise
    except Exception as error:
        store.update_manifest(status="failed", error=str(error))
        raise
    store.update_manifest(status="complete")
    engine.progress.write("done", len(train), len(train), None)


def _run_phases(
    engine: InfluenceEngine, train: Dataset, batch_size: int, test: tuple[Dataset, str] | None
) -> None:
    """The phases a run still lacks, in order, with their wall-clock seconds in the manifest."""
    if engine.store.self_influence_exists():
        restore_state(engine)
    else:
        _timed(engine.store, "calibration", calibrate, engine, train, batch_size)
        check_run_fits(engine, len(train))
        _timed(engine.store, "gradients", store_gradients, engine, train, batch_size)
        fitted = _timed(engine.store, "curvature", fit_run_curvature, engine)
        _timed(engine.store, "self_influence", store_self_influence, engine, fitted)
    if test is not None:
        _timed(engine.store, "test_scores", store_test_scores, engine, *test, batch_size)


def _timed(store: RunStore, phase: str, run: Callable[..., Any], *args: Any) -> Any:
    started = time.perf_counter()
    result = run(*args)
    timings = store.read_manifest().get("timings", {})
    timings[phase] = time.perf_counter() - started
    store.update_manifest(timings=timings)
    return result


def make_capture(engine: InfluenceEngine, compressors: list[LayerCompressor]) -> GradientCapture:
    """A capture of the engine's model through ``compressors`` (moved to its device)."""
    moved = [compressor.to(engine.device) for compressor in compressors]
    return GradientCapture(engine.model, engine.layout, moved)


def restored_capture(engine: InfluenceEngine) -> GradientCapture:
    """A capture through the run's saved compressors."""
    compressors = engine.store.load_compressors(engine.layout.specs, engine.compression)
    return make_capture(engine, compressors)


def restore_state(engine: InfluenceEngine) -> None:
    """Give the engine the run's saved compressors and fitted curvature."""
    engine.capture = restored_capture(engine)
    engine.curvature = load_curvature(engine.store, engine.device)


def calibrate(engine: InfluenceEngine, train: Dataset, batch_size: int) -> None:
    """Build the compressors: from the saved masks on resume, else from seed / calibration.

    The manifest's ``k`` commits the saved masks: a file written by a writer killed before its
    manifest update is rebuilt (deterministically) and written again.
    """
    store = engine.store
    if store.read_manifest()["k"] is not None:
        engine.capture = restored_capture(engine)
        return
    engine.progress.write("calibrate", 0, 1, None)
    compressors = build_run_compressors(
        engine.model, engine.layout, engine.compression, train, engine.loss_fn, batch_size
    )
    engine.capture = make_capture(engine, compressors)
    store.save_compressors(compressors)
    fields = layer_fields(
        engine.layout.specs, compressors, engine.store_dtype, batch_size, engine.shard_rows
    )
    store.update_manifest(**fields)


def run_curvature_kind(engine: InfluenceEngine) -> str:
    """The concrete curvature kind of the run (``auto`` resolved for its k)."""
    k = engine.store.read_manifest()["k"]
    return resolve_curvature_kind(engine.curvature_config, engine.compression, k)


def check_run_fits(engine: InfluenceEngine, n_train: int) -> None:
    """Refuse the run if the rest of its gradient store or its curvature would not fit.

    With ``show_progress``, first say k, the bytes per example and the store's size on stderr.

    Raises:
        ConfigError: It would not fit (the estimate, what is available, the knobs to turn).
    """
    manifest = engine.store.read_manifest()
    k, itemsize = manifest["k"], engine.store_dtype.itemsize
    kind = run_curvature_kind(engine)
    if engine.show_progress:
        print(
            f"k = {k} ({k * itemsize} bytes per example), gradient store "
            f"{size_text(k * itemsize * n_train)} for {n_train} examples, curvature {kind}",
            file=sys.stderr,
        )
    check_resources(
        engine.store.run_dir,
        n_train - manifest["rows_done"],
        itemsize,
        kind,
        engine.capture.compressors,
        n_train,
        engine.dtype.itemsize,
    )


def store_gradients(engine: InfluenceEngine, train: Dataset, batch_size: int) -> None:
    """Capture and store compressed gradients from the first shard not yet stored.

    Batches are cut per shard, so a shard's K-FAC statistics (kept for ``kfac`` / ``ekfac``)
    are the sums over exactly its rows, whatever the batch size, also on resume.
    """
    store = engine.store
    manifest = store.read_manifest()
    n_train, k = manifest["n_train"], manifest["k"]
    numpy_dtype = torch.empty(0, dtype=engine.store_dtype).numpy().dtype
    writer = GradientWriter(store, n_train, manifest["shard_rows"], k, numpy_dtype)
    keeps_statistics = run_curvature_kind(engine) in KRONECKER_KINDS
    first_row, started = writer.rows_done, time.perf_counter()
    bar = tqdm(
        total=n_train,
        initial=first_row,
        unit="ex",
        desc="gradients",
        disable=not engine.show_progress,
        dynamic_ncols=True,
    )
    for rows in writer.pending_shards():
        statistics = engine.capture.kronecker_stats() if keeps_statistics else None
        state = None if statistics is None else statistics.state
        for batch in DataLoader(Subset(train, rows), batch_size):
            if store_batch(engine, writer, batch, statistics, state):
                store.update_manifest(rows_done=writer.rows_done)
            bar.update(len(batch[0]))
            rate = (writer.rows_done - first_row) / max(time.perf_counter() - started, 1e-9)
            engine.progress.write("gradients", writer.rows_done, n_train, rate)
    bar.close()


def store_batch(
    engine: InfluenceEngine,
    writer: GradientWriter,
    batch: Sequence[torch.Tensor],
    statistics: KroneckerStats | None,
    state: Callable[[], dict[str, torch.Tensor]] | None,
) -> bool:
    """Capture one batch into the writer (and ``statistics``); True if a shard was published."""
    slot = writer.slot(len(batch[0])) if engine.device.type == "cpu" else None
    out = None if slot is None else torch.from_numpy(slot)
    inputs = batch_to(batch, engine.device, engine.model_dtype)
    captured = engine.capture.capture(
        engine.loss_fn, inputs, engine.store_dtype, out, kronecker=statistics
    )
    gradients = None if slot is not None else captured.gradients.cpu().numpy()
    return writer.write(gradients, batch_metadata(captured, batch), state)


def run_kronecker_stats(store: RunStore) -> KroneckerStats:
    """The K-FAC factor sums of the whole run: every shard's, summed key by key."""
    total: dict[str, torch.Tensor] = {}
    for state in store.kronecker_states():
        total = {name: total.get(name, 0) + value for name, value in state.items()}
    return KroneckerStats.from_state(total)


def fit_run_curvature(engine: InfluenceEngine) -> Curvature:
    """Fit and save the curvature from the stored gradients; give the engine its solver.

    ``kfac`` / ``ekfac`` sum the K-FAC statistics saved with the shards (``ekfac`` then reads
    the shards once more for its eigenvalues).

    Returns:
        The fitted curvature, which knows its low-rank blocks' self-influence.
    """
    store = engine.store
    engine.progress.write("curvature", 0, 1, None)
    manifest = store.read_manifest()
    dims = [layer["k"] for layer in manifest["layers"]]
    kind = run_curvature_kind(engine)
    statistics = run_kronecker_stats(store) if kind in KRONECKER_KINDS else None
    fitted = fit_curvature(
        store.iter_gradient_shards(),
        dims,
        manifest["n_train"],
        dataclasses.replace(engine.curvature_config, kind=kind),
        engine.device,
        engine.dtype,
        kronecker=statistics,
    )
    state = fitted.state(engine.dtype)
    store.save_curvature(state)
    engine.curvature = Curvature.from_state(fitted.kind, fitted.damping, state).to(engine.device)
    store.update_manifest(curvature_kind=fitted.kind, damping=fitted.damping)
    return fitted


def store_self_influence(engine: InfluenceEngine, fitted: Curvature) -> None:
    """Save ``g(z)ᵀ (F + λI)⁻¹ g(z)`` of every training example."""
    engine.progress.write("self_influence", 0, 1, None)
    engine.reader.reset()  # the gradient phase may have published shards since
    chunks = stored_gradient_chunks(engine.store, engine.device, engine.dtype, reader=engine.reader)
    values = fitted.training_self_influence(chunks)
    engine.store.save_self_influence(values.to(torch.float32).numpy())


def store_test_scores(
    engine: InfluenceEngine, test: Dataset, fingerprint: str, batch_size: int
) -> None:
    """Score the test set; the manifest's ``test_fingerprint`` commits the written scores."""
    store = engine.store
    store.update_manifest(test_fingerprint=None)
    engine.progress.write("test_scores", 0, len(test), None)
    gradients, meta = engine.test_gradients(test, batch_size)
    scores = engine.scores_of_gradients(gradients)
    store.save_test_scores(scores.to(torch.float32).numpy(), meta)
    store.update_manifest(test_fingerprint=fingerprint)
