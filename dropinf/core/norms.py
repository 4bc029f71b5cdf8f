"""Per-sample gradients of normalisation layers' affine parameters from hooks, no second pass.

A norm computes ``y = γ·x̂ + β`` where x̂ depends on the sample alone: an eval-mode BatchNorm
normalises with its running statistics, LayerNorm / RMSNorm over each position's features,
GroupNorm over each sample's channel groups. So sample b's gradients are
``∂ℓ_b/∂γ = Σ_positions δ_b · x̂_b`` and ``∂ℓ_b/∂β = Σ_positions δ_b``, where δ is the output
gradient that the factored layers' one ``autograd.grad`` call returns too. Without this, the
norms' γ and β (flat parameters) need ``torch.func.vmap`` to run the whole model forward and
backward a second time. A BatchNorm that normalises with batch statistics (training mode, or no
running statistics) couples the samples and stays with vmap. Like the factored layers, the hooks
take axis 0 of a norm's input as the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
FEATURE_NORMS = (nn.LayerNorm, nn.RMSNorm)  # γ / β shaped like the trailing normalized_shape


@dataclass
class NormCall:
    """What a forward hook kept of one call of a norm: x̂ and the output to differentiate.

    Attributes:
        parameters: The norm's flat affine parameters, ``{name in the model: "weight" | "bias"}``.
        normalised: x̂, the input normalised as the norm does it, without γ and β.
        output: The norm's output, whose gradient δ gives γ's and β's.
        trailing: How many trailing axes γ spans (LayerNorm, RMSNorm); 0 for channels on axis 1.
    """

    parameters: dict[str, str]
    normalised: torch.Tensor
    output: torch.Tensor
    trailing: int = 0


def hookable_norms(model: nn.Module, flat_names: set[str]) -> dict[nn.Module, dict[str, str]]:
    """The norms whose x̂ depends on the sample alone, each with its flat γ / β (if any).

    Those are LayerNorm, RMSNorm, GroupNorm, and BatchNorms in eval mode with running
    statistics.

    Returns:
        ``{norm: {parameter name in the model: "weight" | "bias"}}``, only the flat ones.
    """
    found = {}
    for name, module in model.named_modules():
        if not per_sample_norm(module):
            continue
        flat = {
            parameter: field
            for parameter, field in norm_parameter_names(name, module).items()
            if parameter in flat_names
        }
        if flat:
            found[module] = flat
    return found


def per_sample_norm(module: nn.Module) -> bool:
    """True for a norm whose x̂ depends on the sample alone (see ``hookable_norms``)."""
    if isinstance(module, (*FEATURE_NORMS, nn.GroupNorm)):
        return True
    return (
        isinstance(module, BATCH_NORMS)
        and not module.training
        and module.running_mean is not None
        and module.running_var is not None
    )


def norm_parameter_names(name: str, module: nn.Module) -> dict[str, str]:
    """``{parameter name in the model: "weight" | "bias"}`` of a norm's affine parameters."""
    prefix = f"{name}." if name else ""
    return {
        f"{prefix}{field}": field
        for field in ("weight", "bias")
        if getattr(module, field, None) is not None
    }


def norm_hook(parameters: dict[str, str], calls: list[NormCall]) -> Callable:
    """A forward hook that records x̂ and hands on a copy of the output.

    The copy shields the recorded output from in-place operations downstream (a
    ``ReLU(inplace=True)`` after the norm), so its gradient stays well defined.
    """

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        trailing = len(module.normalized_shape) if isinstance(module, FEATURE_NORMS) else 0
        normalised = normalise(module, args[0].detach())
        calls.append(NormCall(parameters, normalised, output, trailing))
        return output.clone()

    return hook


def normalise(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """x̂: ``inputs`` normalised as ``module`` normalises them, before its γ and β."""
    if isinstance(module, nn.LayerNorm):
        return functional.layer_norm(inputs, module.normalized_shape, eps=module.eps)
    if isinstance(module, nn.RMSNorm):
        return functional.rms_norm(inputs, module.normalized_shape, eps=module.eps)
    if isinstance(module, nn.GroupNorm):
        return functional.group_norm(inputs, module.num_groups, eps=module.eps)
    shape = (1, -1) + (1,) * (inputs.ndim - 2)  # BatchNorm: channels on axis 1
    mean = module.running_mean.view(shape)
    return (inputs - mean) * torch.rsqrt(module.running_var.view(shape) + module.eps)


def norm_per_sample_grads(
    calls: list[NormCall], output_grads: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """(B, numel) per-sample gradients of each recorded norm's flat γ and β, by parameter name.

    A norm called several times in one forward gets the sum of its calls' gradients.
    """
    grads: dict[str, torch.Tensor] = {}
    for call, delta in zip(calls, output_grads, strict=True):
        for parameter, field in call.parameters.items():
            values = delta * call.normalised if field == "weight" else delta
            value = sum_positions(values, call.trailing)
            grads[parameter] = grads[parameter] + value if parameter in grads else value
    return grads


def sum_positions(values: torch.Tensor, trailing: int = 0) -> torch.Tensor:
    """(B, numel) sums of a per-sample tensor over the positions its parameter is shared by.

    Args:
        values: (B, ...) per-sample values, the parameter's axes included.
        trailing: The parameter spans this many trailing axes (LayerNorm); 0 means axis 1
            (channels, BatchNorm / GroupNorm).
    """
    if trailing:
        numel = values.shape[values.ndim - trailing :].numel()
        return values.reshape(values.shape[0], -1, numel).sum(1)
    if values.ndim == 2:
        return values
    return values.sum(tuple(range(2, values.ndim)))
