"""Scores against a run's stored gradients: ``I(z', z) = g(z')ᵀ (F + λI)⁻¹ g(z)``.

The stored training gradients are streamed shard by shard (memory independent of n_train); the
fitted curvature is rebuilt from the run's saved state.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from dropinf.core import CapturedBatch, Curvature
from dropinf.run import RunStore


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
    tensors = store.load_curvature()
    curvature = Curvature.from_state(manifest["curvature_kind"], manifest["damping"], tensors)
    return curvature.to(device)


def influence_scores(
    curvature: Curvature,
    test_gradients: torch.Tensor,
    store: RunStore,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """(m, n_train) scores of test gradients (m, k) against every stored shard, on the CPU."""
    preconditioned = curvature.precondition(test_gradients.to(device))  # (m, k)
    chunks = stored_gradient_chunks(store, device, dtype)
    return torch.cat([preconditioned @ train.T for _, train in chunks], dim=1).cpu()


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
