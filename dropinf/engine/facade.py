"""The facade: ``InfluenceEngine.fit → pairwise_scores / self_influence / query``.

``fit`` streams the training set once through the capture (compressed per-sample gradients into
memmapped shards of the run directory), then fits the damped Fisher from the shards and stores the
self-influence of every training example. A killed ``fit`` resumes from its last complete shard;
one process writes a run at a time (the run directory's writer lock, see docs/reliability.md).
Scores are ``I(z', z) = g(z')ᵀ (F + λI)⁻¹ g(z)``: positive = proponent.
"""

from __future__ import annotations

import hashlib
import numbers
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from dropinf import __version__
from dropinf.core import (
    CapturedBatch,
    CompressionConfig,
    Curvature,
    CurvatureConfig,
    GradientCapture,
    LayerCompressor,
    LossFn,
    batch_to,
    build_compressor,
    build_run_compressors,
    discover_layers,
    fit_curvature,
    restore_mask_compressor,
)
from dropinf.errors import (
    ConfigError,
    DatasetError,
    IncompleteRunError,
    RunConfigMismatchError,
    RunDirectoryError,
)
from dropinf.run import FORMAT_VERSION, GradientWriter, RunStore, is_dropinf_manifest, now_iso

SHARD_BYTES = 64 * 2**20
PROGRESS_INTERVAL = 0.5
FINGERPRINT_BATCH = 1024
# Everything the stored scores depend on: a run is reused only when all of these are equal.
SIGNATURE_FIELDS = (
    "format",
    "compression",
    "curvature",
    "dtype",
    "store_dtype",
    "loss",
    "model_fingerprint",
    "data_fingerprint",
    "n_train",
)
DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The requested device, or CUDA when present, else the CPU.

    Raises:
        ConfigError: The name is not a device, or names CUDA where there is none.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device: expected cpu, cuda or cuda:N, found {device!r}") from None
    if resolved.type not in DEVICE_TYPES:
        raise ConfigError(f"device: expected cpu, cuda or cuda:N, found {device!r}")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device: expected cpu or an available GPU, found {device!r} but CUDA is not "
            f"available for it on this machine ({torch.cuda.device_count()} GPUs)"
        )
    return resolved


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a tensor of any dtype and shape (0-dim included)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)  # (numel,): view() needs ≥ 1 dim
    return flat.view(torch.uint8).numpy().tobytes()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's parameters and buffers: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


def dataset_fingerprint(dataset: Dataset) -> str:
    """sha256 over every example of a dataset (inputs and labels), streamed in order.

    One digest per item of an example (inputs, label...), so the batch size does not matter.
    """
    digests: list[Any] = []
    for batch in DataLoader(dataset, batch_size=FINGERPRINT_BATCH, shuffle=False):
        items = batch if isinstance(batch, list | tuple) else [batch]
        digests = digests or [hashlib.sha256() for _ in items]
        for digest, item in zip(digests, items, strict=True):
            values = torch.as_tensor(item)
            digest.update(f"{values.dtype}:{tuple(values.shape[1:])}".encode())
            digest.update(tensor_bytes(values))
    combined = hashlib.sha256(f"{len(dataset)}".encode())
    for digest in digests:
        combined.update(digest.digest())
    return combined.hexdigest()


def loss_name(loss_fn: LossFn) -> str:
    """``module.qualified_name`` of a loss function (part of a run's signature)."""
    name = getattr(loss_fn, "__qualname__", type(loss_fn).__qualname__)
    return f"{getattr(loss_fn, '__module__', '')}.{name}"


def check_fit_arguments(train: Dataset, batch_size: object, test: Dataset | None) -> None:
    """Refuse a batch size that is not a positive integer, and empty datasets.

    Raises:
        ConfigError: ``batch_size`` is not a positive integer.
        DatasetError: The training set (or a given test set) holds no example.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise ConfigError(f"batch_size: expected a positive integer, found {batch_size!r}")
    if batch_size <= 0:
        raise ConfigError(f"batch_size: expected a positive integer, found {batch_size!r}")
    for role, dataset in (("training", train), ("test", test)):
        if dataset is not None and len(dataset) == 0:
            raise DatasetError(f"{role} set: expected at least one example, found 0")


def signature_differences(saved: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """The signature fields on which a saved run differs from the one asked for."""
    return [field for field in SIGNATURE_FIELDS if saved.get(field) != fresh[field]]


def mismatch_message(run_dir: Path, saved: dict[str, Any], fresh: dict[str, Any]) -> str:
    """Why a saved run cannot be reused, naming each differing field."""
    if saved.get("format") != fresh["format"]:
        return (
            f"run directory {run_dir} holds a run of the older run format "
            f"{saved.get('format')} (expected {fresh['format']}); recompute it with "
            "--overwrite (overwrite=True) or use another directory"
        )
    differing = signature_differences(saved, fresh)
    return (
        f"run directory {run_dir} holds a run with a different {', '.join(differing)}; "
        f"expected {[fresh[f] for f in differing]}, found {[saved.get(f) for f in differing]}. "
        "Use another directory or --overwrite (overwrite=True)."
    )


def dtype_name(dtype: torch.dtype) -> str:
    """``float32`` for ``torch.float32`` and so on."""
    return str(dtype).removeprefix("torch.")


def batch_metadata(captured: CapturedBatch, batch: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    """Label, prediction and loss of each example of a batch (-1 where unknown)."""
    size = captured.losses.shape[0]
    unknown = torch.full((size,), -1)
    labels = batch[1] if len(batch) > 1 and batch[1].ndim == 1 else unknown
    predictions = unknown if captured.predictions is None else captured.predictions
    return {
        "label": labels.cpu().numpy(),
        "prediction": predictions.cpu().numpy(),
        "loss": captured.losses.double().cpu().numpy(),
    }


def stored_gradient_chunks(
    store: RunStore, device: torch.device, dtype: torch.dtype, rows: int = 4096
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, stored training gradients as a (rows, k) tensor) over a run, in order."""
    start = 0
    for shard in store.iter_gradient_shards():
        for offset in range(0, shard.shape[0], rows):
            chunk = torch.from_numpy(np.array(shard[offset : offset + rows]))
            yield start, chunk.to(device=device, dtype=dtype)
            start += chunk.shape[0]


def load_curvature(store: RunStore, device: torch.device) -> Curvature:
    """The fitted curvature of a run."""
    manifest = store.read_manifest()
    tensors = store.load_tensors("curvature.safetensors")
    curvature = Curvature.from_state(manifest["curvature_kind"], manifest["damping"], tensors)
    return curvature.to(device)


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
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.loss_fn = loss_fn
        self.compression = compression or CompressionConfig()
        self.curvature_config = curvature or CurvatureConfig()
        self.dtype = dtype
        self.store_dtype = store_dtype or (dtype if dtype == torch.float64 else torch.float16)
        self.overwrite = overwrite
        self.provenance = provenance or {}
        self.show_progress = show_progress
        self.shard_rows = shard_rows
        self.layout = discover_layers(self.model)
        self._temporary = None if run_dir else tempfile.TemporaryDirectory(prefix="dropinf-")
        self.store = RunStore(run_dir or self._temporary.name)
        self.capture: GradientCapture | None = None
        self.curvature: Curvature | None = None
        self._fitted_curvature: Curvature | None = None  # from the curvature phase to the next
        self._progress_phase, self._progress_time = "", 0.0

    @property
    def model_dtype(self) -> torch.dtype:
        """The dtype of the model's first parameter (inputs are cast to it)."""
        return next(self.model.parameters()).dtype

    # ------------------------------------------------------------------ fit
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
            ConfigError: ``batch_size`` is not a positive integer.
            DatasetError: A dataset is empty.
            RunDirectoryError: The run directory is a file, cannot be created, or holds files
                dropinf did not write and no run.
            RunLockedError: Another process is writing the run directory.
            RunConfigMismatchError: The run directory holds a run with another signature
                (configs, model, data, format) and ``overwrite`` is False.
            NonFiniteError: A loss or gradient is NaN/inf, or overflows the store dtype.
        """
        check_fit_arguments(train_dataset, batch_size, test_dataset)
        fingerprint = data_fingerprint or dataset_fingerprint(train_dataset)
        test_fingerprint = dataset_fingerprint(test_dataset) if test_dataset is not None else None
        self.store.check_location()
        with self.store.writer_lock():
            self.store.remove_temporaries()  # of killed writers: the lock says none is alive
            manifest = self._open_run(len(train_dataset), fingerprint)
            if test_dataset is not None and manifest.get("test_fingerprint") != test_fingerprint:
                return self._fit_phases(train_dataset, batch_size, (test_dataset, test_fingerprint))
            if manifest["status"] == "complete":
                return self._load_state()
            return self._fit_phases(train_dataset, batch_size, None)

    def _fit_phases(
        self, train_dataset: Dataset, batch_size: int, test: tuple[Dataset, str] | None
    ) -> InfluenceEngine:
        """Run the missing phases (and score ``test``: dataset, fingerprint), then mark complete."""
        self.store.update_manifest(status="running", error=None)
        try:
            self._run_phases(train_dataset, batch_size, test)
        except KeyboardInterrupt:
            self.store.update_manifest(status="cancelled")
            raise
        except Exception as error:
            self.store.update_manifest(status="failed", error=str(error))
            raise
        self.store.update_manifest(status="complete")
        self._write_progress("done", len(train_dataset), len(train_dataset), None)
        return self

    def _run_phases(
        self, train_dataset: Dataset, batch_size: int, test: tuple[Dataset, str] | None
    ) -> None:
        """The phases a run still lacks, in order, with their wall-clock seconds in the manifest."""
        if self.store.artifact_path("self_influence.npy").is_file():
            self._load_state()
        else:
            self._timed("calibration", self._prepare_capture, train_dataset, batch_size)
            self._timed("gradients", self._gradient_phase, train_dataset, batch_size)
            self._timed("curvature", self._curvature_phase)
            self._timed("self_influence", self._self_influence_phase)
        if test is not None:
            self._timed("test_scores", self._test_scores_phase, *test, batch_size)

    def _timed(self, phase: str, run: Callable[..., None], *args: Any) -> None:
        started = time.perf_counter()
        run(*args)
        timings = self.store.read_manifest().get("timings", {})
        timings[phase] = time.perf_counter() - started
        self.store.update_manifest(timings=timings)

    def _new_manifest(self, n_train: int, data_fingerprint: str) -> dict[str, Any]:
        specs = self.layout.specs
        return {
            "format": FORMAT_VERSION,
            "status": "running",
            "compression": self.compression.to_dict(),
            "curvature": self.curvature_config.to_dict(),
            "dtype": dtype_name(self.dtype),
            "store_dtype": dtype_name(self.store_dtype),
            "loss": loss_name(self.loss_fn),
            "model_fingerprint": model_fingerprint(self.model),
            "data_fingerprint": data_fingerprint,
            "test_fingerprint": None,
            "n_train": n_train,
            "rows_done": 0,
            "layers": [{**spec.to_dict(), "k": None} for spec in specs],
            "k": None,
            "shard_rows": None,
            "curvature_kind": None,
            "damping": None,
            "provenance": self.provenance,
            "versions": {
                "dropinf": __version__,
                "torch": torch.__version__,
                "python": sys.version.split()[0],
            },
            "created": now_iso(),
            "timings": {},
            "error": None,
        }

    def _open_run(self, n_train: int, data_fingerprint: str) -> dict[str, Any]:
        """Create the run, or check that the existing one has the same signature.

        Call with the writer lock held. Only dropinf's own files are ever cleared: a folder
        without a manifest must hold nothing else, and a manifest must carry dropinf's marker.
        """
        fresh = self._new_manifest(n_train, data_fingerprint)
        saved = self.store.manifest_or_none()
        if saved is None:
            self.store.refuse_foreign_files()
        elif not is_dropinf_manifest(saved):
            raise RunDirectoryError(
                f"expected an empty folder or a dropinf run directory at {self.store.run_dir}, "
                "found a manifest.json that dropinf did not write; nothing was changed"
            )
        elif not signature_differences(saved, fresh):
            return saved
        elif not self.overwrite:
            raise RunConfigMismatchError(mismatch_message(self.store.run_dir, saved, fresh))
        self.store.clear()
        self.store.write_manifest(fresh)
        return fresh

    def _prepare_capture(self, train_dataset: Dataset, batch_size: int) -> None:
        """Build the compressors: from the saved masks on resume, else from seed / calibration.

        The manifest's ``k`` commits the saved masks: a file written by a writer killed before
        its manifest update is rebuilt (deterministically) and written again.
        """
        if self.store.read_manifest()["k"] is not None:
            self.capture = self._restored_capture()
            return
        self._write_progress("calibrate", 0, 1, None)
        compressors = build_run_compressors(
            self.model, self.layout, self.compression, train_dataset, self.loss_fn, batch_size
        )
        self.capture = self._make_capture(compressors)
        self._save_compressors(compressors, batch_size)

    def _make_capture(self, compressors: list[LayerCompressor]) -> GradientCapture:
        moved = [compressor.to(self.device) for compressor in compressors]
        return GradientCapture(self.model, self.layout, moved)

    def _save_compressors(self, compressors: list[LayerCompressor], batch_size: int) -> None:
        tensors = {
            f"{position}.{name}": value
            for position, compressor in enumerate(compressors)
            for name, value in compressor.state().items()
        }
        tensors["k"] = torch.tensor([c.k for c in compressors])
        self.store.save_tensors("compressor.safetensors", tensors)
        layers = [
            {**s.to_dict(), "k": c.k} for s, c in zip(self.layout.specs, compressors, strict=True)
        ]
        k = sum(c.k for c in compressors)
        itemsize = torch.empty(0, dtype=self.store_dtype).element_size()
        whole_batches = SHARD_BYTES // (k * itemsize) // batch_size  # batches never straddle
        shard_rows = self.shard_rows or batch_size * max(1, whole_batches)
        self.store.update_manifest(layers=layers, k=k, shard_rows=shard_rows)

    def _restored_capture(self) -> GradientCapture:
        saved = self.store.load_tensors("compressor.safetensors")
        compressors = []
        for position, spec in enumerate(self.layout.specs):
            if self.compression.method == "dropout":
                prefix = f"{position}."
                state = {n[len(prefix) :]: v for n, v in saved.items() if n.startswith(prefix)}
                keep = self.compression.keep_ratio_for(spec.name)
                compressors.append(restore_mask_compressor(spec, keep, state))
            else:
                compressors.append(build_compressor(spec, self.compression, position))
        return self._make_capture(compressors)

    # -------------------------------------------------------------- phases
    def _gradient_phase(self, train_dataset: Dataset, batch_size: int) -> None:
        """Capture and store compressed gradients from the first row not yet stored."""
        manifest = self.store.read_manifest()
        n_train, k = manifest["n_train"], manifest["k"]
        numpy_dtype = torch.empty(0, dtype=self.store_dtype).numpy().dtype
        writer = GradientWriter(self.store, n_train, manifest["shard_rows"], k, numpy_dtype)
        first_row, started = writer.rows_done, time.perf_counter()
        loader = DataLoader(Subset(train_dataset, range(first_row, n_train)), batch_size)
        bar = tqdm(
            total=n_train,
            initial=first_row,
            unit="ex",
            desc="gradients",
            disable=not self.show_progress,
            dynamic_ncols=True,
        )
        for batch in loader:
            slot = writer.slot(len(batch[0])) if self.device.type == "cpu" else None
            out = None if slot is None else torch.from_numpy(slot)
            captured = self.capture.capture(self.loss_fn, self._batch(batch), self.store_dtype, out)
            gradients = None if slot is not None else captured.gradients.cpu().numpy()
            if writer.write(gradients, batch_metadata(captured, batch)):
                self.store.update_manifest(rows_done=writer.rows_done)
            bar.update(len(batch[0]))
            rate = (writer.rows_done - first_row) / max(time.perf_counter() - started, 1e-9)
            self._write_progress("gradients", writer.rows_done, n_train, rate)
        bar.close()

    def _curvature_phase(self) -> None:
        self._write_progress("curvature", 0, 1, None)
        manifest = self.store.read_manifest()
        dims = [layer["k"] for layer in manifest["layers"]]
        fitted = fit_curvature(
            self.store.iter_gradient_shards(),
            dims,
            manifest["n_train"],
            self.curvature_config,
            self.device,
            self.dtype,
        )
        self._fitted_curvature = fitted  # knows the low-rank blocks' self-influence
        state = fitted.state(self.dtype)
        self.store.save_tensors("curvature.safetensors", state)
        self.curvature = Curvature.from_state(fitted.kind, fitted.damping, state).to(self.device)
        self.store.update_manifest(curvature_kind=fitted.kind, damping=fitted.damping)

    def _self_influence_phase(self) -> None:
        self._write_progress("self_influence", 0, 1, None)
        fitted, self._fitted_curvature = self._fitted_curvature, None
        values = fitted.training_self_influence(self._train_chunks())
        self.store.save_self_influence(values.to(torch.float32).numpy())

    def _test_scores_phase(self, test_dataset: Dataset, fingerprint: str, batch_size: int) -> None:
        """Score the test set; the manifest's ``test_fingerprint`` commits the written scores."""
        self.store.update_manifest(test_fingerprint=None)
        self._write_progress("test_scores", 0, len(test_dataset), None)
        gradients, meta = self.test_gradients(test_dataset, batch_size)
        scores = self._scores(gradients).to(torch.float32).numpy()
        self.store.save_test_scores(scores, meta)
        self.store.update_manifest(test_fingerprint=fingerprint)

    # ------------------------------------------------------------- scoring
    def pairwise_scores(self, test_dataset: Dataset, batch_size: int = 256) -> torch.Tensor:
        """Influence of every training example on every test example.

        Returns:
            (n_test, n_train) scores in the engine dtype; positive = proponent.
        """
        gradients, _ = self.test_gradients(test_dataset, batch_size)
        return self._scores(gradients)

    def query(self, test_batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """Score new test examples against the stored training gradients, without refitting.

        Args:
            test_batch: ``(inputs, labels)`` of the new examples.

        Returns:
            (B, n_train) scores; positive = proponent.
        """
        self._require_fitted()
        captured = self.capture.capture(self.loss_fn, self._batch(test_batch))
        return self._scores(captured.gradients.to(self.dtype))

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

    def _scores(self, test_gradients: torch.Tensor) -> torch.Tensor:
        """(m, n_train) scores of preconditioned test gradients against every stored shard."""
        preconditioned = self.curvature.precondition(test_gradients.to(self.device))  # (m, k)
        blocks = [preconditioned @ train.T for _, train in self._train_chunks()]
        return torch.cat(blocks, dim=1).cpu()

    def _train_chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        return stored_gradient_chunks(self.store, self.device, self.dtype)

    # ------------------------------------------------------------- reopen
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
        if manifest.get("format") != FORMAT_VERSION:
            raise RunConfigMismatchError(
                f"run {run_dir} has the run format {manifest.get('format')}, expected "
                f"{FORMAT_VERSION}: recompute it with this version of dropinf"
            )
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
        if manifest["status"] != "complete":
            raise IncompleteRunError(f"run {run_dir} is {manifest['status']}, not complete")
        if model_fingerprint(engine.model) != manifest["model_fingerprint"]:
            raise RunConfigMismatchError(
                f"the model's weights differ from the model run {run_dir} was computed on "
                f"(expected fingerprint {manifest['model_fingerprint'][:12]}…)"
            )
        return engine._load_state()

    def _load_state(self) -> InfluenceEngine:
        self.capture = self._restored_capture()
        self.curvature = load_curvature(self.store, self.device)
        return self

    def _require_fitted(self) -> None:
        if self.capture is None or self.curvature is None:
            raise IncompleteRunError("call fit() (or InfluenceEngine.load) before scoring")

    def _batch(self, batch: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return batch_to(batch, self.device, self.model_dtype)

    def _write_progress(self, phase: str, done: int, total: int, rate: float | None) -> None:
        """Write progress.json, at most every PROGRESS_INTERVAL seconds within a phase."""
        now = time.monotonic()
        if phase == self._progress_phase and now - self._progress_time < PROGRESS_INTERVAL:
            return
        self._progress_phase, self._progress_time = phase, now
        eta = (total - done) / rate if rate else None
        self.store.write_progress(
            {"phase": phase, "done": done, "total": total, "examples_per_s": rate, "eta_s": eta}
        )
