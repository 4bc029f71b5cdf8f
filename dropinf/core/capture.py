"""Per-sample compressed gradients, captured with hooks.

For every ``nn.Linear`` and ``nn.Conv2d`` a forward hook keeps the layer input (only the kept
units when the compressor needs a subset) and the layer output. The output gradients δ come from
one ``torch.autograd.grad`` of the *summed* per-sample losses with respect to those outputs, so an
ordinary backward's weight-gradient products are never computed. The compressor then forms its k
numbers from (a, δ). Parameters outside those layers (norms, embeddings, unusual convolutions) are
*flat*: their per-sample gradients come from ``torch.func.vmap`` and a flat compressor.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional

from dropinf.core.compress import (
    LayerCompressor,
    LayerSpec,
    MaskCompressor,
    UnitEnergy,
    check_representable,
)
from dropinf.errors import ConfigError, LossShapeError, NoCapturableLayerError, NonFiniteError

LossFn = Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]


@dataclass
class CaptureLayout:
    """Which parts of a model are captured, in capture order.

    Attributes:
        modules: Factored modules (Linear / Conv2d) by name.
        flat_parameters: Parameters outside those modules, by name.
        specs: One spec per captured layer: the factored modules, then each flat parameter.
    """

    modules: dict[str, nn.Module]
    flat_parameters: dict[str, nn.Parameter]
    specs: list[LayerSpec] = field(default_factory=list)


def is_factorable_conv(module: nn.Conv2d) -> bool:
    """Whether a Conv2d's gradient can be formed from unfolded inputs (plain, ungrouped)."""
    return (
        module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def factored_spec(name: str, module: nn.Module) -> LayerSpec | None:
    """The spec of a Linear / factorable Conv2d, or None for any other module."""
    has_bias = getattr(module, "bias", None) is not None and module.bias.requires_grad
    if isinstance(module, nn.Linear):
        return LayerSpec(name, "linear", module.in_features, module.out_features, 1, has_bias)
    if isinstance(module, nn.Conv2d) and is_factorable_conv(module):
        kernel_h, kernel_w = module.kernel_size
        return LayerSpec(
            name, "conv2d", module.in_channels, module.out_channels, kernel_h * kernel_w, has_bias
        )
    return None


def discover_layers(model: nn.Module) -> CaptureLayout:
    """Find the layers to capture: every trainable Linear / Conv2d, then leftover parameters.

    Raises:
        NoCapturableLayerError: The model has no trainable Linear or Conv2d layer.
    """
    layout = CaptureLayout(modules={}, flat_parameters={})
    covered: set[int] = set()
    for name, module in model.named_modules():
        spec = factored_spec(name, module)
        if spec is None or not module.weight.requires_grad:
            continue
        layout.modules[name] = module
        layout.specs.append(spec)
        covered.add(id(module.weight))
        if spec.has_bias:
            covered.add(id(module.bias))
    if not layout.modules:
        raise NoCapturableLayerError(
            f"expected a model with at least one trainable nn.Linear or nn.Conv2d layer; "
            f"found none in {type(model).__name__}"
        )
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and id(parameter) not in covered:
            layout.flat_parameters[name] = parameter
            layout.specs.append(LayerSpec(name, "flat", parameter.numel()))
    return layout


@dataclass
class LayerCall:
    """What a forward hook kept of one call of a captured module."""

    position: int
    inputs: torch.Tensor
    output: torch.Tensor
    output_version: int


@dataclass
class CapturedBatch:
    """Compressed gradients of one batch and what the model made of it.

    Attributes:
        gradients: (B, k) compressed per-sample gradients, layers concatenated in capture order.
        losses: (B,) per-sample losses.
        predictions: (B,) argmax of the model's (B, C) output, or None for other outputs.
    """

    gradients: torch.Tensor
    losses: torch.Tensor
    predictions: torch.Tensor | None


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


class GradientCapture:
    """Forms per-sample compressed gradients of a model, one batch at a time.

    Args:
        model: The model, in eval mode, on its device.
        layout: The layers to capture (``discover_layers``).
        compressors: One compressor per spec of ``layout``, on the model's device.
    """

    def __init__(
        self, model: nn.Module, layout: CaptureLayout, compressors: Sequence[LayerCompressor]
    ) -> None:
        self.model = model
        self.layout = layout
        self.compressors = list(compressors)
        self.clone_outputs: set[int] = set()

    @property
    def k(self) -> int:
        """Total compressed dimension."""
        return sum(compressor.k for compressor in self.compressors)

    def capture(
        self,
        loss_fn: LossFn,
        batch: Sequence[torch.Tensor],
        dtype: torch.dtype | None = None,
        out: torch.Tensor | None = None,
        kronecker: KroneckerStats | None = None,
    ) -> CapturedBatch:
        """Compressed per-sample gradients of one batch.

        Args:
            loss_fn: ``loss_fn(model, batch) -> (B,)``.
            batch: The batch, on the model's device.
            dtype: dtype of the returned gradients (default: the losses' dtype); each layer's
                block is converted while it is copied into place.
            out: A (B, k) tensor to write the gradients into (e.g. a view of a memmapped
                shard), instead of a new one; its dtype wins over ``dtype``.
            kronecker: K-FAC factor sums (``kronecker_stats``) to add this batch's kept
                activations and output gradients to, for ``kfac`` / ``ekfac`` curvature.

        Returns:
            The gradients (``out``), the per-sample losses and the predicted classes.

        Raises:
            NonFiniteError: A per-sample loss is NaN/inf, or a gradient overflows the dtype.
        """
        calls, losses, predictions = self._forward(loss_fn, batch, gather=True)
        output_grads = self._output_grads(losses, calls)
        if out is None:
            out = losses.new_empty(losses.shape[0], self.k, dtype=dtype or losses.dtype)
        blocks = self._column_blocks(out)
        self._write_factored(calls, output_grads, blocks)
        self._write_flat(loss_fn, batch, blocks[len(self.layout.modules) :])
        if kronecker is not None:
            self._add_kronecker(kronecker, calls, output_grads, losses.shape[0])
        return CapturedBatch(out, losses.detach(), predictions)

    def kronecker_stats(self, position_step: int = 1) -> KroneckerStats:
        """Empty K-FAC factor sums for this capture's factored layers, on the model's device.

        Args:
            position_step: Sum a conv's ``A`` over this sub-grid step of its output positions
                (``KroneckerStats``); 1, the default, is exact.

        Raises:
            ConfigError: A factored layer is not compressed by a mask (dropout or identity),
                or ``position_step`` is not a positive int.
        """
        modules = len(self.layout.modules)
        device = next(self.model.parameters()).device
        return KroneckerStats.zeros(self.compressors[:modules], device, position_step)

    def _add_kronecker(
        self,
        kronecker: KroneckerStats,
        calls: list[LayerCall],
        output_grads: list[torch.Tensor],
        examples: int,
    ) -> None:
        modules = list(self.layout.modules.values())
        for call, delta in zip(calls, output_grads, strict=True):
            compressor, module = self.compressors[call.position], modules[call.position]
            inputs = activation_moments(call.inputs, module, kronecker.position_step)
            gram = output_gram(delta, compressor.output_index, compressor.spec)
            kronecker.add(call.position, inputs, gram)
        kronecker.examples += examples

    def _column_blocks(self, out: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's columns of the (B, k) output."""
        bounds = itertools.accumulate((c.k for c in self.compressors), initial=0)
        return [out[:, a:b] for a, b in itertools.pairwise(bounds)]

    def unit_energy(self, loss_fn: LossFn, batch: Sequence[torch.Tensor]) -> list[UnitEnergy]:
        """Per-unit activation and output-gradient energy of one batch, one entry per spec."""
        calls, losses, _ = self._forward(loss_fn, batch, gather=False)
        output_grads = self._output_grads(losses, calls)
        energies = [
            UnitEnergy(torch.zeros(spec.in_units), torch.zeros(spec.out_units))
            for spec in self.layout.specs
        ]
        for call, delta in zip(calls, output_grads, strict=True):
            spec = self.layout.specs[call.position]
            channel_axis = 1 if spec.kind == "conv2d" else -1
            energies[call.position].inputs += unit_sum_of_squares(call.inputs, channel_axis)
            energies[call.position].outputs += unit_sum_of_squares(delta, channel_axis)
        first_flat = len(self.layout.modules)
        flat_grads = self._flat_per_sample_grads(loss_fn, batch)
        for offset, grads in enumerate(flat_grads):
            energies[first_flat + offset].inputs += grads.detach().pow(2).sum(0).cpu()
        return energies

    def _forward(
        self, loss_fn: LossFn, batch: Sequence[torch.Tensor], gather: bool
    ) -> tuple[list[LayerCall], torch.Tensor, torch.Tensor | None]:
        """Run the loss with hooks; rerun once if a layer output was later changed in place."""
        with self._hooks(gather) as (calls, outputs):
            losses = loss_fn(self.model, batch)
        check_losses(losses)
        changed = {call.position for call in calls if call.output._version != call.output_version}
        if changed - self.clone_outputs:
            self.clone_outputs |= changed
            return self._forward(loss_fn, batch, gather)
        predictions = predicted_classes(outputs[-1] if outputs else None)
        return calls, losses, predictions

    @contextmanager
    def _hooks(self, gather: bool) -> Iterator[tuple[list[LayerCall], list[torch.Tensor]]]:
        calls: list[LayerCall] = []
        outputs: list[torch.Tensor] = []
        handles = [
            module.register_forward_hook(self._layer_hook(position, calls, gather))
            for position, module in enumerate(self.layout.modules.values())
        ]
        handles.append(self.model.register_forward_hook(lambda _m, _i, out: outputs.append(out)))
        try:
            yield calls, outputs
        finally:
            for handle in handles:
                handle.remove()

    def _layer_hook(self, position: int, calls: list[LayerCall], gather: bool) -> Callable:
        spec = self.layout.specs[position]
        index = self.compressors[position].input_index if gather else None

        def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            inputs = gather_units(args[0].detach(), index, spec)
            calls.append(LayerCall(position, inputs, output, output._version))
            # A clone shields the kept output from in-place ops downstream (e.g. ReLU(inplace)).
            return output.clone() if position in self.clone_outputs else None

        return hook

    def _output_grads(self, losses: torch.Tensor, calls: list[LayerCall]) -> list[torch.Tensor]:
        """δ for every recorded call: one autograd.grad of the summed per-sample losses."""
        outputs = [call.output for call in calls]
        grads = torch.autograd.grad(losses.sum(), outputs, allow_unused=True)
        return [
            torch.zeros_like(output) if g is None else g
            for output, g in zip(outputs, grads, strict=True)
        ]

    def _write_factored(
        self, calls: list[LayerCall], output_grads: list[torch.Tensor], blocks: list[torch.Tensor]
    ) -> None:
        """Write each factored layer's compressed gradient, summed over repeated calls."""
        modules = list(self.layout.modules.values())
        written: set[int] = set()
        for call, delta in zip(calls, output_grads, strict=True):
            compressor, module = self.compressors[call.position], modules[call.position]
            accumulate = call.position in written
            written.add(call.position)
            write_layer(compressor, module, call.inputs, delta, blocks[call.position], accumulate)
        for position in set(range(len(modules))) - written:
            blocks[position].zero_()  # a layer this forward never called has zero gradient

    def _write_flat(
        self, loss_fn: LossFn, batch: Sequence[torch.Tensor], blocks: list[torch.Tensor]
    ) -> None:
        flat_compressors = self.compressors[len(self.layout.modules) :]
        grads = self._flat_per_sample_grads(loss_fn, batch)
        for compressor, g, block in zip(flat_compressors, grads, blocks, strict=True):
            compressed = compressor.compress_flat(g)
            check_representable(compressed, block.dtype)
            block.copy_(compressed)

    def _flat_per_sample_grads(
        self, loss_fn: LossFn, batch: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Per-sample gradients (B, D) of each flat parameter, through ``torch.func.vmap``."""
        if not self.layout.flat_parameters:
            return []
        return flat_per_sample_grads(self.model, self.layout.flat_parameters, loss_fn, batch)


def calibrate_unit_energy(
    model: nn.Module,
    layout: CaptureLayout,
    loss_fn: LossFn,
    batches: Iterable[Sequence[torch.Tensor]],
) -> list[UnitEnergy]:
    """Unit energies summed over calibration batches (on the model's device), one per spec."""
    full = [MaskCompressor(spec, 1.0, None, None) for spec in layout.specs]
    capture = GradientCapture(model, layout, full)
    totals: list[UnitEnergy] | None = None
    for batch in batches:
        energies = capture.unit_energy(loss_fn, batch)
        totals = (
            energies
            if totals is None
            else [
                UnitEnergy(t.inputs + e.inputs, t.outputs + e.outputs)
                for t, e in zip(totals, energies, strict=True)
            ]
        )
    return totals


def flat_per_sample_grads(
    model: nn.Module,
    flat_parameters: dict[str, nn.Parameter],
    loss_fn: LossFn,
    batch: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """Per-sample gradients of some parameters, one (B, numel) tensor each, via vmap."""
    frozen = {name: p.detach() for name, p in model.named_parameters()}
    frozen.update({name: b for name, b in model.named_buffers()})

    def loss_of_one(params: dict[str, torch.Tensor], *example: torch.Tensor) -> torch.Tensor:
        merged = {**frozen, **params}
        bound = lambda inputs: functional_call(model, merged, (inputs,))  # noqa: E731
        return loss_fn(bound, [item.unsqueeze(0) for item in example])[0]

    params = {name: p.detach() for name, p in flat_parameters.items()}
    per_sample = vmap(grad(loss_of_one), in_dims=(None, *([0] * len(batch))))(params, *batch)
    return [per_sample[name].flatten(1) for name in flat_parameters]


def gather_units(inputs: torch.Tensor, index: torch.Tensor | None, spec: LayerSpec) -> torch.Tensor:
    """Keep only the input units in ``index`` (channels for conv2d, features for linear)."""
    if index is None:
        return inputs
    return inputs[:, index] if spec.kind == "conv2d" else inputs[..., index]


def positions_view(inputs: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Layer inputs as (B, T, d_in): features per position (unfolded patches for conv2d)."""
    batch = inputs.shape[0]
    if isinstance(module, nn.Conv2d):
        return conv_patches(inputs, module)
    return inputs.reshape(batch, -1, inputs.shape[-1])


def activation_moments(inputs: torch.Tensor, module: nn.Module, step: int) -> ActivationMoments:
    """``Σ a aᵀ`` and ``Σ a`` of a layer's kept inputs over its positions (a conv's sub-grid).

    Args:
        inputs: The kept inputs as captured: (B, ..., k_in) for Linear, (B, k_in, H, W) for
            Conv2d.
        module: The layer.
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
    if spec.kind != "conv2d":
        kept = output_grads if index is None else output_grads[..., index]
        rows = kept.reshape(-1, kept.shape[-1])  # (B·T, k_out)
        return rows.T @ rows
    kept = output_grads if index is None else output_grads[:, index]  # (B, k_out, H', W')
    maps = kept.flatten(2)  # (B, k_out, L)
    return torch.bmm(maps, maps.mT).sum(0)


def write_layer(
    compressor: LayerCompressor,
    module: nn.Module,
    inputs: torch.Tensor,
    output_grads: torch.Tensor,
    out: torch.Tensor,
    accumulate: bool = False,
) -> None:
    """The compression step of one factored layer: its kept block into ``out``.

    Args:
        compressor: The layer's compressor.
        module: The Linear / Conv2d layer.
        inputs: The layer input as captured (only the kept units for masks).
        output_grads: The full loss gradient of the layer output.
        out: (B, k) destination columns.
        accumulate: Add instead of overwrite (a module called again).
    """
    if isinstance(module, nn.Conv2d) and isinstance(compressor, MaskCompressor):
        index = compressor.output_index
        kept = output_grads if index is None else output_grads[:, index]  # (B, k_out, H', W')
        weights = conv_weight_gradients(inputs, kept, module)  # (B, k_out, k_in)
        bias = kept.sum(dim=(2, 3)) if compressor.spec.has_bias else None
        compressor.write_block(weights, bias, out, accumulate)
        return
    positions = positions_view(inputs, module)  # (B, T, d_in)
    deltas = output_grads_view(output_grads, compressor.output_index, compressor.spec)
    compressor.write_factored(positions, deltas, out, accumulate)


def conv_weight_gradients(
    inputs: torch.Tensor, output_grads: torch.Tensor, conv: nn.Conv2d
) -> torch.Tensor:
    """Per-sample weight gradients of a conv's kept block, (B, k_out, k_in·kh·kw).

    One grouped backward-weight convolution with the batch as the groups: sample b's kept input
    channels meet only its own kept output gradients. No patch matrix is built (on 2 CPU cores
    this is ~10× faster than patches + bmm).

    Args:
        inputs: (B, k_in, H, W) the kept input channels.
        output_grads: (B, k_out, H', W') the kept output channels' gradients.
        conv: The layer (kernel size, stride, padding, dilation).
    """
    batch, channels = inputs.shape[:2]
    outputs = output_grads.shape[1]
    grads = torch.nn.grad.conv2d_weight(
        inputs.reshape(1, batch * channels, *inputs.shape[2:]),
        (batch * outputs, channels, *conv.kernel_size),
        output_grads.reshape(1, batch * outputs, *output_grads.shape[2:]),
        conv.stride,
        conv.padding,
        conv.dilation,
        groups=batch,
    )  # (B·k_out, k_in, kh, kw)
    return grads.reshape(batch, outputs, -1)


def conv_patches(inputs: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """The conv's input patches as (B, L, C·kh·kw), ordered like ``weight.view(C_out, -1)``.

    Undilated convolutions take strided views of the padded input and copy once, several times
    faster than ``F.unfold`` (im2col) on the CPU; dilated ones use ``F.unfold``.
    """
    if conv.dilation != (1, 1):
        patches = functional.unfold(
            inputs, conv.kernel_size, conv.dilation, conv.padding, conv.stride
        )
        return patches.transpose(1, 2)  # (B, L, C·kh·kw)
    (pad_h, pad_w), (kernel_h, kernel_w), (stride_h, stride_w) = (
        conv.padding,
        conv.kernel_size,
        conv.stride,
    )
    padded = functional.pad(inputs, (pad_w, pad_w, pad_h, pad_h))
    windows = padded.unfold(2, kernel_h, stride_h).unfold(
        3, kernel_w, stride_w
    )  # (B,C,H',W',kh,kw)
    batch, _, height, width = windows.shape[:4]
    return windows.permute(0, 2, 3, 1, 4, 5).reshape(batch, height * width, -1)


def output_grads_view(
    output_grads: torch.Tensor, index: torch.Tensor | None, spec: LayerSpec
) -> torch.Tensor:
    """Kept output gradients as (B, T, d_out)."""
    batch = output_grads.shape[0]
    if spec.kind == "conv2d":
        kept = output_grads if index is None else output_grads[:, index]  # (B, k_out, H, W)
        return kept.reshape(batch, kept.shape[1], -1).transpose(1, 2)
    kept = output_grads if index is None else output_grads[..., index]
    return kept.reshape(batch, -1, kept.shape[-1])


def unit_sum_of_squares(values: torch.Tensor, channel_axis: int) -> torch.Tensor:
    """Sum of squares per unit along ``channel_axis``, over every other axis, on the CPU."""
    moved = values.detach().movedim(channel_axis, -1)
    return moved.reshape(-1, moved.shape[-1]).pow(2).sum(0).cpu()


def predicted_classes(output: torch.Tensor | None) -> torch.Tensor | None:
    """Argmax classes of a (B, C) model output, or None when the output is not logits."""
    if isinstance(output, torch.Tensor) and output.ndim == 2:
        return output.detach().argmax(dim=1)
    return None


def check_losses(losses: torch.Tensor) -> None:
    """Refuse losses that are not a finite (B,) vector.

    Raises:
        NonFiniteError: Some per-sample loss is NaN or infinite.
        LossShapeError: The loss function did not return one loss per example.
    """
    if losses.ndim != 1:
        raise LossShapeError(
            f"loss_fn must return per-sample losses of shape (B,), got shape {tuple(losses.shape)}"
        )
    bad = (~torch.isfinite(losses)).nonzero().flatten()
    if bad.numel():
        raise NonFiniteError(
            f"expected finite per-sample losses; found NaN/inf at batch positions "
            f"{bad[:10].tolist()}"
        )
