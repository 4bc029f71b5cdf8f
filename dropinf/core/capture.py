"""Per-sample compressed gradients, captured with hooks.

For every ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` a forward hook keeps the layer input
(only the kept units when the compressor needs a subset) and the layer output; a Conv1d is
handled as the 1×k Conv2d it equals (``planar_view``). The output gradients δ come from
one ``torch.autograd.grad`` of the *summed* per-sample losses with respect to those outputs, so an
ordinary backward's weight-gradient products are never computed. The compressor then forms its k
numbers from (a, δ). Parameters outside those layers (norms, embeddings, unusual convolutions) are
*flat*: their per-sample gradients come from ``torch.func.vmap`` and a flat compressor, except
the γ and β of LayerNorm, RMSNorm, GroupNorm and eval-mode BatchNorm, which the same hooks and
autograd call give (``norms``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from dropinf.core.compress import LayerCompressor, UnitEnergy, check_representable
from dropinf.core.kronecker import KroneckerStats, activation_moments, output_gram
from dropinf.core.layer_ops import gather_units, unit_sum_of_squares, write_layer
from dropinf.core.layout import CaptureLayout, planar_view
from dropinf.core.masks import MaskCompressor
from dropinf.core.norms import NormCall, hookable_norms, norm_hook, norm_per_sample_grads
from dropinf.errors import LossShapeError, NonFiniteError

LossFn = Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]


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
        self.geometry = [planar_view(module) for module in layout.modules.values()]

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
        calls, losses, predictions, norm_calls = self._forward(loss_fn, batch, gather=True)
        grads = self._output_grads(losses, [c.output for c in calls + norm_calls])
        output_grads, norm_grads = self._planar(calls, grads[: len(calls)]), grads[len(calls) :]
        if out is None:
            out = losses.new_empty(losses.shape[0], self.k, dtype=dtype or losses.dtype)
        blocks = self._column_blocks(out)
        self._write_factored(calls, output_grads, blocks)
        known = norm_per_sample_grads(norm_calls, norm_grads)
        self._write_flat(loss_fn, batch, blocks[len(self.layout.modules) :], known)
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
        for call, delta in zip(calls, output_grads, strict=True):
            compressor, module = self.compressors[call.position], self.geometry[call.position]
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
        calls, losses, _, _ = self._forward(loss_fn, batch, gather=False)
        output_grads = self._output_grads(losses, [call.output for call in calls])
        energies = [
            UnitEnergy(torch.zeros(spec.in_units), torch.zeros(spec.out_units))
            for spec in self.layout.specs
        ]
        for call, delta in zip(calls, output_grads, strict=True):
            spec = self.layout.specs[call.position]
            channel_axis = 1 if spec.is_conv else -1
            energies[call.position].inputs += unit_sum_of_squares(call.inputs, channel_axis)
            energies[call.position].outputs += unit_sum_of_squares(delta, channel_axis)
        first_flat = len(self.layout.modules)
        flat_grads = self._flat_per_sample_grads(loss_fn, batch)
        for offset, grads in enumerate(flat_grads):
            energies[first_flat + offset].inputs += grads.detach().pow(2).sum(0).cpu()
        return energies

    def _forward(
        self, loss_fn: LossFn, batch: Sequence[torch.Tensor], gather: bool
    ) -> tuple[list[LayerCall], torch.Tensor, torch.Tensor | None, list[NormCall]]:
        """Run the loss with hooks; rerun once if a layer output was later changed in place.

        With ``gather``, the norms whose γ / β are flat are recorded too
        (``norms``), so their per-sample gradients need no vmap pass.
        """
        with self._hooks(gather) as (calls, outputs, norm_calls):
            losses = loss_fn(self.model, batch)
        check_losses(losses)
        changed = {call.position for call in calls if call.output._version != call.output_version}
        if changed - self.clone_outputs:
            self.clone_outputs |= changed
            return self._forward(loss_fn, batch, gather)
        predictions = predicted_classes(outputs[-1] if outputs else None)
        return calls, losses, predictions, norm_calls

    @contextmanager
    def _hooks(
        self, gather: bool
    ) -> Iterator[tuple[list[LayerCall], list[torch.Tensor], list[NormCall]]]:
        calls: list[LayerCall] = []
        outputs: list[torch.Tensor] = []
        norm_calls: list[NormCall] = []
        handles = [
            module.register_forward_hook(self._layer_hook(position, calls, gather))
            for position, module in enumerate(self.layout.modules.values())
        ]
        if gather:
            norms = hookable_norms(self.model, set(self.layout.flat_parameters))
            handles += [
                module.register_forward_hook(norm_hook(parameters, norm_calls))
                for module, parameters in norms.items()
            ]
        handles.append(self.model.register_forward_hook(lambda _m, _i, out: outputs.append(out)))
        try:
            yield calls, outputs, norm_calls
        finally:
            for handle in handles:
                handle.remove()

    def _layer_hook(self, position: int, calls: list[LayerCall], gather: bool) -> Callable:
        spec = self.layout.specs[position]
        index = self.compressors[position].input_index if gather else None

        def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            inputs = gather_units(args[0].detach(), index, spec)
            if spec.kind == "conv1d":
                inputs = inputs.unsqueeze(2)  # (B, C, 1, L), as its planar view takes them
            calls.append(LayerCall(position, inputs, output, output._version))
            # A clone shields the kept output from in-place ops downstream (e.g. ReLU(inplace)).
            return output.clone() if position in self.clone_outputs else None

        return hook

    def _output_grads(
        self, losses: torch.Tensor, outputs: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """δ for every recorded output: one autograd.grad of the summed per-sample losses."""
        if not outputs:
            return []
        grads = torch.autograd.grad(losses.sum(), outputs, allow_unused=True)
        return [
            torch.zeros_like(output) if g is None else g
            for output, g in zip(outputs, grads, strict=True)
        ]

    def _planar(
        self, calls: list[LayerCall], output_grads: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """The output gradients, a Conv1d's (B, C, L) as (B, C, 1, L) like its inputs."""
        return [
            delta.unsqueeze(2) if self.layout.specs[call.position].kind == "conv1d" else delta
            for call, delta in zip(calls, output_grads, strict=True)
        ]

    def _write_factored(
        self, calls: list[LayerCall], output_grads: list[torch.Tensor], blocks: list[torch.Tensor]
    ) -> None:
        """Write each factored layer's compressed gradient, summed over repeated calls."""
        written: set[int] = set()
        for call, delta in zip(calls, output_grads, strict=True):
            compressor, module = self.compressors[call.position], self.geometry[call.position]
            accumulate = call.position in written
            written.add(call.position)
            write_layer(compressor, module, call.inputs, delta, blocks[call.position], accumulate)
        for position in set(range(len(self.geometry))) - written:
            blocks[position].zero_()  # a layer this forward never called has zero gradient

    def _write_flat(
        self,
        loss_fn: LossFn,
        batch: Sequence[torch.Tensor],
        blocks: list[torch.Tensor],
        known: dict[str, torch.Tensor],
    ) -> None:
        flat_compressors = self.compressors[len(self.layout.modules) :]
        grads = self._flat_per_sample_grads(loss_fn, batch, known)
        for compressor, g, block in zip(flat_compressors, grads, blocks, strict=True):
            compressed = compressor.compress_flat(g)
            check_representable(compressed, block.dtype)
            block.copy_(compressed)

    def _flat_per_sample_grads(
        self,
        loss_fn: LossFn,
        batch: Sequence[torch.Tensor],
        known: dict[str, torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """Per-sample gradients (B, D) of each flat parameter, in layout order.

        ``known`` ones (from hooks) as given; the others through ``torch.func.vmap``, one more
        pass over the model, run only if any is left.
        """
        known = known or {}
        left = {n: p for n, p in self.layout.flat_parameters.items() if n not in known}
        computed = flat_per_sample_grads(self.model, left, loss_fn, batch) if left else []
        by_name = {**known, **dict(zip(left, computed, strict=True))}
        return [by_name[name] for name in self.layout.flat_parameters]


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
