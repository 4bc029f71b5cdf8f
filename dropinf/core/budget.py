"""The dimension budget: kept units per layer from a keep ratio and a cap; k before a run."""

from __future__ import annotations

from dataclasses import dataclass

from dropinf.core.config import CompressionConfig
from dropinf.core.layout import LayerSpec


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
