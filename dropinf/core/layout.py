"""Which layers of a model are captured: factored Linear / Conv modules, then flat parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from dropinf.errors import NoCapturableLayerError

CONV_KINDS = ("conv1d", "conv2d")


@dataclass(frozen=True)
class LayerSpec:
    """The shape of one captured layer.

    Attributes:
        name: Module name (``model.named_modules()``), or parameter name for flat layers.
        kind: ``linear``, ``conv1d``, ``conv2d`` or ``flat``.
        in_units: Input features (linear), input channels (conv) or parameter size (flat).
        out_units: Output features / channels; 0 for flat layers.
        patch: Kernel positions per input channel (k for conv1d, kh·kw for conv2d, 1 otherwise).
        has_bias: Whether the layer's bias is captured with it.
        module: Class name of the module the parameters belong to (``Conv2d``,
            ``BatchNorm2d``...): says in the manifest's layer table how a norm is attributed.
    """

    name: str
    kind: str
    in_units: int
    out_units: int = 0
    patch: int = 1
    has_bias: bool = False
    module: str = ""

    @property
    def is_factored(self) -> bool:
        """True for layers whose gradient is a sum of outer products."""
        return self.kind != "flat"

    @property
    def is_conv(self) -> bool:
        """True for convolutions (channels on axis 1 of their inputs and outputs)."""
        return self.kind in CONV_KINDS

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
            "module": self.module,
        }


@dataclass
class CaptureLayout:
    """Which parts of a model are captured, in capture order.

    Attributes:
        modules: Factored modules (Linear / Conv1d / Conv2d) by name.
        flat_parameters: Parameters outside those modules, by name.
        specs: One spec per captured layer: the factored modules, then each flat parameter.
    """

    modules: dict[str, nn.Module]
    flat_parameters: dict[str, nn.Parameter]
    specs: list[LayerSpec] = field(default_factory=list)


def is_factorable_conv(module: nn.Conv1d | nn.Conv2d) -> bool:
    """Whether a conv's gradient can be formed from unfolded inputs (plain, ungrouped)."""
    return (
        module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def factored_spec(name: str, module: nn.Module) -> LayerSpec | None:
    """The spec of a Linear / factorable Conv1d or Conv2d, or None for any other module."""
    has_bias = getattr(module, "bias", None) is not None and module.bias.requires_grad
    kind = type(module).__name__
    if isinstance(module, nn.Linear):
        return LayerSpec(name, "linear", module.in_features, module.out_features, 1, has_bias, kind)
    if isinstance(module, nn.Conv1d | nn.Conv2d) and is_factorable_conv(module):
        return LayerSpec(
            name,
            "conv1d" if isinstance(module, nn.Conv1d) else "conv2d",
            module.in_channels,
            module.out_channels,
            math.prod(module.kernel_size),
            has_bias,
            kind,
        )
    return None


def planar_view(module: nn.Module) -> nn.Module:
    """The module as the compression step sees it: a Conv1d as the 1×k Conv2d it equals.

    The Conv2d carries the geometry only (kernel, stride, padding, dilation; on the meta
    device, no weights): the capture gives it the Conv1d's (B, C, L) inputs and output
    gradients as (B, C, 1, L). Any other module is returned as it is.
    """
    if not isinstance(module, nn.Conv1d):
        return module
    return nn.Conv2d(
        module.in_channels,
        module.out_channels,
        (1, module.kernel_size[0]),
        stride=(1, module.stride[0]),
        padding=(0, module.padding[0]),
        dilation=(1, module.dilation[0]),
        bias=False,
        device="meta",
    )


def discover_layers(model: nn.Module) -> CaptureLayout:
    """Find the layers to capture: every trainable Linear / Conv, then leftover parameters.

    Raises:
        NoCapturableLayerError: The model has no trainable Linear or Conv1d / Conv2d layer.
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
            owner = type(model.get_submodule(name.rpartition(".")[0])).__name__
            layout.specs.append(LayerSpec(name, "flat", parameter.numel(), module=owner))
    return layout
