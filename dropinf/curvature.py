"""The damped empirical Fisher in the compressed space, and solves against it.

``F = (1/N) Σ g gᵀ`` over the compressed training gradients; influence uses ``(F + λI)⁻¹``.
``full`` keeps one k×k block, ``block`` one block per layer (F restricted to each layer's
coordinates), ``identity`` no curvature at all (plain gradient similarity). Factors are
Cholesky factors, computed in float64.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from dropinf.config import CurvatureConfig
from dropinf.errors import NonFiniteError

CHUNK_ROWS = 4096


@dataclass
class Curvature:
    """Cholesky factors of ``F + λI`` per block of coordinates.

    Attributes:
        kind: ``full``, ``block`` or ``identity``.
        blocks: (start, stop) coordinate ranges, one per factor.
        factors: Lower Cholesky factors of the damped Fisher blocks (empty for identity).
        damping: The λ used (None for identity).
    """

    kind: str
    blocks: list[tuple[int, int]]
    factors: list[torch.Tensor]
    damping: float | None

    def precondition(self, gradients: torch.Tensor) -> torch.Tensor:
        """``g (F + λI)⁻¹`` for each row g of a (m, k) matrix."""
        if self.kind == "identity":
            return gradients
        result = torch.empty_like(gradients)
        for (start, stop), factor in zip(self.blocks, self.factors, strict=True):
            block = gradients[:, start:stop].T.to(factor.dtype)  # (k_b, m)
            result[:, start:stop] = torch.cholesky_solve(block, factor).T.to(gradients.dtype)
        return result

    def whiten(self, gradients: torch.Tensor) -> torch.Tensor:
        """``L⁻¹ g`` for each row: whitened rows whose squared norm is ``gᵀ(F + λI)⁻¹g``."""
        if self.kind == "identity":
            return gradients
        result = torch.empty_like(gradients)
        for (start, stop), factor in zip(self.blocks, self.factors, strict=True):
            block = gradients[:, start:stop].T.to(factor.dtype)  # (k_b, m)
            solved = torch.linalg.solve_triangular(factor, block, upper=False)
            result[:, start:stop] = solved.T.to(gradients.dtype)
        return result

    def to(self, device: torch.device) -> Curvature:
        """The same curvature with its factors on ``device``."""
        factors = [factor.to(device) for factor in self.factors]
        return Curvature(self.kind, self.blocks, factors, self.damping)

    def state(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Tensors to save: the factors (in ``dtype``) and the block bounds."""
        tensors = {f"factor.{i}": factor.to(dtype) for i, factor in enumerate(self.factors)}
        tensors["blocks"] = torch.tensor(self.blocks, dtype=torch.int64).reshape(-1, 2)
        return tensors

    @classmethod
    def from_state(
        cls, kind: str, damping: float | None, tensors: dict[str, torch.Tensor]
    ) -> Curvature:
        """Rebuild a curvature saved with ``state``."""
        blocks = [(int(a), int(b)) for a, b in tensors["blocks"].tolist()]
        count = 0 if kind == "identity" else len(blocks)
        factors = [tensors[f"factor.{i}"].double() for i in range(count)]
        return cls(kind, blocks, factors, damping)


def curvature_blocks(kind: str, layer_dims: list[int]) -> list[tuple[int, int]]:
    """Coordinate ranges of the curvature blocks: one for ``full``, one per layer for ``block``."""
    total = sum(layer_dims)
    if kind != "block":
        return [(0, total)]
    bounds = np.cumsum([0, *layer_dims])
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def fisher_blocks(
    shards: Iterable[np.ndarray], blocks: list[tuple[int, int]], device: torch.device
) -> tuple[list[torch.Tensor], int]:
    """Sum ``Σ g gᵀ`` per block over stored gradient shards, streaming in chunks.

    Returns:
        The un-normalised Fisher blocks (float64) and the number of rows read.
    """
    sums = [torch.zeros(b - a, b - a, dtype=torch.float64, device=device) for a, b in blocks]
    rows = 0
    for shard in shards:
        for start in range(0, shard.shape[0], CHUNK_ROWS):
            chunk = torch.from_numpy(np.array(shard[start : start + CHUNK_ROWS]))
            chunk = chunk.to(device=device, dtype=torch.float64)  # (r, k)
            for total, (a, b) in zip(sums, blocks, strict=True):
                total += chunk[:, a:b].T @ chunk[:, a:b]
            rows += chunk.shape[0]
    return sums, rows


def default_damping(fishers: list[torch.Tensor], ratio: float) -> float:
    """``ratio · mean(diag F)`` over all blocks (F already normalised)."""
    diagonal = torch.cat([fisher.diagonal() for fisher in fishers])
    return ratio * float(diagonal.mean())


def damped_cholesky(fisher: torch.Tensor, damping: float) -> torch.Tensor:
    """Lower Cholesky factor of ``F + λI``.

    Raises:
        NonFiniteError: The factorisation failed (non-finite gradients or λ = 0 on a singular F).
    """
    damped = fisher + damping * torch.eye(fisher.shape[0], dtype=fisher.dtype, device=fisher.device)
    factor, info = torch.linalg.cholesky_ex(damped)
    if int(info) != 0:
        raise NonFiniteError(
            f"expected a positive definite damped Fisher; Cholesky failed at column {int(info)} "
            f"(damping {damping:g}). Check the gradients for NaN/inf or raise the damping."
        )
    return factor


def fit_curvature(
    shards: Iterable[np.ndarray],
    layer_dims: list[int],
    config: CurvatureConfig,
    device: torch.device,
) -> Curvature:
    """Fit the damped Fisher of stored gradients.

    Args:
        shards: The training gradient shards, (rows, k) each.
        layer_dims: Compressed dimension of each layer, in coordinate order.
        config: Kind and damping.
        device: Where to accumulate and factor.

    Returns:
        The fitted curvature.
    """
    kind = config.resolve_kind(sum(layer_dims))
    blocks = curvature_blocks(kind, layer_dims)
    if kind == "identity":
        return Curvature(kind, blocks, [], None)
    sums, rows = fisher_blocks(shards, blocks, device)
    fishers = [total / max(rows, 1) for total in sums]
    damping = (
        config.damping
        if config.damping is not None
        else default_damping(fishers, config.damping_ratio)
    )
    factors = [damped_cholesky(fisher, damping) for fisher in fishers]
    return Curvature(kind, blocks, factors, damping)
