"""Dropout compression: fixed kept units per layer (uniform or by energy); the block a gather."""

from __future__ import annotations

import torch

from dropinf.core.budget import kept_shape, unit_caps
from dropinf.core.compress import (
    LayerCompressor,
    UnitEnergy,
    check_representable,
    largest_magnitude,
    outer_product_sum,
)
from dropinf.core.layout import LayerSpec


class MaskCompressor(LayerCompressor):
    """``dropout`` and ``identity``: keep a fixed subset of units (all of them for identity)."""

    def __init__(
        self,
        spec: LayerSpec,
        keep_ratio: float,
        input_index: torch.Tensor | None,
        output_index: torch.Tensor | None,
        max_kept_units: int | None = None,
    ) -> None:
        super().__init__(spec, keep_ratio, max_kept_units)
        self.input_index = input_index
        self.output_index = output_index
        if input_index is not None:  # the masks, not the ratio, decide the kept block's shape
            self.k_in = len(input_index) * spec.patch
            self.k_out = len(output_index) if output_index is not None else 0
            bias = self.k_out if spec.has_bias else 0
            self.k = self.k_out * self.k_in + bias if spec.is_factored else len(input_index)

    def compress_factored(
        self, inputs: torch.Tensor, output_grads: torch.Tensor
    ) -> list[torch.Tensor]:
        """See ``LayerCompressor.compress_factored``."""
        return outer_product_sum(inputs, output_grads, self.spec.has_bias)

    def compress_flat(self, grads: torch.Tensor) -> torch.Tensor:
        """See ``LayerCompressor.compress_flat``."""
        return grads if self.input_index is None else grads[:, self.input_index]

    def write_factored(
        self,
        inputs: torch.Tensor,
        output_grads: torch.Tensor,
        out: torch.Tensor,
        accumulate: bool = False,
    ) -> None:
        """See ``LayerCompressor.write_factored``.

        The kept block is formed in the inputs' precision (an outer product when each example
        has one position), then converted once while copied into ``out``. Overflow of ``out``'s
        dtype is ruled out by a bound from the small factors, ``T · max|δ| · max(max|a|, 1)``;
        only when the bound fails are the formed values checked one by one.
        """
        positions = inputs.shape[1]
        if positions == 1:
            weights = output_grads[:, 0, :, None] * inputs[:, 0, None, :]  # (B, k_out, k_in)
        else:
            weights = torch.bmm(output_grads.transpose(1, 2), inputs)  # (B, k_out, k_in)
        bias = output_grads.sum(dim=1) if self.spec.has_bias else None
        largest_input = max(largest_magnitude(inputs), 1.0)  # 1.0 bounds the bias part
        bound = positions * largest_magnitude(output_grads) * largest_input
        self.write_block(weights, bias, out, accumulate, bound)

    def write_block(
        self,
        weights: torch.Tensor,
        bias: torch.Tensor | None,
        out: torch.Tensor,
        accumulate: bool = False,
        bound: float | None = None,
    ) -> None:
        """Write an already formed kept block into ``out`` (converted once, on the copy).

        Args:
            weights: (B, k_out, k_in) per-sample gradients of ``W[S_out, S_in]``.
            bias: (B, k_out) per-sample gradients of the kept biases, or None.
            out: (B, k) destination.
            accumulate: Add instead of overwrite (a module called again).
            bound: A known bound on every magnitude; None (or a bound beyond ``out``'s range)
                checks the values themselves.

        Raises:
            NonFiniteError: A value is NaN/inf or overflows ``out``'s dtype.
        """
        if bound is None or not bound <= torch.finfo(out.dtype).max:
            for values in (weights, bias) if bias is not None else (weights,):
                check_representable(values, out.dtype)
        split = self.k_out * self.k_in
        targets = [(out[:, :split].view(-1, self.k_out, self.k_in), weights)]
        if bias is not None:
            targets.append((out[:, split:], bias))
        for target, values in targets:
            if accumulate:
                target.add_(values)
            else:
                target.copy_(values)

    def state(self) -> dict[str, torch.Tensor]:
        """See ``LayerCompressor.state``."""
        saved = {"input_index": self.input_index, "output_index": self.output_index}
        return {name: index.cpu() for name, index in saved.items() if index is not None}


def random_subset(units: int, kept: int, generator: torch.Generator) -> torch.Tensor:
    """``kept`` distinct unit indices in ascending order, drawn uniformly."""
    return torch.randperm(units, generator=generator)[:kept].sort().values


def top_energy_subset(energy: torch.Tensor, kept: int) -> torch.Tensor:
    """The ``kept`` units with the largest energy, in ascending index order."""
    return torch.topk(energy.double(), kept).indices.sort().values


def mask_indices(
    spec: LayerSpec,
    keep_ratio: float,
    generator: torch.Generator,
    energy: UnitEnergy | None,
    max_kept_units: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Input and output unit subsets of a ``dropout`` layer (uniform, or by energy if given).

    Both respect the budget's unit caps (``unit_caps``); energy masks split the same weight
    budget ``kept_out · kept_in`` as uniform ones, within those caps.
    """
    kept_out, kept_in = kept_shape(spec, keep_ratio, max_kept_units)
    if energy is None:
        input_index = random_subset(spec.in_units, kept_in, generator)
        output_index = random_subset(spec.out_units, kept_out, generator) if kept_out else None
        return input_index, output_index
    if not spec.is_factored:
        return top_energy_subset(energy.inputs, kept_in), None
    cap_in, cap_out = unit_caps(spec, max_kept_units)
    kept_out, kept_in = energy_split(energy, kept_out * kept_in, cap_out, cap_in)
    return top_energy_subset(energy.inputs, kept_in), top_energy_subset(energy.outputs, kept_out)


def energy_split(
    energy: UnitEnergy, budget: int, max_out: int | None = None, max_in: int | None = None
) -> tuple[int, int]:
    """The (kept outputs, kept inputs) with product at most ``budget`` keeping most energy.

    A coordinate (o, i) of the weight gradient carries about ``E_out[o] · E_in[i]`` of energy,
    so a kept block's share is the product of the kept shares of output and input energy. The
    square split of uniform dropout is one candidate; when a few output units hold most of the
    energy (a classifier's last layer), taller blocks keep more of it in the same k.

    Args:
        energy: The layer's unit energies.
        budget: Largest product of kept outputs and kept inputs.
        max_out: Most output units kept (None: all may be).
        max_in: Most input units kept (None: all may be).

    Returns:
        (kept outputs, kept inputs).
    """
    out_share = sorted_energy_share(energy.outputs)  # (d_out,) share kept by the top 1, 2, ...
    in_share = sorted_energy_share(energy.inputs)
    out_share = out_share[: max_out or len(out_share)]
    most_in = min(len(in_share), max_in or len(in_share))
    kept_out = torch.arange(1, len(out_share) + 1)
    kept_in = torch.clamp(budget // kept_out, max=most_in)
    feasible = kept_in >= 1
    captured = torch.where(feasible, out_share * in_share[(kept_in - 1).clamp(min=0)], -1.0)
    best = int(torch.argmax(captured))
    return int(kept_out[best]), int(kept_in[best])


def sorted_energy_share(energy: torch.Tensor) -> torch.Tensor:
    """Share of the total energy held by the top 1, 2, ... units (float64)."""
    ordered = energy.double().sort(descending=True).values
    total = ordered.sum()
    return ordered.cumsum(0) / total if total > 0 else torch.linspace(0, 1, len(ordered) + 1)[1:]
