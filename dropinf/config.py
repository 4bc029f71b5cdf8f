"""Configuration dataclasses, one per stage, validated on construction.

Each config serialises with ``to_dict`` (saved in the run manifest) and is rebuilt with
``from_dict``. Two runs with equal configs, model and data produce the same scores.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from dropinf.errors import ConfigError

COMPRESSION_METHODS = ("dropout", "identity", "gaussian", "factorized_gaussian", "sjlt")
MASK_STRATEGIES = ("uniform", "energy")
CURVATURE_KINDS = ("auto", "full", "block", "identity")


def _check_ratio(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 < value <= 1.0):
        raise ConfigError(f"{name} must be a number in (0, 1], got {value!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


@dataclass(frozen=True)
class CompressionConfig:
    """How per-sample gradients are compressed.

    Attributes:
        method: Compressor name: ``dropout`` (the method), ``identity`` (exact, no compression),
            ``gaussian`` (dense projection), ``factorized_gaussian`` (LoGra-style) or ``sjlt``.
        keep_ratio: Share of each layer's input and output units kept; the projections use the
            same compressed dimension k, so all methods store the same number of floats.
        seed: Seed of the masks and projections. Same seed, same masks, same scores.
        mask: How ``dropout`` picks kept units: ``uniform`` (random, the paper's method) or
            ``energy`` (the units with most activation / output-gradient energy on a calibration
            pass over the first training batches).
        layer_keep_ratios: Per-layer overrides of ``keep_ratio``, by module name.
        calibration_batches: Training batches read to measure unit energy for ``mask="energy"``.
    """

    method: str = "dropout"
    keep_ratio: float = 0.25
    seed: int = 0
    mask: str = "energy"
    layer_keep_ratios: dict[str, float] = field(default_factory=dict)
    calibration_batches: int = 4

    def __post_init__(self) -> None:
        _check_choice("method", self.method, COMPRESSION_METHODS)
        _check_choice("mask", self.mask, MASK_STRATEGIES)
        _check_ratio("keep_ratio", self.keep_ratio)
        for name, ratio in self.layer_keep_ratios.items():
            _check_ratio(f"layer_keep_ratios[{name!r}]", ratio)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.calibration_batches < 1:
            raise ConfigError(
                f"calibration_batches must be at least 1, got {self.calibration_batches!r}"
            )

    def keep_ratio_for(self, layer_name: str) -> float:
        """The keep ratio of one layer: its override if set, else ``keep_ratio``."""
        return self.layer_keep_ratios.get(layer_name, self.keep_ratio)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of this config."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CompressionConfig:
        """Rebuild a config saved with ``to_dict``."""
        return cls(**values)


@dataclass(frozen=True)
class CurvatureConfig:
    """The curvature (damped empirical Fisher) in the compressed space.

    Attributes:
        kind: ``full`` (one k×k Cholesky), ``block`` (one block per layer), ``identity``
            (no curvature: gradient similarity, TracIn-like) or ``auto`` (``full`` when k is at
            most ``max_full_dim``, else ``block``).
        damping: λ added to the diagonal. None means ``damping_ratio · mean(diag F)``.
        damping_ratio: The factor of the default damping.
        max_full_dim: Largest k for which ``auto`` chooses ``full``.
    """

    kind: str = "auto"
    damping: float | None = None
    damping_ratio: float = 0.1
    max_full_dim: int = 8192

    def __post_init__(self) -> None:
        _check_choice("curvature kind", self.kind, CURVATURE_KINDS)
        if self.damping is not None and not (math.isfinite(self.damping) and self.damping > 0):
            raise ConfigError(f"damping must be a positive number or None, got {self.damping!r}")
        if not (math.isfinite(self.damping_ratio) and self.damping_ratio > 0):
            raise ConfigError(f"damping_ratio must be positive, got {self.damping_ratio!r}")
        if self.max_full_dim < 1:
            raise ConfigError(f"max_full_dim must be at least 1, got {self.max_full_dim!r}")

    def resolve_kind(self, total_dim: int) -> str:
        """The concrete kind (``full``, ``block`` or ``identity``) for a compressed dimension."""
        if self.kind != "auto":
            return self.kind
        return "full" if total_dim <= self.max_full_dim else "block"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of this config."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CurvatureConfig:
        """Rebuild a config saved with ``to_dict``."""
        return cls(**values)
