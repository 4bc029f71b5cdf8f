"""The gradient map: a 2-D UMAP of a run's compressed training gradients, cached per run.

Influence is an inner product of curvature-whitened gradients (``I(z', z) = (L⁻¹g')ᵀ(L⁻¹g)``),
so the map embeds the whitened gradients: training examples that are close push the model the
same way. The pipeline streams the stored shards (memory independent of n): whiten each chunk with
the run's saved Cholesky factors (no model needed), project it to at most ``PROJECTED_DIM``
coordinates with a seeded Gaussian matrix (Johnson–Lindenstrauss: distances kept to a few
percent), then PCA to ``PCA_DIM`` and UMAP (cosine metric) to 2-D.

``compute_gradient_map`` runs in a background job (``python -m dropinf map --run RUN_DIR``, built
by ``dropinf.cli.map_command``) because ``import umap`` alone costs about 12 s; the result is
``RUN_DIR/umap.npz`` and ``load_gradient_map`` reads it back in milliseconds. While it runs it
reports its phase (``MAP_PHASES``) and the rows read in the map job's progress file
(``dropinf.run.job_progress_path``), which the dashboard's job panel shows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dropinf.engine import load_curvature, stored_gradient_chunks
from dropinf.errors import IncompleteRunError
from dropinf.run import MAP_FILE, RunStore, atomic_write_json, job_progress_path

MAP_JOB = "map"
MAP_PHASES = {
    "gradients": "Reading and whitening the stored gradients",
    "embed": "Embedding them in 2-D (UMAP)",
}
PROJECTED_DIM = 256
PCA_DIM = 50
DEFAULT_NEIGHBORS = 15


def gradient_map_path(run_dir: str | Path) -> Path:
    """Where a run's gradient map is cached: ``RUN_DIR/umap.npz``."""
    return Path(run_dir) / MAP_FILE


def compute_gradient_map(
    run_dir: str | Path,
    whiten: bool = True,
    seed: int = 0,
    n_neighbors: int = DEFAULT_NEIGHBORS,
    min_dist: float = 0.1,
) -> Path:
    """Embed a complete run's training gradients in 2-D and cache the result.

    Args:
        run_dir: A run directory whose gradients and curvature are written.
        whiten: Whiten by the run's curvature first (the geometry of influence).
        seed: Seed of the projection and of UMAP (same seed, same map).
        n_neighbors: UMAP neighbourhood size (clipped for tiny runs).
        min_dist: UMAP minimum distance between embedded points.

    Returns:
        The path of the written ``umap.npz`` (``coords`` (n_train, 2) float32 and settings).

    Raises:
        RunNotFoundError: No run in ``run_dir``.
        CorruptRunError: The run's manifest is unreadable.
        IncompleteRunError: The run has no gradients or curvature yet.
        RunLockedError: Another process is writing the run.
    """
    RunStore(run_dir).read_manifest()  # no run, no lock file left behind
    with RunStore(run_dir).writer_lock("mapped"):
        features = reduced_gradients(run_dir, whiten, seed)  # (n, ≤ PCA_DIM)
        _report(run_dir, "embed", 0, 1)
        coords = _embed(features, seed, n_neighbors, min_dist)  # (n, 2)
        path = gradient_map_path(run_dir)
        settings = {"whitened": whiten, "seed": seed, "n_neighbors": n_neighbors}
        _save_npz_atomic(path, coords=coords.astype(np.float32), **settings)
    return path


def load_gradient_map(run_dir: str | Path) -> np.ndarray | None:
    """The cached (n_train, 2) map of a run, or None if it is not computed (or out of date)."""
    info = gradient_map_info(run_dir)
    return info["coords"] if info is not None else None


def gradient_map_info(run_dir: str | Path) -> dict[str, Any] | None:
    """The cached map with its settings (``coords``, ``whitened``, ``seed``, ``n_neighbors``).

    Returns:
        The contents of ``umap.npz``, or None when it is missing, unreadable, or holds a
        different number of rows than the run has training examples.
    """
    try:
        with np.load(gradient_map_path(run_dir), allow_pickle=False) as stored:
            info = {name: stored[name] for name in stored.files}
    except (OSError, ValueError):
        return None
    n_train = _manifest_n_train(run_dir)
    if n_train is not None and info["coords"].shape[0] != n_train:
        return None
    return {**info, **{name: info[name].item() for name in info if info[name].ndim == 0}}


def reduced_gradients(run_dir: str | Path, whiten: bool = True, seed: int = 0) -> np.ndarray:
    """The run's (optionally whitened) gradients reduced to at most ``PCA_DIM`` coordinates.

    Args:
        run_dir: The run directory.
        whiten: Whiten by the run's curvature first.
        seed: Seed of the Gaussian projection and the randomized PCA.

    Returns:
        (n_train, min(PCA_DIM, k, n_train)) float32.
    """
    from sklearn.decomposition import PCA  # lazy: ≈ 1 s, only the background job needs it

    store = RunStore(run_dir)
    if not store.is_complete():
        raise IncompleteRunError(f"run {store.run_dir} is {store.status}, not complete")
    projected = np.concatenate(list(_projected_chunks(store, whiten, seed)))
    components = min(PCA_DIM, projected.shape[1], projected.shape[0])
    if components == projected.shape[1]:
        return projected
    pca = PCA(n_components=components, svd_solver="randomized", random_state=seed)
    return pca.fit_transform(projected).astype(np.float32)


def _projected_chunks(store: RunStore, whiten: bool, seed: int) -> Iterator[np.ndarray]:
    """Whitened, projected gradient chunks, (rows, min(k, PROJECTED_DIM)) float32 each."""
    manifest, cpu = store.read_manifest(), torch.device("cpu")
    curvature = load_curvature(store, cpu) if whiten else None
    projection = _gaussian_projection(int(manifest["k"]), seed)  # (k, PROJECTED_DIM) or None
    dtype, done, total = getattr(torch, manifest["dtype"]), 0, int(manifest["n_train"])
    for _, chunk in stored_gradient_chunks(store, cpu, dtype):  # (rows, k)
        if curvature is not None:
            chunk = curvature.whiten(chunk)
        chunk = chunk.float()
        yield (chunk @ projection if projection is not None else chunk).numpy()
        done += chunk.shape[0]
        _report(store.run_dir, "gradients", done, total)


def _report(run_dir: str | Path, phase: str, done: int, total: int) -> None:
    """Write the map job's progress (``MAP_PHASES``) for the dashboard's job panel."""
    atomic_write_json(
        job_progress_path(run_dir, MAP_JOB), {"phase": phase, "done": done, "total": total}
    )


def _gaussian_projection(k: int, seed: int) -> torch.Tensor | None:
    """A seeded (k, PROJECTED_DIM) Gaussian matrix scaled to keep norms; None if k is small."""
    if k <= PROJECTED_DIM:
        return None
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(k, PROJECTED_DIM, generator=generator)
    return matrix / PROJECTED_DIM**0.5


def _embed(features: np.ndarray, seed: int, n_neighbors: int, min_dist: float) -> np.ndarray:
    """UMAP of the rows to 2-D; plain PCA coordinates when there are too few rows for UMAP."""
    n = features.shape[0]
    if n <= 3 or features.shape[1] <= 2:
        padded = np.zeros((n, 2), dtype=np.float32)
        padded[:, : min(2, features.shape[1])] = features[:, :2]
        return padded
    import umap  # ≈ 12 s (numba compilation): only ever inside the background job

    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=max(2, min(n_neighbors, n - 1)),
        min_dist=min_dist,
        metric="cosine",
        random_state=seed,
        n_jobs=1,  # a seed makes UMAP single-threaded anyway; say so to skip its warning
        init="spectral" if n > n_neighbors + 1 else "random",
    )
    return np.asarray(reducer.fit_transform(features), dtype=np.float32)


def _manifest_n_train(run_dir: str | Path) -> int | None:
    manifest = RunStore(run_dir).manifest_or_none() or {}
    return manifest.get("n_train")


def _save_npz_atomic(path: Path, **arrays: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
