"""The architecture registry: models built by name, arguments checked before any memory is used.

Architectures are built by name with keyword arguments (:func:`build_model`): ``mlp``,
``small_cnn``, ``resnet9`` and torchvision's classifiers (``resnet18``, ...; never with pretrained
weights, never downloading). The arguments are checked against the builder's signature, then the
model is built once on the meta device so an absurd size is refused before it is allocated.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from dropinf.errors import ConfigError, UnknownArchitectureError
from dropinf.models.own_code import build_from_code, is_code_reference

MAX_PARAMETERS = 2**30  # about 4 GiB of float32 weights: anything larger is a typo, not a model
BUILD_ERRORS = (TypeError, ValueError, RuntimeError, AssertionError, OverflowError)


def mlp(input_dim: int, num_classes: int, hidden_sizes: Sequence[int] = (128,)) -> nn.Module:
    """A multilayer perceptron on flattened inputs.

    Args:
        input_dim: Number of input features after flattening (e.g. 64 for 1×8×8).
        num_classes: Width of the output logits.
        hidden_sizes: Widths of the hidden layers, each followed by ReLU.

    Returns:
        ``Flatten → (Linear → ReLU)* → Linear``.
    """
    layers: list[nn.Module] = [nn.Flatten()]
    width = input_dim
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def small_cnn(in_channels: int = 1, num_classes: int = 10, input_size: int = 8) -> nn.Module:
    """Two convolutions and two linear layers, no normalisation (for 8×8 and 28×28 inputs).

    Args:
        in_channels: Input channels.
        num_classes: Width of the output logits.
        input_size: Height (= width) of the square input images; the max-pool halves it.

    Returns:
        ``conv(C→32) → ReLU → conv(32→64) → ReLU → maxpool2 → flatten → linear(→128) → ReLU →
        linear(→classes)``.
    """
    pooled = input_size // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * pooled * pooled, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def _conv_bn(in_channels: int, out_channels: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    """``x + block(x)``."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the block's output to its input."""
        return x + self.block(x)


def resnet9(in_channels: int = 3, num_classes: int = 10, width: int = 64) -> nn.Module:
    """The ResNet-9 of the DAWNBench CIFAR-10 entries, with BatchNorm (for 32×32 inputs).

    Args:
        in_channels: Input channels.
        num_classes: Width of the output logits.
        width: Channels of the first layer; later stages use 2×, 4× and 8× that.

    Returns:
        prep → layer1 (+ residual) → layer2 → layer3 (+ residual) → global max-pool → linear.
    """
    w1, w2, w4, w8 = width, 2 * width, 4 * width, 8 * width
    return nn.Sequential(
        _conv_bn(in_channels, w1),
        _conv_bn(w1, w2, pool=True),
        _Residual(nn.Sequential(_conv_bn(w2, w2), _conv_bn(w2, w2))),
        _conv_bn(w2, w4, pool=True),
        _conv_bn(w4, w8, pool=True),
        _Residual(nn.Sequential(_conv_bn(w8, w8), _conv_bn(w8, w8))),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(w8, num_classes),
    )


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "small_cnn": small_cnn,
    "resnet9": resnet9,
}


def _torchvision_classifiers() -> list[str]:
    from torchvision import models

    return sorted(models.list_models(module=models))


def architectures() -> list[str]:
    """Names :func:`build_model` accepts: dropinf's own, then torchvision's classifiers."""
    return list(ARCHITECTURES) + _torchvision_classifiers()


def build_model(arch: str, **arch_args: Any) -> nn.Module:
    """Build an untrained model by architecture name.

    Args:
        arch: A name from :func:`architectures`, or ``package.module:callable`` (own code, built
            only when ``DROPINF_TRUST_CODE=1``; see :func:`build_architecture` for the flag).
        **arch_args: Keyword arguments of that architecture (torchvision: ``num_classes`` and the
            model's own options; ``weights`` is always None, nothing is downloaded).

    Returns:
        The model, in training mode.

    Raises:
        UnknownArchitectureError: The name is not in the registry, or names code not trusted.
        ConfigError: The arguments do not fit the architecture (unknown, missing, of the wrong
            type or sign), or the model would exceed :data:`MAX_PARAMETERS` (checked on the meta
            device, before any memory is allocated).
    """
    if not isinstance(arch, str):
        raise UnknownArchitectureError(f"expected an architecture name (a string); found {arch!r}")
    if is_code_reference(arch):
        return build_from_code(arch, arch_args)
    if arch in ARCHITECTURES:
        builder = ARCHITECTURES[arch]
        _check_arguments(arch, builder, arch_args)
        build = functools.partial(builder, **arch_args)
    elif arch in _torchvision_classifiers():
        build = _torchvision_builder(arch, arch_args)
    else:
        raise UnknownArchitectureError(
            f"unknown architecture {arch!r}: expected one of {', '.join(ARCHITECTURES)} "
            "or a torchvision classifier name such as resnet18"
        )
    _check_size(arch, arch_args, build)
    return build()


def build_architecture(
    arch: str, arch_args: Mapping[str, Any], trust_code: bool | None = None
) -> nn.Module:
    """Build a registry architecture, or own code (``package.module:callable``) once trusted.

    The arguments come as one mapping, so no argument of the architecture (from a sidecar, say)
    can reach ``trust_code``.

    Args:
        arch: A registry name or a code reference.
        arch_args: The architecture's keyword arguments.
        trust_code: The opt-in to import own code (None: ``DROPINF_TRUST_CODE=1``).

    Returns:
        The model, in training mode.

    Raises:
        UnknownArchitectureError: Unknown name, or code not trusted (nothing imported).
        ConfigError: The arguments do not fit the architecture.
    """
    if isinstance(arch, str) and is_code_reference(arch):
        return build_from_code(arch, arch_args, trust_code)
    return build_model(arch, **arch_args)


def _check_arguments(arch: str, builder: Callable[..., nn.Module], arch_args: Mapping) -> None:
    parameters = inspect.signature(builder).parameters
    unknown = sorted(set(arch_args) - set(parameters))
    missing = [
        name for name, p in parameters.items() if p.default is p.empty and name not in arch_args
    ]
    if unknown or missing:
        raise ConfigError(
            f"architecture {arch!r} takes arguments {list(parameters)}; "
            f"unknown: {unknown}, missing: {missing}"
        )
    hints = typing.get_type_hints(builder)
    for name, value in arch_args.items():
        _check_size_argument(arch, name, value, typing.get_origin(hints[name]) is Sequence)


def _check_size_argument(arch: str, name: str, value: Any, is_list: bool) -> None:
    """Refuse a width, count or list of widths that is not made of positive integers."""
    if is_list:
        valid = isinstance(value, list | tuple) and all(_is_positive_int(v) for v in value)
    else:
        valid = _is_positive_int(value)
    if not valid:
        expected = "a list of positive integers" if is_list else "a positive integer"
        raise ConfigError(f"architecture {arch!r}: {name} must be {expected}; found {value!r}")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _torchvision_builder(arch: str, arch_args: Mapping[str, Any]) -> Callable[[], nn.Module]:
    from torchvision import models

    if arch_args.get("weights") is not None:
        raise ConfigError(f"{arch}: pretrained weights are not supported (weights must be None)")
    if "num_classes" in arch_args:
        _check_size_argument(arch, "num_classes", arch_args["num_classes"], is_list=False)
    return functools.partial(models.get_model, arch, **{**arch_args, "weights": None})


def _check_size(arch: str, arch_args: Mapping[str, Any], build: Callable[[], nn.Module]) -> None:
    """Build the model on the meta device (no memory) and refuse it if it is absurdly large.

    Raises:
        ConfigError: The builder rejects the arguments, or the model would hold more than
            :data:`MAX_PARAMETERS` parameters.
    """
    try:
        with torch.device("meta"):
            skeleton = build()
    except BUILD_ERRORS as error:
        raise ConfigError(
            f"architecture {arch!r} cannot be built with arguments {dict(arch_args)}: "
            f"{first_sentence(error)}"
        ) from None
    parameters = count_parameters(skeleton)
    if parameters > MAX_PARAMETERS:
        raise ConfigError(
            f"architecture {arch!r} with arguments {dict(arch_args)} would hold {parameters:,} "
            f"parameters (about {parameters * 4 / 2**30:,.0f} GiB as float32); expected at most "
            f"{MAX_PARAMETERS:,}: check the sizes in the arguments"
        )


def arch_args_for_data(arch: str, input_shape: Sequence[int], num_classes: int) -> dict[str, Any]:
    """The arguments that make an architecture fit a dataset's example shape and classes.

    Args:
        arch: Architecture name.
        input_shape: One example's shape, e.g. ``(1, 8, 8)``.
        num_classes: Number of classes.

    Returns:
        e.g. ``{"in_channels": 1, "input_size": 8, "num_classes": 10}`` for ``small_cnn``;
        torchvision classifiers get ``num_classes`` only; own code (``pkg.mod:fn``) nothing.
    """
    if is_code_reference(arch):
        return {}
    if arch == "mlp":
        return {"input_dim": int(torch.Size(input_shape).numel()), "num_classes": num_classes}
    if arch == "small_cnn":
        return {
            "in_channels": input_shape[0],
            "input_size": input_shape[-1],
            "num_classes": num_classes,
        }
    if arch == "resnet9":
        return {"in_channels": input_shape[0], "num_classes": num_classes}
    return {"num_classes": num_classes}


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of a model (trainable or not, buffers excluded)."""
    return sum(parameter.numel() for parameter in model.parameters())


def first_sentence(error: Exception) -> str:
    """The first sentence of an error's first line, at most 160 characters, for a message."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text.split(". ")[0][:160]
