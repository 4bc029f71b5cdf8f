"""Baseline compressors at the dropout's k: dense Gaussian (TRAK), factorised (LoGra), SJLT."""

from __future__ import annotations

import math

import torch

from dropinf.core.compress import LayerCompressor, outer_product_sum
from dropinf.core.layout import LayerSpec

SJLT_NONZEROS = 2


class FactorizedGaussianCompressor(LayerCompressor):
    """LoGra-style: project a and δ with Gaussian matrices, then take their outer product."""

    def __init__(
        self,
        spec: LayerSpec,
        keep_ratio: float,
        generator: torch.Generator,
        max_kept_units: int | None = None,
    ) -> None:
        super().__init__(spec, keep_ratio, max_kept_units)
        if spec.is_factored:
            d_in = spec.in_units * spec.patch
            self.input_projection = gaussian_matrix(d_in, self.k_in, generator)
            self.output_projection = gaussian_matrix(spec.out_units, self.k_out, generator)
        else:
            self.flat_projection = gaussian_matrix(spec.in_units, self.k, generator)

    def compress_factored(
        self, inputs: torch.Tensor, output_grads: torch.Tensor
    ) -> list[torch.Tensor]:
        """See ``LayerCompressor.compress_factored``."""
        projected_inputs = inputs @ self.input_projection.to(inputs.dtype)  # (B, T, k_in)
        projected_grads = output_grads @ self.output_projection.to(inputs.dtype)  # (B, T, k_out)
        return outer_product_sum(projected_inputs, projected_grads, self.spec.has_bias)

    def compress_flat(self, grads: torch.Tensor) -> torch.Tensor:
        """See ``LayerCompressor.compress_flat``."""
        return grads @ self.flat_projection.to(grads.dtype)


class FlatProjectionCompressor(LayerCompressor):
    """``gaussian`` and ``sjlt``: build the full per-sample gradient, then project it."""

    def compress_factored(
        self, inputs: torch.Tensor, output_grads: torch.Tensor
    ) -> list[torch.Tensor]:
        """See ``LayerCompressor.compress_factored``."""
        parts = outer_product_sum(inputs, output_grads, self.spec.has_bias)
        return [self.compress_flat(torch.cat(parts, dim=1))]


class GaussianCompressor(FlatProjectionCompressor):
    """Dense Gaussian projection of the full gradient (TRAK's projector)."""

    def __init__(
        self,
        spec: LayerSpec,
        keep_ratio: float,
        generator: torch.Generator,
        max_kept_units: int | None = None,
    ) -> None:
        super().__init__(spec, keep_ratio, max_kept_units)
        self.projection = gaussian_matrix(spec.full_dim, self.k, generator)

    def compress_flat(self, grads: torch.Tensor) -> torch.Tensor:
        """See ``LayerCompressor.compress_flat``."""
        return grads @ self.projection.to(grads.dtype)


class SparseProjectionCompressor(FlatProjectionCompressor):
    """Sparse JL projection: each coordinate adds ``±1/√s`` to ``s`` random output buckets."""

    def __init__(
        self,
        spec: LayerSpec,
        keep_ratio: float,
        generator: torch.Generator,
        max_kept_units: int | None = None,
    ) -> None:
        super().__init__(spec, keep_ratio, max_kept_units)
        shape = (SJLT_NONZEROS, spec.full_dim)
        self.buckets = torch.randint(0, self.k, shape, generator=generator)
        signs = torch.randint(0, 2, shape, generator=generator) * 2 - 1
        self.signs = signs.float() / math.sqrt(SJLT_NONZEROS)

    def compress_flat(self, grads: torch.Tensor) -> torch.Tensor:
        """See ``LayerCompressor.compress_flat``."""
        sketch = grads.new_zeros(grads.shape[0], self.k)  # (B, k)
        for bucket, sign in zip(self.buckets, self.signs, strict=True):
            sketch.index_add_(1, bucket, grads * sign.to(grads.dtype))
        return sketch


def gaussian_matrix(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """A (rows, cols) matrix of N(0, 1/cols) entries drawn from ``generator``."""
    return torch.randn(rows, cols, generator=generator) / math.sqrt(cols)
