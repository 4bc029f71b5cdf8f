from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dropinf.core import CompressionConfig, cross_entropy_per_sample
from dropinf.dashboard import gradient_map
from dropinf.engine import InfluenceEngine
from dropinf.errors import IncompleteRunError
from dropinf.run import RunStore


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A complete run of a tiny MLP, exact (identity) compression: k = 6·8 + 8 + 8·3 + 3 = 83."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(60, 6, generator=generator)
    labels = torch.randint(0, 3, (60,), generator=generator)
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    InfluenceEngine(
        model, cross_entropy_per_sample, CompressionConfig(method="identity"), run_dir=run_dir,
        store_dtype=torch.float32,
    ).fit(TensorDataset(inputs, labels))  # fmt: skip
    return run_dir


def test_whitened_rows_have_self_influence_as_squared_norm(tiny_run):
    store = RunStore(tiny_run)
    chunks = list(gradient_map._projected_chunks(store, whiten=True, seed=0))
    whitened = np.concatenate(chunks)
    assert whitened.shape == (60, store.read_manifest()["k"])  # k ≤ PROJECTED_DIM: no projection
    np.testing.assert_allclose((whitened**2).sum(axis=1), store.self_influence(), rtol=1e-4)


def test_unwhitened_rows_are_the_stored_gradients(tiny_run):
    store = RunStore(tiny_run)
    raw = np.concatenate(list(gradient_map._projected_chunks(store, whiten=False, seed=0)))
    np.testing.assert_allclose(raw, store.gradients(), rtol=1e-6)


def test_reduced_gradients_shape(tiny_run):
    reduced = gradient_map.reduced_gradients(tiny_run, seed=0)
    assert reduced.shape == (60, gradient_map.PCA_DIM) and reduced.dtype == np.float32


def test_gaussian_projection_keeps_norms_and_is_seeded():
    assert gradient_map._gaussian_projection(gradient_map.PROJECTED_DIM, 0) is None
    projection = gradient_map._gaussian_projection(4000, 3)
    assert projection.shape == (4000, gradient_map.PROJECTED_DIM)
    assert torch.equal(projection, gradient_map._gaussian_projection(4000, 3))
    rows = torch.randn(50, 4000, generator=torch.Generator().manual_seed(0))
    ratio = (rows @ projection).norm(dim=1) / rows.norm(dim=1)
    assert ((ratio > 0.8) & (ratio < 1.2)).all()


def test_incomplete_run_is_refused(tmp_path):
    store = RunStore(tmp_path)
    store.write_manifest({"status": "running", "n_train": 5})
    with pytest.raises(IncompleteRunError, match="not complete"):
        gradient_map.reduced_gradients(tmp_path)


def test_tiny_inputs_skip_umap():
    coords = gradient_map._embed(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), 0, 15, 0.1)
    np.testing.assert_array_equal(coords, [[1.0, 2.0], [4.0, 5.0]])


def test_cache_roundtrip_and_staleness(tmp_path):
    assert gradient_map.load_gradient_map(tmp_path) is None
    RunStore(tmp_path).write_manifest({"status": "complete", "n_train": 4})
    coords = np.arange(8, dtype=np.float32).reshape(4, 2)
    gradient_map._save_npz_atomic(gradient_map.gradient_map_path(tmp_path), coords=coords,
                                  whitened=True, seed=3, n_neighbors=15)  # fmt: skip
    np.testing.assert_array_equal(gradient_map.load_gradient_map(tmp_path), coords)
    info = gradient_map.gradient_map_info(tmp_path)
    assert info["whitened"] is True and info["seed"] == 3
    RunStore(tmp_path).write_manifest({"status": "complete", "n_train": 5})
    assert gradient_map.load_gradient_map(tmp_path) is None  # the run changed under the map


@pytest.mark.slow
def test_compute_gradient_map_end_to_end(tiny_run):
    path = gradient_map.compute_gradient_map(tiny_run, seed=0, n_neighbors=10)
    assert path == tiny_run / "umap.npz"
    coords = gradient_map.load_gradient_map(tiny_run)
    assert coords.shape == (60, 2) and np.isfinite(coords).all()
    assert coords.std(axis=0).min() > 0


def test_map_is_refused_while_another_process_writes_the_run(tiny_run):
    from dropinf.errors import RunLockedError

    with RunStore(tiny_run).writer_lock(), pytest.raises(RunLockedError, match="being computed"):
        gradient_map.compute_gradient_map(tiny_run)
