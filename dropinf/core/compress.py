"""Compressor strategies: how one layer's per-sample gradient becomes k numbers.

A captured layer is either *factored* (``nn.Linear`` and ``nn.Conv2d``: the per-sample weight
gradient is ``Σ_t δ_t a_tᵀ`` over positions t) or *flat* (any other parameter, whose per-sample
gradient arrives as a vector). Every strategy maps both kinds to a fixed number of coordinates:

* ``dropout``: keep a fixed subset of input units and output units (one mask for all samples);
  the compressed gradient is the gradient of the sub-block ``W[S_out, S_in]``, formed from the
  kept coordinates only. Masks are ``uniform`` (seeded random) or ``energy`` (the units with most
  activation / output-gradient energy on a calibration pass).
* ``identity``: keep everything (exact; the reference for every test).
* ``factorized_gaussian``: LoGra-style Gaussian projections of a and δ, then their outer product.
* ``gaussian``: a dense Gaussian projection of the full per-sample gradient (TRAK-style).
* ``sjlt``: a sparse Johnson-Lindenstrauss projection (s signed ones per input coordinate).

All strategies of one layer produce the same k for the same keep ratio and budget
(``CompressionConfig.max_kept_units`` caps the kept units per layer), so they store the same
number of floats and can be compared at equal budget. ``compressed_size`` gives that k and the
bytes per example from the layer shapes alone, before any model pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dropinf.core.budget import compressed_dim, kept_shape
from dropinf.core.layout import LayerSpec
from dropinf.errors import NonFiniteError


@dataclass
class UnitEnergy:
    """Sums of squares per unit, gathered on a calibration pass (for energy masks).

    Attributes:
        inputs: (in_units,) activation energy per input unit (channel for conv2d, entry for flat).
        outputs: (out_units,) output-gradient energy per output unit (empty for flat layers).
    """

    inputs: torch.Tensor
    outputs: torch.Tensor


class LayerCompressor:
    """Compresses the gradients of one layer to ``k`` coordinates.

    Subclasses set ``input_index`` / ``output_index`` when they only need a subset of the units
    (the capture gathers those before anything else), and implement ``compress_factored`` and
    ``compress_flat``.
    """

    input_index: torch.Tensor | None = None
    output_index: torch.Tensor | None = None

    def __init__(
        self, spec: LayerSpec, keep_ratio: float, max_kept_units: int | None = None
    ) -> None:
        self.spec = spec
        kept_out, kept_in = kept_shape(spec, keep_ratio, max_kept_units)
        self.k_in = kept_in * spec.patch
        self.k_out = kept_out
        self.k = compressed_dim(spec, keep_ratio, max_kept_units)

    def compress_factored(
        self, inputs: torch.Tensor, output_grads: torch.Tensor
    ) -> list[torch.Tensor]:
        """Compress ``Σ_t δ_t a_tᵀ`` (and the bias gradient ``Σ_t δ_t``).

        Args:
            inputs: (B, T, d_in) layer inputs at each position, already gathered with
                ``input_index`` and unfolded.
            output_grads: (B, T, d_out) loss gradients of the layer outputs, already gathered
                with ``output_index``.

        Returns:
            (B, ·) parts whose concatenation is the (B, k) compressed per-sample gradient
            (kept apart so the caller copies them once, straight into its output).
        """
        raise NotImplementedError

    def compress_flat(self, grads: torch.Tensor) -> torch.Tensor:
        """Compress full per-sample gradients (B, D) of a flat layer to (B, k)."""
        raise NotImplementedError

    def write_factored(
        self,
        inputs: torch.Tensor,
        output_grads: torch.Tensor,
        out: torch.Tensor,
        accumulate: bool = False,
    ) -> None:
        """Write (or add, for a module called again) the compressed gradient into ``out``.

        Args:
            inputs: As for ``compress_factored``.
            output_grads: As for ``compress_factored``.
            out: (B, k) destination, e.g. this layer's columns of a float16 shard.
            accumulate: Add to ``out`` instead of overwriting it.

        Raises:
            NonFiniteError: A value is NaN/inf or overflows ``out``'s dtype.
        """
        start = 0
        for part in self.compress_factored(inputs, output_grads):
            check_representable(part, out.dtype)
            target = out[:, start : start + part.shape[1]]
            if accumulate:
                target.add_(part)
            else:
                target.copy_(part)
            start += part.shape[1]

    def to(self, device: torch.device) -> LayerCompressor:
        """Move the compressor's tensors to ``device``."""
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors that cannot be regenerated from the seed (saved in the run directory)."""
        return {}


def outer_product_sum(
    inputs: torch.Tensor, output_grads: torch.Tensor, bias: bool
) -> list[torch.Tensor]:
    """Per-sample ``Σ_t δ_t a_tᵀ`` flattened, and ``Σ_t δ_t`` when ``bias``.

    Args:
        inputs: (B, T, d_in).
        output_grads: (B, T, d_out).
        bias: Add the bias gradient as a second part.

    Returns:
        [(B, d_out·d_in)] or [(B, d_out·d_in), (B, d_out)].
    """
    batch = inputs.shape[0]
    weight_grad = torch.bmm(output_grads.transpose(1, 2), inputs)  # (B, d_out, d_in)
    parts = [weight_grad.reshape(batch, -1)]
    if bias:
        parts.append(output_grads.sum(dim=1))  # (B, d_out)
    return parts


def largest_magnitude(values: torch.Tensor) -> float:
    """``max |values|`` in one pass without a temporary (NaN if any value is NaN)."""
    low, high = torch.aminmax(values)
    return max(-float(low), float(high))


def check_representable(values: torch.Tensor, dtype: torch.dtype) -> None:
    """Refuse gradients that are NaN/inf or overflow ``dtype`` (one read, no copy).

    Raises:
        NonFiniteError: A value is NaN or infinite, or beyond the largest ``dtype`` value.
    """
    largest = largest_magnitude(values)
    if not largest <= torch.finfo(dtype).max:  # also catches NaN
        raise NonFiniteError(
            f"expected finite compressed gradients within {dtype} range "
            f"(±{torch.finfo(dtype).max:g}); found a largest magnitude of {largest:g}"
            + (". Use store_dtype=torch.float32." if dtype == torch.float16 else "")
        )


def layer_generator(seed: int, layer_position: int) -> torch.Generator:
    """A CPU generator unique to (seed, layer): same seed, same masks and projections."""
    return torch.Generator().manual_seed(seed * 1_000_003 + layer_position)
