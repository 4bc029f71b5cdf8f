"""Kronecker statistics of the kept blocks: A = Σ a_S a_Sᵀ and Δ = Σ δ_T δ_Tᵀ per factored layer.

Filled during the gradient pass from what the capture already holds; summable, so partial sums
per shard make resume and multi-process runs exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from dropinf.core.compress import LayerCompressor
from dropinf.core.layout import LayerSpec
from dropinf.core.masks import MaskCompressor
from dropinf.errors import ConfigError


@dataclass
class ActivationMoments:
    """First and second moments of one call's kept input columns, summed over positions.

    Attributes:
        gram: (cols, cols) ``Σ a aᵀ`` over the call's examples and sampled positions.
        sums: (cols,) ``Σ a``, the bias column's cross terms.
        positions: How many (example, position) pairs were summed.
    """

    gram: torch.Tensor
    sums: torch.Tensor
    positions: int


@dataclass
class KroneckerStats:
    """Sums of the K-FAC factors of every factored layer's kept block.

    A masked layer's compressed gradient is ``Σ_t δ_t[T] a_t[S]ᵀ`` (its bias the last column,
    the coefficient of a constant 1 appended to ``a_t``), so its K-FAC factors are
    ``A = Σ a aᵀ / positions`` over the kept input columns (plus the 1) and
    ``Δ = Σ δ δᵀ / examples`` over the kept outputs; ``Δ ⊗ A`` then approximates the Fisher of
    the sum over positions, exactly for one position per example and independent a and δ. Only
    sums and counts are held, so the sums over disjoint parts (shards, processes) add up to the
    sum over the whole.

    Attributes:
        activations: Per factored layer, (cols, cols) float64 ``Σ a aᵀ`` over examples and
            positions; cols = kept input columns (+1 with a bias), in the stored column order.
        gradients: Per factored layer, (k_out, k_out) float64 ``Σ δ δᵀ``.
        positions: (layers,) float64 positions summed into each layer's ``activations``.
        examples: () float64 examples seen.
        bias: Per factored layer, whether its last column is the bias's constant 1 (saved as
            counts > 0, so that key-by-key sums of states keep it).
        position_step: A conv's ``A`` is summed over every ``position_step``-th output row and
            column only (a deterministic sub-grid, ``1/position_step²`` of the positions and
            of the cost); 1, the default, sums every position exactly. ``Δ`` is always exact.
    """

    activations: list[torch.Tensor]
    gradients: list[torch.Tensor]
    positions: torch.Tensor
    examples: torch.Tensor
    bias: tuple[bool, ...]
    position_step: int = 1

    @classmethod
    def zeros(
        cls,
        compressors: Sequence[LayerCompressor],
        device: torch.device | None = None,
        position_step: int = 1,
    ) -> KroneckerStats:
        """Empty sums for the compressors of the factored layers, in capture order.

        Args:
            compressors: The factored layers' compressors.
            device: Where to hold the sums.
            position_step: See the class docstring (1: exact).

        Raises:
            ConfigError: A compressor is not a mask (its block has no Kronecker factors), or
                ``position_step`` is not a positive int.
        """
        if (
            isinstance(position_step, bool)
            or not isinstance(position_step, int)
            or position_step < 1
        ):
            raise ConfigError(f"expected position_step an int >= 1; found {position_step!r}")
        activations, gradients = [], []
        for compressor in compressors:
            if not isinstance(compressor, MaskCompressor) or not compressor.spec.is_factored:
                raise ConfigError(
                    f"expected masked (dropout / identity) factored layers for K-FAC statistics; "
                    f"found {type(compressor).__name__} for {compressor.spec.name!r}"
                )
            columns = compressor.k_in + int(compressor.spec.has_bias)
            activations.append(float64_zeros((columns, columns), device))
            gradients.append(float64_zeros((compressor.k_out, compressor.k_out), device))
        positions = float64_zeros((len(compressors),), device)
        bias = tuple(compressor.spec.has_bias for compressor in compressors)
        examples = float64_zeros((), device)
        return cls(activations, gradients, positions, examples, bias, position_step)

    def add(self, layer: int, inputs: ActivationMoments, output_gram: torch.Tensor) -> None:
        """Add one call of a layer: its kept inputs' moments and its kept deltas' ``Σ δ δᵀ``."""
        self.gradients[layer] += output_gram.double()
        block, columns = self.activations[layer], inputs.gram.shape[0]
        block[:columns, :columns] += inputs.gram.double()
        if block.shape[0] > columns:  # the bias's constant 1
            sums = inputs.sums.double()  # (cols,)
            block[:columns, columns] += sums
            block[columns, :columns] += sums
            block[columns, columns] += inputs.positions
        self.positions[layer] += inputs.positions

    def factors(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, Δ) of one layer: mean of ``a aᵀ`` over positions, of ``δ δᵀ`` over examples."""
        activations = self.activations[layer] / self.positions[layer].clamp(min=1)
        return activations, self.gradients[layer] / self.examples.clamp(min=1)

    def merge(self, other: KroneckerStats) -> KroneckerStats:
        """The sums over two disjoint parts of the data (new tensors; both stay unchanged)."""
        if other.bias != self.bias or len(other.activations) != len(self.activations):
            raise ConfigError(
                f"expected K-FAC statistics of the same layers; found bias flags {self.bias} "
                f"and {other.bias}"
            )
        theirs = other.state()
        merged = KroneckerStats.from_state(
            {name: value + theirs[name] for name, value in self.state().items()}
        )
        merged.position_step = self.position_step
        return merged

    __add__ = merge

    def state(self) -> dict[str, torch.Tensor]:
        """The sums as a flat dict of CPU tensors (summable key by key, e.g. across shards)."""
        tensors = {
            "positions": self.positions.cpu(),
            "examples": self.examples.cpu(),
            "bias": torch.tensor(self.bias, dtype=torch.float64),
        }
        for layer, (a, g) in enumerate(zip(self.activations, self.gradients, strict=True)):
            tensors[f"{layer}.activations"], tensors[f"{layer}.gradients"] = a.cpu(), g.cpu()
        return tensors

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor]) -> KroneckerStats:
        """Rebuild float64 sums saved with ``state`` (or summed from several such dicts)."""
        layers = range(len(tensors["positions"]))
        return cls(
            [tensors[f"{layer}.activations"].double() for layer in layers],
            [tensors[f"{layer}.gradients"].double() for layer in layers],
            tensors["positions"].double(),
            tensors["examples"].double(),
            tuple(bool(flag > 0) for flag in tensors["bias"].tolist()),
        )


def float64_zeros(shape: tuple[int, ...], device: torch.device | None) -> torch.Tensor:
    """A float64 tensor of zeros on ``device``."""
    return torch.zeros(shape, dtype=torch.float64, device=device)


def activation_moments(inputs: torch.Tensor, module: nn.Module, step: int) -> ActivationMoments:
    """``Σ a aᵀ`` and ``Σ a`` of a layer's kept inputs over its positions (a conv's sub-grid).

    Args:
        inputs: The kept inputs as captured: (B, ..., k_in) for Linear, (B, k_in, H, W) for
            Conv2d (and a Conv1d's, as (B, k_in, 1, L)).
        module: The layer (a Conv1d as its ``planar_view``).
        step: A conv sums every ``step``-th output row and column (1: all).
    """
    if isinstance(module, nn.Conv2d):
        return conv_activation_moments(inputs, module, step)
    rows = inputs.reshape(-1, inputs.shape[-1])  # (B·T, k_in)
    return ActivationMoments(rows.T @ rows, rows.sum(0), rows.shape[0])


def conv_activation_moments(inputs: torch.Tensor, conv: nn.Conv2d, step: int) -> ActivationMoments:
    """A conv's patch moments in ``weight.view(C_out, -1)`` column order (c, i, j).

    The patches are copied once from a channels-last padded input, with (i, j, c) columns so
    that every copied run is kw·C contiguous values; the (cols, cols) Gram is permuted back.
    ``Σ a`` is read off the batch-summed input, never off the patch matrix. Dilated
    convolutions take ``F.unfold`` patches.
    """
    stride_h, stride_w = conv.stride[0] * step, conv.stride[1] * step
    if conv.dilation != (1, 1):
        patches = functional.unfold(
            inputs, conv.kernel_size, conv.dilation, conv.padding, (stride_h, stride_w)
        )  # (B, C·kh·kw, L)
        rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        return ActivationMoments(rows.T @ rows, rows.sum(0), rows.shape[0])
    (pad_h, pad_w), (kernel_h, kernel_w) = conv.padding, conv.kernel_size
    padded = functional.pad(inputs.permute(0, 2, 3, 1), (0, 0, pad_w, pad_w, pad_h, pad_h))
    windows = padded.unfold(1, kernel_h, stride_h).unfold(2, kernel_w, stride_w)
    windows = windows.permute(0, 1, 2, 4, 5, 3)  # (B, H', W', kh, kw, C)
    channels = inputs.shape[1]
    rows = windows.reshape(-1, kernel_h * kernel_w * channels)  # (B·L, kh·kw·C), (i, j, c)
    gram = (rows.T @ rows).reshape(kernel_h, kernel_w, channels, kernel_h, kernel_w, channels)
    summed = padded.sum(0, keepdim=True)  # (1, Hp, Wp, C)
    sums = summed.unfold(1, kernel_h, stride_h).unfold(2, kernel_w, stride_w).sum((0, 1, 2))
    columns = channels * kernel_h * kernel_w
    return ActivationMoments(
        gram.permute(2, 0, 1, 5, 3, 4).reshape(columns, columns),
        sums.reshape(columns),  # (C, kh, kw) flattened
        rows.shape[0],
    )


def output_gram(
    output_grads: torch.Tensor, index: torch.Tensor | None, spec: LayerSpec
) -> torch.Tensor:
    """``Σ δ δᵀ`` of the kept output units over examples and positions, (k_out, k_out)."""
    if not spec.is_conv:
        kept = output_grads if index is None else output_grads[..., index]
        rows = kept.reshape(-1, kept.shape[-1])  # (B·T, k_out)
        return rows.T @ rows
    kept = output_grads if index is None else output_grads[:, index]  # (B, k_out, H', W')
    maps = kept.flatten(2)  # (B, k_out, L)
    return torch.bmm(maps, maps.mT).sum(0)
