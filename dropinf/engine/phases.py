"""The phases of a fit: calibrate, gradients, curvature, self-influence, test scores.

Each phase reads what it needs from the engine's state and the run store, and commits its result
to the store before the next one starts, so a killed fit resumes at the first missing phase: the
manifest's ``k`` commits the compressors, ``rows_done`` the published shards, the saved
self-influence the curvature phases, ``test_fingerprint`` the test scores.

Under an initialised process group (torchrun) every process runs the same phases on the same
decisions (taken by rank 0 and shared, ``Team.from_leader``): rank 0 holds the writer lock,
calibrates and writes every run-wide file (manifest, progress, compressors, curvature, scores);
each process captures and publishes its own contiguous share of the shards; the curvature
statistics of the shares are summed with all-reduce; self-influence and test scores are
computed per share and gathered on rank 0. A team of one takes the single-process path
unchanged.
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
from dropinf.engine.distributed import check_shared
from dropinf.engine.fingerprint import dataset_fingerprint, loss_name, model_fingerprint
from dropinf.engine.scoring import (
    ShardReader,
    batch_metadata,
    influence_scores,
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
    check_same_layers,
    is_dropinf_manifest,
    layer_fields,
    mismatch_message,
    new_manifest,
    resolve_curvature_kind,
    signature_differences,
    size_text,
)
from dropinf.run.manifest import shard_rows_for
from dropinf.run.shards import shard_count

if TYPE_CHECKING:
    from dropinf.engine.facade import InfluenceEngine

PROGRESS_INTERVAL = 0.5


class ProgressWriter:
    """Writes a run's ``progress.json``, at most every ``PROGRESS_INTERVAL`` s within a phase."""

    def __init__(self, store: RunStore) -> None:
        """Create a writer for ``store``."""
        self.store = store
        self.phase, self.time = "", 0.0

    def due(self, phase: str) -> bool:
        """True when a report of ``phase`` now would be written (not throttled)."""
        return phase != self.phase or time.monotonic() - self.time >= PROGRESS_INTERVAL

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
    team = engine.team
    manifest = team.from_leader(lambda: open_run(engine, len(train), data_fingerprint))
    team.together(lambda: check_shared(engine.store, team))
    test_fingerprint = dataset_fingerprint(test) if test is not None else None
    team.check_same("test data fingerprint", test_fingerprint)
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
    check_same_layers(manifest, engine.layout.specs, run_dir)


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
    store, leader = engine.store, engine.team.leader
    if leader:
        store.update_manifest(status="running", error=None, world_size=engine.team.size)
    try:
        _run_phases(engine, train, batch_size, test)
    except KeyboardInterrupt:
        if leader:
            store.update_manifest(status="cancelled")
        raise
    except Exception as error:
        if leader:
            store.update_manifest(status="failed", error=str(error))
        raise
    if leader:
        store.update_manifest(status="complete")
        engine.progress.write("done", len(train), len(train), None)


def _run_phases(
    engine: InfluenceEngine, train: Dataset, batch_size: int, test: tuple[Dataset, str] | None
) -> None:
    """The phases a run still lacks, in order, with their wall-clock seconds in the manifest."""
    team = engine.team
    if team.from_leader(engine.store.self_influence_exists):
        restore_state(engine)
    else:
        _timed(engine, "calibration", calibrate, engine, train, batch_size)
        team.from_leader(lambda: check_run_fits(engine, len(train)))
        _timed(engine, "gradients", store_gradients, engine, train, batch_size)
        fitted = _timed(engine, "curvature", fit_run_curvature, engine)
        _timed(engine, "self_influence", store_self_influence, engine, fitted)
    if test is not None:
        _timed(engine, "test_scores", store_test_scores, engine, *test, batch_size)


def _timed(engine: InfluenceEngine, phase: str, run: Callable[..., Any], *args: Any) -> Any:
    """Run a phase; rank 0 records its seconds (phases end together: the slowest rank's)."""
    started = time.perf_counter()
    result = run(*args)
    if not engine.team.leader:
        return result
    store = engine.store
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
    team = engine.team
    if team.from_leader(lambda: engine.store.read_manifest()["k"] is not None):
        engine.capture = restored_capture(engine)
        return
    team.from_leader(lambda: build_compressors(engine, train, batch_size))
    if not team.leader:  # rank 0's masks, saved: the same on every process, data-driven or not
        engine.capture = restored_capture(engine)


def build_compressors(engine: InfluenceEngine, train: Dataset, batch_size: int) -> None:
    """Build, save and commit the run's compressors (masks from the seed or from calibration)."""
    store = engine.store
    engine.progress.write("calibrate", 0, 1, None)
    compressors = build_run_compressors(
        engine.model, engine.layout, engine.compression, train, engine.loss_fn, batch_size
    )
    engine.capture = make_capture(engine, compressors)
    store.save_compressors(compressors)
    shard_rows = engine.shard_rows
    if shard_rows is None and engine.team.distributed:
        k = sum(compressor.k for compressor in compressors)
        shard_rows = shard_rows_for(k, engine.store_dtype, batch_size, len(train), engine.team.size)
    fields = layer_fields(
        engine.layout.specs, compressors, engine.store_dtype, batch_size, shard_rows
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
    """Capture and store compressed gradients of the shards not yet stored (this process's share).

    Batches are cut per shard, so a shard's K-FAC statistics (kept for ``kfac`` / ``ekfac``)
    are the sums over exactly its rows, whatever the batch size, also on resume. A failure on
    any process ends the phase on every process.
    """
    team = engine.team
    manifest = engine.store.read_manifest()
    share = own_shards(engine)
    numpy_dtype = torch.empty(0, dtype=engine.store_dtype).numpy().dtype
    writer = GradientWriter(
        engine.store, manifest["n_train"], manifest["shard_rows"], manifest["k"], numpy_dtype,
        share,
    )  # fmt: skip
    team.together(lambda: fill_shards(engine, writer, train, batch_size))
    if team.distributed and team.leader:
        engine.store.update_manifest(rows_done=writer.rows_published())


def fill_shards(
    engine: InfluenceEngine, writer: GradientWriter, train: Dataset, batch_size: int
) -> None:
    """Capture the writer's pending shards; rank 0 reports the run's progress."""
    team, n_train = engine.team, writer.n_rows
    keeps_statistics = run_curvature_kind(engine) in KRONECKER_KINDS
    first_row, started = writer.rows_done, time.perf_counter()
    total, initial = (n_train, first_row) if not team.distributed else writer.share_rows()
    bar = tqdm(
        total=total,
        initial=initial,
        unit="ex",
        desc="gradients" if not team.distributed else f"gradients ({team.label()})",
        disable=not (engine.show_progress and team.leader),
        dynamic_ncols=True,
    )
    for rows in writer.pending_shards():
        statistics = engine.capture.kronecker_stats() if keeps_statistics else None
        state = None if statistics is None else statistics.state
        for batch in DataLoader(Subset(train, rows), batch_size):
            published = store_batch(engine, writer, batch, statistics, state)
            bar.update(len(batch[0]))
            if team.leader:
                report_gradients(engine, writer, published, first_row, started)
    bar.close()


def report_gradients(
    engine: InfluenceEngine, writer: GradientWriter, published: bool, first: int, started: float
) -> None:
    """Commit ``rows_done`` when a shard was published, and write the progress when due.

    One process counts its own rows; rank 0 of several counts the published shards of all.
    """
    distributed = engine.team.distributed
    if published:
        rows_done = writer.rows_published() if distributed else writer.rows_done
        engine.store.update_manifest(rows_done=rows_done)
    if engine.progress.due("gradients"):
        done = writer.rows_published() if distributed else writer.rows_done
        rate = (done - first) / max(time.perf_counter() - started, 1e-9)
        engine.progress.write("gradients", done, writer.n_rows, rate)


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


def shared_kronecker_stats(engine: InfluenceEngine) -> KroneckerStats:
    """The run's K-FAC factor sums: each process sums its own shards', then all-reduce."""
    total = engine.capture.kronecker_stats().state()  # zeros: a share may hold no shard
    for state in engine.store.kronecker_states(own_shards(engine)):
        total = {name: total[name] + value for name, value in state.items()}
    for value in total.values():
        engine.team.sum_into(value)
    return KroneckerStats.from_state(total)


def own_shards(engine: InfluenceEngine) -> range:
    """The indices of the shards this process writes and reads (all of them for one process)."""
    manifest = engine.store.read_manifest()
    return engine.team.share(shard_count(manifest["n_train"], manifest["shard_rows"]))


def fit_run_curvature(engine: InfluenceEngine) -> Curvature:
    """Fit and save the curvature from the stored gradients; give the engine its solver.

    ``kfac`` / ``ekfac`` sum the K-FAC statistics saved with the shards (``ekfac`` then reads
    the shards once more for its eigenvalues). Several processes each read their own share
    of the shards and all-reduce the sums; every process factors the same sums, rank 0 saves
    the result and the others then load it, so all score with the same saved curvature.

    Returns:
        The fitted curvature, which knows its low-rank blocks' self-influence.
    """
    store, team = engine.store, engine.team
    if team.leader:
        engine.progress.write("curvature", 0, 1, None)
    manifest = store.read_manifest()
    dims = [layer["k"] for layer in manifest["layers"]]
    kind = run_curvature_kind(engine)
    if not team.distributed:
        statistics = run_kronecker_stats(store) if kind in KRONECKER_KINDS else None
        shards, reduce = store.iter_gradient_shards(), None
    else:
        statistics = shared_kronecker_stats(engine) if kind in KRONECKER_KINDS else None
        shards, reduce = store.iter_gradient_shards(own_shards(engine)), team.sum_into
    fitted = fit_curvature(
        shards,
        dims,
        manifest["n_train"],
        dataclasses.replace(engine.curvature_config, kind=kind),
        engine.device,
        engine.dtype,
        kronecker=statistics,
        reduce=reduce,
        every_shard=store.iter_gradient_shards,
    )
    state = fitted.state(engine.dtype)
    team.from_leader(lambda: save_curvature(store, fitted, state))
    if team.leader:
        engine.curvature = Curvature.from_state(fitted.kind, fitted.damping, state)
        engine.curvature = engine.curvature.to(engine.device)
    else:
        engine.curvature = load_curvature(store, engine.device)
    return fitted


def save_curvature(store: RunStore, fitted: Curvature, state: dict[str, torch.Tensor]) -> None:
    """Save the fitted curvature and commit its kind and damping in the manifest."""
    store.save_curvature(state)
    store.update_manifest(curvature_kind=fitted.kind, damping=fitted.damping)


def store_self_influence(engine: InfluenceEngine, fitted: Curvature) -> None:
    """Save ``g(z)ᵀ (F + λI)⁻¹ g(z)`` of every training example.

    Several processes each whiten their own share of the rows; rank 0 gathers and saves.
    """
    store, team = engine.store, engine.team
    if team.leader:
        engine.progress.write("self_influence", 0, 1, None)
    engine.reader.reset()  # the gradient phase may have published shards since
    if not team.distributed:
        chunks = stored_gradient_chunks(store, engine.device, engine.dtype, reader=engine.reader)
        values = fitted.training_self_influence(chunks)
        store.save_self_influence(values.to(torch.float32).numpy())
        return
    values = fitted.known_self_influence()
    if fitted.reads_rows:
        reader = ShardReader(store, own_shards(engine))
        chunks = stored_gradient_chunks(store, engine.device, engine.dtype, reader=reader)
        rows = team.gather_rows(fitted.whitened_self_influence(chunks))
        values = values + rows if team.leader else values
    team.from_leader(lambda: store.save_self_influence(values.to(torch.float32).numpy()))


def store_test_scores(
    engine: InfluenceEngine, test: Dataset, fingerprint: str, batch_size: int
) -> None:
    """Score the test set; the manifest's ``test_fingerprint`` commits the written scores.

    Several processes each score the whole test set against their own share of the shards;
    rank 0 gathers the columns and saves them.
    """
    store, team = engine.store, engine.team
    if team.leader:
        store.update_manifest(test_fingerprint=None)
        engine.progress.write("test_scores", 0, len(test), None)
    gradients, meta = engine.test_gradients(test, batch_size)
    if not team.distributed:
        scores = engine.scores_of_gradients(gradients)
    else:
        share = ShardReader(store, own_shards(engine))
        mine = influence_scores(engine.curvature, gradients, share, engine.device, engine.dtype)
        gathered = team.gather_rows(mine.T.contiguous())  # (n_train, n_test) on rank 0
        scores = gathered.T if gathered is not None else None

    def save() -> None:
        store.save_test_scores(scores.to(torch.float32).numpy(), meta)
        store.update_manifest(test_fingerprint=fingerprint)

    team.from_leader(save)
