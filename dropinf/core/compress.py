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

import math
from dataclasses import dataclass

import torch

from dropinf.core.config import CompressionConfig
from dropinf.errors import NonFiniteError

SJLT_NONZEROS = 2


@dataclass(frozen=True)
class LayerSpec:
    """The shape of one captured layer.

    Attributes:
        name: Module name (``model.named_modules()``), or parameter name for flat layers.
        kind: ``linear``, ``conv2d`` or ``flat``.
        in_units: Input features (linear), input channels (conv2d) or parameter size (flat).
        out_units: Output features / channels; 0 for flat layers.
        patch: Kernel positions per input channel (kh·kw for conv2d, 1 otherwise).
        has_bias: Whether the layer's bias is captured with it.
    """

    name: str
    kind: str
    in_units: int
    out_units: int = 0
    patch: int = 1
    has_bias: bool = False

    @property
    def is_factored(self) -> bool:
        """True for layers whose gradient is a sum of outer products."""
        return self.kind != "flat"

    @property
    def full_dim(self) -> int:
        """Number of parameters the layer's gradient has uncompressed."""
        if not self.is_factored:
            return self.in_units
        return self.out_units * self.in_units * self.patch + (
            self.out_units if self.has_bias else 0
        )

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict of this spec."""
        return {
            "name": self.name,
            "kind": self.kind,
            "in_units": self.in_units,
            "out_units": self.out_units,
            "patch": self.patch,
            "has_bias": self.has_bias,
        }


def kept_units(units: int, keep_ratio: float, cap: int | None = None) -> int:
    """How many of ``units`` a keep ratio keeps: ``round(q·units)``, at most ``cap``, at least 1."""
    kept = min(units, round(keep_ratio * units), units if cap is None else cap)
    return max(1, kept)


def unit_caps(spec: LayerSpec, max_kept_units: int | None) -> tuple[int | None, int | None]:
    """The (input, output) unit caps of a layer under the budget ``max_kept_units`` (m).

    Inputs are capped in columns: a Conv2d channel brings ``patch`` = kh·kw columns, so at most
    ``m // patch`` channels (at least one) are kept, and a kept block has at most m columns for
    any kernel. A flat layer keeps at most m² coordinates, the weight budget of a factored one.
    """
    if max_kept_units is None:
        return None, None
    if not spec.is_factored:
        return max_kept_units**2, None
    return max(1, max_kept_units // spec.patch), max_kept_units


def kept_shape(spec: LayerSpec, keep_ratio: float, max_kept_units: int | None) -> tuple[int, int]:
    """(kept output units, kept input units) of a layer: the ratio, then the budget's caps."""
    cap_in, cap_out = unit_caps(spec, max_kept_units)
    kept_in = kept_units(spec.in_units, keep_ratio, cap_in)
    kept_out = kept_units(spec.out_units, keep_ratio, cap_out) if spec.is_factored else 0
    return kept_out, kept_in


def compressed_dim(spec: LayerSpec, keep_ratio: float, max_kept_units: int | None) -> int:
    """The k a layer stores for a keep ratio and budget (every method but energy masks).

    Energy masks may split the same weight budget into a taller block, so their k can differ
    by the bias coordinates; the weight part never exceeds this one.
    """
    kept_out, kept_in = kept_shape(spec, keep_ratio, max_kept_units)
    if not spec.is_factored:
        return kept_in
    return kept_out * kept_in * spec.patch + (kept_out if spec.has_bias else 0)


@dataclass(frozen=True)
class CompressedSize:
    """What a configuration stores per example, known before any model pass.

    Attributes:
        layer_dims: Each layer's k, in capture order.
        k: Their sum, the compressed dimension.
        bytes_per_example: ``k`` times the stored value's size.
    """

    layer_dims: tuple[int, ...]
    k: int
    bytes_per_example: int


def compressed_size(
    specs: list[LayerSpec], config: CompressionConfig, value_bytes: int = 2
) -> CompressedSize:
    """Per-layer k, total k and bytes per example of a layout under a config, without a pass.

    Exact for uniform masks, ``identity`` and the projections; for energy masks (chosen on data)
    the weight coordinates are at most these. Feed it ``discover_layers(model).specs``.

    Args:
        specs: The captured layers' shapes.
        config: Method, keep ratios and budget.
        value_bytes: Bytes per stored value (2 for the default float16 store).

    Returns:
        The sizes.
    """
    dims = tuple(
        spec.full_dim
        if config.method == "identity"
        else compressed_dim(spec, config.keep_ratio_for(spec.name), config.max_kept_units)
        for spec in specs
    )
    return CompressedSize(dims, sum(dims), sum(dims) * value_bytes)


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


def gaussian_matrix(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """A (rows, cols) matrix of N(0, 1/cols) entries drawn from ``generator``."""
    return torch.randn(rows, cols, generator=generator) / math.sqrt(cols)


def layer_generator(seed: int, layer_position: int) -> torch.Generator:
    """A CPU generator unique to (seed, layer): same seed, same masks and projections."""
    return torch.Generator().manual_seed(seed * 1_000_003 + layer_position)


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


def build_compressor(
    spec: LayerSpec,
    config: CompressionConfig,
    layer_position: int,
    energy: UnitEnergy | None = None,
) -> LayerCompressor:
    """The compressor of one layer for a config.

    Args:
        spec: The layer's shape.
        config: Method, keep ratio, seed and mask strategy.
        layer_position: Index of the layer in capture order (seeds its generator).
        energy: Unit energies from a calibration pass; required for ``mask="energy"`` dropout.

    Returns:
        The layer's compressor (on the CPU).
    """
    keep_ratio, cap = config.keep_ratio_for(spec.name), config.max_kept_units
    generator = layer_generator(config.seed, layer_position)
    if config.method == "identity":
        return MaskCompressor(spec, 1.0, None, None)
    if config.method == "dropout":
        indices = mask_indices(spec, keep_ratio, generator, energy, cap)
        return MaskCompressor(spec, keep_ratio, *indices, cap)
    if config.method == "factorized_gaussian":
        return FactorizedGaussianCompressor(spec, keep_ratio, generator, cap)
    if config.method == "gaussian":
        return GaussianCompressor(spec, keep_ratio, generator, cap)
    return SparseProjectionCompressor(spec, keep_ratio, generator, cap)


def restore_mask_compressor(
    spec: LayerSpec,
    keep_ratio: float,
    state: dict[str, torch.Tensor],
    max_kept_units: int | None = None,
) -> MaskCompressor:
    """Rebuild a ``dropout`` compressor from its saved masks (they decide its k)."""
    input_index, output_index = state.get("input_index"), state.get("output_index")
    return MaskCompressor(spec, keep_ratio, input_index, output_index, max_kept_units)
