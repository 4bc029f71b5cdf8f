"""Kronecker-factored curvature (K-FAC, EK-FAC) in the kept coordinates of each layer.

A masked layer's compressed gradient is the (k_out × cols) matrix ``G = Σ_t δ_t a_tᵀ`` of its
kept block (the bias as the last column). With the factors ``A`` (cols²) and ``Δ`` (k_out²)
gathered during the gradient pass (``capture.KroneckerStats``) and their eigenbases
``A = Q_A Λ_A Q_Aᵀ``, ``Δ = Q_Δ Λ_Δ Q_Δᵀ``, the layer's damped curvature is applied as

    G ↦ Q_Δ [ (Q_Δᵀ G Q_A) / (E + λ) ] Q_Aᵀ

where ``E = Λ_Δ Λ_Aᵀ`` for ``kfac``, and for ``ekfac`` the second moments of the stored
compressed gradients rotated into that basis, ``E = mean((Q_Δᵀ G Q_A)²)`` (one pass over the
shards, no model pass). Flat layers get a diagonal: the mean squared stored gradient per
coordinate. λ per layer is ``damping_ratio`` times the layer's mean of E, unless set. Memory is
``k_out² + cols² + k`` per layer, independent of N; nothing is cubic in N.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from dropinf.core.config import CurvatureConfig
from dropinf.core.kronecker import KroneckerStats
from dropinf.errors import ConfigError

CHUNK_ROWS = 4096
# Sums a tensor in place across the processes fitting one curvature (each with its own rows).
Reduce = Callable[[torch.Tensor], None]


@dataclass
class KroneckerBlock:
    """One layer's ``(E + λ)`` in the Kronecker eigenbasis, for coordinates ``start:stop``.

    The stored row of the layer is ``[vec(W block) row-major, bias]``: the (k_out × cols)
    matrix G with its last column (the bias, when ``bias``) moved to the end.
    """

    start: int
    stop: int
    bias: bool
    output_basis: torch.Tensor  # (k_out, k_out) Q_Δ
    input_basis: torch.Tensor  # (cols, cols) Q_A
    eigenvalues: torch.Tensor  # (k_out, cols) E
    damping: float

    def matrices(self, gradients: torch.Tensor) -> torch.Tensor:
        """(m, k_b) stored rows as (m, k_out, cols) matrices G."""
        rows, (outputs, columns) = gradients.shape[0], self.eigenvalues.shape
        if not self.bias:
            return gradients.reshape(rows, outputs, columns)
        split = outputs * (columns - 1)
        weights = gradients[:, :split].reshape(rows, outputs, columns - 1)
        return torch.cat([weights, gradients[:, split:, None]], dim=2)

    def rows(self, matrices: torch.Tensor) -> torch.Tensor:
        """The inverse of ``matrices``: (m, k_out, cols) back to stored (m, k_b) rows."""
        count = matrices.shape[0]
        if not self.bias:
            return matrices.reshape(count, -1)
        return torch.cat([matrices[:, :, :-1].reshape(count, -1), matrices[:, :, -1]], dim=1)

    def rotate(self, gradients: torch.Tensor) -> torch.Tensor:
        """``Q_Δᵀ G Q_A`` of each row, (m, k_out, cols)."""
        g = self.matrices(gradients.to(self.input_basis.dtype))
        return self.output_basis.T @ g @ self.input_basis

    def precondition(self, gradients: torch.Tensor) -> torch.Tensor:
        """``g (F_b + λI)⁻¹`` for rows g of a (m, k_b) matrix."""
        scaled = self.rotate(gradients) / (self.eigenvalues + self.damping)
        return self.rows(self.output_basis @ scaled @ self.input_basis.T)

    def whiten(self, gradients: torch.Tensor) -> torch.Tensor:
        """Rows whose inner products are ``gᵀ(F_b + λI)⁻¹g'`` (coordinates in the eigenbasis)."""
        scaled = self.rotate(gradients) * (self.eigenvalues + self.damping).rsqrt()
        return scaled.reshape(scaled.shape[0], -1)

    def tensors(self) -> dict[str, torch.Tensor]:
        """What to save of this block."""
        return {
            "output_basis": self.output_basis,
            "input_basis": self.input_basis,
            "eigenvalues": self.eigenvalues,
            "damping": torch.tensor([self.damping], dtype=torch.float64),
        }


@dataclass
class DiagonalBlock:
    """``diag(d) + λI`` for the coordinates ``start:stop`` (a flat layer under kfac / ekfac)."""

    start: int
    stop: int
    diagonal: torch.Tensor  # (k_b,)
    damping: float

    def precondition(self, gradients: torch.Tensor) -> torch.Tensor:
        """``g (diag(d) + λI)⁻¹`` for each row."""
        return gradients.to(self.diagonal.dtype) / (self.diagonal + self.damping)

    def whiten(self, gradients: torch.Tensor) -> torch.Tensor:
        """``g / √(d + λ)`` for each row."""
        return gradients.to(self.diagonal.dtype) * (self.diagonal + self.damping).rsqrt()

    def tensors(self) -> dict[str, torch.Tensor]:
        """What to save of this block."""
        return {
            "diagonal": self.diagonal,
            "damping": torch.tensor([self.damping], dtype=torch.float64),
        }


def shard_chunks(
    shards: Iterable[np.ndarray], device: torch.device, dtype: torch.dtype
) -> Iterator[torch.Tensor]:
    """The rows of every shard as (≤ CHUNK_ROWS, k) tensors, in order."""
    for shard in shards:
        for offset in range(0, shard.shape[0], CHUNK_ROWS):
            chunk = torch.from_numpy(np.array(shard[offset : offset + CHUNK_ROWS]))
            yield chunk.to(device=device, dtype=dtype)


def eigenbasis(factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues clamped at 0, eigenvectors) of a symmetric factor, in float64."""
    values, vectors = torch.linalg.eigh(factor.double())
    return values.clamp(min=0), vectors


def kronecker_blocks(
    stats: KroneckerStats, layer_dims: list[int], device: torch.device
) -> list[KroneckerBlock]:
    """K-FAC blocks of the factored layers (``E = Λ_Δ Λ_Aᵀ``, damping not yet set).

    Raises:
        ConfigError: The statistics do not describe the layers' coordinates.
    """
    bounds = list(itertools.accumulate(layer_dims, initial=0))
    blocks = []
    for layer in range(len(stats.activations)):
        activations, gradients = (f.to(device) for f in stats.factors(layer))
        input_values, input_basis = eigenbasis(activations)
        output_values, output_basis = eigenbasis(gradients)
        columns, outputs = len(input_values), len(output_values)
        start, stop = bounds[layer], bounds[layer + 1]
        if stop - start != outputs * columns:
            raise ConfigError(
                f"expected layer {layer} of the K-FAC statistics to cover {stop - start} "
                f"coordinates; found {outputs} outputs × {columns} columns"
            )
        bias = stats.bias[layer]
        eigenvalues = output_values[:, None] * input_values[None, :]  # (k_out, cols)
        blocks.append(
            KroneckerBlock(start, stop, bias, output_basis, input_basis, eigenvalues, 0.0)
        )
    return blocks


def diagonal_blocks(layer_dims: list[int], first: int, device: torch.device) -> list[DiagonalBlock]:
    """Zero diagonals for the flat layers, from position ``first`` on (filled by a pass)."""
    bounds = list(itertools.accumulate(layer_dims, initial=0))
    return [
        DiagonalBlock(a, b, torch.zeros(b - a, dtype=torch.float64, device=device), 0.0)
        for a, b in itertools.pairwise(bounds[first:])
    ]


def second_moments(
    chunks: Iterable[torch.Tensor],
    kronecker: list[KroneckerBlock],
    diagonal: list[DiagonalBlock],
    n_rows: int,
    reduce: Reduce | None = None,
) -> None:
    """One pass over the stored rows: EK-FAC eigenvalues of ``kronecker``, ``diagonal``'s d.

    Sets each Kronecker block's ``eigenvalues`` to ``mean((Q_Δᵀ G Q_A)²)`` and each diagonal
    block's ``diagonal`` to ``mean(g²)`` (in place; float64 sums). With ``reduce``, each
    process passes its own rows and the sums are summed across processes before the mean.
    """
    sums = [torch.zeros_like(block.eigenvalues) for block in kronecker]
    for chunk in chunks:
        for total, block in zip(sums, kronecker, strict=True):
            total += block.rotate(chunk[:, block.start : block.stop]).double().pow(2).sum(0)
        for block in diagonal:
            block.diagonal += chunk[:, block.start : block.stop].double().pow(2).sum(0)
    if reduce is not None:
        for total in sums:
            reduce(total)
        for block in diagonal:
            reduce(block.diagonal)
    for total, block in zip(sums, kronecker, strict=True):
        block.eigenvalues = total / max(n_rows, 1)
    for block in diagonal:
        block.diagonal /= max(n_rows, 1)


def layer_damping(values: torch.Tensor, config: CurvatureConfig) -> float:
    """λ of one layer: ``config.damping``, else ``damping_ratio`` · mean eigenvalue (1 if 0)."""
    if config.damping is not None:
        return config.damping
    ratio = config.ratio_for("ekfac")  # kfac and ekfac share their default ratio
    damping = ratio * float(values.mean()) if values.numel() else 0.0
    return damping if damping > 0 else 1.0


def fit_kronecker(
    shards: Iterable[np.ndarray],
    layer_dims: list[int],
    n_rows: int,
    config: CurvatureConfig,
    kind: str,
    stats: KroneckerStats,
    device: torch.device,
    dtype: torch.dtype = torch.float64,
    reduce: Reduce | None = None,
) -> list[KroneckerBlock | DiagonalBlock]:
    """The ``kfac`` or ``ekfac`` blocks of a run, each with its own λ.

    Args:
        shards: The stored training gradients, (rows, k) each; read once, and only for
            ``ekfac`` or when there are flat layers.
        layer_dims: Each layer's k in coordinate order: the factored layers of ``stats`` first.
        n_rows: Training examples in the shards.
        config: Damping (or damping ratio).
        kind: ``kfac`` or ``ekfac``.
        stats: The K-FAC factor sums of the same training examples.
        device: Where to factor and accumulate.
        dtype: Precision of the chunks read from the shards.
        reduce: Sums a tensor across processes that each pass their own ``shards`` (``stats``
            being the run-wide sums already); None for one process.

    Returns:
        One Kronecker block per factored layer, then one diagonal block per flat layer.

    Raises:
        ConfigError: The statistics do not describe the layers.
    """
    kronecker = kronecker_blocks(stats, layer_dims, device)
    diagonal = diagonal_blocks(layer_dims, len(kronecker), device)
    if kind == "ekfac" or diagonal:
        chunks = shard_chunks(shards, device, dtype)
        second_moments(chunks, kronecker if kind == "ekfac" else [], diagonal, n_rows, reduce)
    for block in kronecker:
        block.damping = layer_damping(block.eigenvalues, config)
    for block in diagonal:
        block.damping = layer_damping(block.diagonal, config)
    return [*kronecker, *diagonal]


def kronecker_flops(kind: str, layer_dims: list[int], n_train: int, n_examples: int) -> float:
    """Dense operations of ``kfac`` / ``ekfac``, taking each layer's block as square.

    A layer of k coordinates has about √k outputs and √k columns: ``2·k^1.5`` per rotation,
    ``k^1.5`` for the two eigendecompositions, one rotation per stored row for ``ekfac`` and
    two per example pushed through the solve.
    """
    rotations = n_examples * 2 + (n_train if kind == "ekfac" else 0)
    return float(sum(2 * d**1.5 * rotations + d**1.5 for d in layer_dims))
