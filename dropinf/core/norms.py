"""Per-sample gradients of BatchNorm's affine parameters from hooks, without a second pass.

In eval mode a BatchNorm normalises with its running statistics: ``y = γ·x̂ + β`` with
``x̂ = (x − μ) / √(σ² + ε)`` fixed per channel, so sample b's gradients are
``∂ℓ_b/∂γ = Σ_positions δ_b · x̂_b`` and ``∂ℓ_b/∂β = Σ_positions δ_b``, where δ is the output
gradient that the factored layers' one ``autograd.grad`` call returns too. Without this, a
BatchNorm model's γ and β (flat parameters) need ``torch.func.vmap`` to run the whole model
forward and backward a second time. A norm that normalises with batch statistics (training
mode, or no running statistics) couples the samples and stays with vmap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class NormCall:
    """What a forward hook kept of one call of a BatchNorm: x̂ and the output to differentiate.

    Attributes:
        parameters: The norm's flat affine parameters, ``{name in the model: "weight" | "bias"}``.
        normalised: x̂, the input normalised with the running statistics.
        output: The norm's output, whose gradient δ gives γ's and β's.
    """

    parameters: dict[str, str]
    normalised: torch.Tensor
    output: torch.Tensor


def hookable_norms(model: nn.Module, flat_names: set[str]) -> dict[nn.Module, dict[str, str]]:
    """Eval-mode BatchNorms with running statistics, each with its flat γ / β (if any).

    Returns:
        ``{norm: {parameter name in the model: "weight" | "bias"}}``, only the flat ones.
    """
    found = {}
    for name, module in model.named_modules():
        if not isinstance(module, BATCH_NORMS) or module.training:
            continue
        if module.running_mean is None or module.running_var is None:
            continue
        flat = {
            parameter: field
            for parameter, field in norm_parameter_names(name, module).items()
            if parameter in flat_names
        }
        if flat:
            found[module] = flat
    return found


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
        inputs = args[0].detach()
        shape = (1, -1) + (1,) * (inputs.ndim - 2)  # channels on axis 1
        mean = module.running_mean.view(shape)
        scale = torch.rsqrt(module.running_var.view(shape) + module.eps)
        calls.append(NormCall(parameters, (inputs - mean) * scale, output))
        return output.clone()

    return hook


def norm_per_sample_grads(
    calls: list[NormCall], output_grads: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """(B, C) per-sample gradients of each recorded norm's flat γ and β, by parameter name.

    A norm called several times in one forward gets the sum of its calls' gradients.
    """
    grads: dict[str, torch.Tensor] = {}
    for call, delta in zip(calls, output_grads, strict=True):
        for parameter, field in call.parameters.items():
            value = sum_positions(delta * call.normalised if field == "weight" else delta)
            grads[parameter] = grads[parameter] + value if parameter in grads else value
    return grads


def sum_positions(values: torch.Tensor) -> torch.Tensor:
    """(B, C) sums of a (B, C, ...) tensor over its positions (a (B, C) one as it is)."""
    if values.ndim == 2:
        return values
    return values.sum(tuple(range(2, values.ndim)))
