"""Configuration dataclasses, one per stage, validated on construction.

Each config serialises with ``to_dict`` (saved in the run manifest) and is rebuilt with
``from_dict``. Two runs with equal configs, model and data produce the same scores.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from dropinf.errors import ConfigError

COMPRESSION_METHODS = ("dropout", "identity", "gaussian", "factorized_gaussian", "sjlt")
MASK_STRATEGIES = ("uniform", "energy")
CURVATURE_KINDS = ("auto", "full", "block", "kfac", "ekfac", "identity")
DEFAULT_MAX_KEPT_UNITS = 64
# The damping ratio each curvature kind uses unless told (bench/RESULTS.md §6: the best or within
# 0.01 of the best ratio on the peers grid for ``full``; ``kfac`` / ``ekfac`` scale λ per layer).
DEFAULT_DAMPING_RATIOS = {"full": 1.0, "block": 1.0, "kfac": 0.1, "ekfac": 0.1, "identity": 1.0}


def default_damping_text() -> str:
    """Each damped kind's default ratio, in words: ``"full 1, block 1, kfac 0.1, ekfac 0.1"``."""
    damped = [kind for kind in DEFAULT_DAMPING_RATIOS if kind != "identity"]
    return ", ".join(f"{kind} {DEFAULT_DAMPING_RATIOS[kind]:g}" for kind in damped)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_ratio(name: str, value: float) -> None:
    if not (_is_real(value) and 0.0 < value <= 1.0):
        raise ConfigError(f"{name} must be a number in (0, 1], got {value!r}")


def _check_positive(name: str, value: float) -> None:
    if not (_is_real(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer of at least {minimum}, got {value!r}")


def _config_from_dict(cls: type, values: Any) -> Any:
    """Build a config dataclass from a dict, refusing anything else and unknown keys."""
    if not isinstance(values, dict):
        raise ConfigError(f"expected a dict of {cls.__name__} fields, got {values!r}")
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field {', '.join(map(str, unknown))}")
    return cls(**values)


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
        max_kept_units: The dimension budget: at most this many kept output units and kept input
            *columns* per layer, whatever ``keep_ratio`` says (a Conv2d input channel brings its
            kh·kw columns, so it keeps ``max_kept_units // (kh·kw)`` channels, at least one), and
            at most ``max_kept_units²`` coordinates of a flat layer. Each layer's k is then at
            most ``m² + m`` for any width or kernel. None: no cap (k = q²·|W|).
    """

    method: str = "dropout"
    keep_ratio: float = 0.25
    seed: int = 0
    mask: str = "uniform"
    layer_keep_ratios: dict[str, float] = field(default_factory=dict)
    calibration_batches: int = 4
    max_kept_units: int | None = DEFAULT_MAX_KEPT_UNITS

    def __post_init__(self) -> None:
        _check_choice("method", self.method, COMPRESSION_METHODS)
        _check_choice("mask", self.mask, MASK_STRATEGIES)
        _check_ratio("keep_ratio", self.keep_ratio)
        if not isinstance(self.layer_keep_ratios, dict):
            raise ConfigError(
                f"layer_keep_ratios must be a dict of layer name to ratio, "
                f"got {self.layer_keep_ratios!r}"
            )
        for name, ratio in self.layer_keep_ratios.items():
            _check_ratio(f"layer_keep_ratios[{name!r}]", ratio)
        _check_int("seed", self.seed, 0)
        _check_int("calibration_batches", self.calibration_batches, 1)
        if self.max_kept_units is not None:
            _check_int("max_kept_units", self.max_kept_units, 1)

    def keep_ratio_for(self, layer_name: str) -> float:
        """The keep ratio of one layer: its override if set, else ``keep_ratio``."""
        return self.layer_keep_ratios.get(layer_name, self.keep_ratio)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of this config."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CompressionConfig:
        """Rebuild a config saved with ``to_dict``.

        A config saved before ``max_kept_units`` existed had no cap, so a missing one is None.

        Raises:
            ConfigError: ``values`` is not a dict of this config's fields.
        """
        if isinstance(values, dict):
            values = {"max_kept_units": None, **values}
        return _config_from_dict(cls, values)


@dataclass(frozen=True)
class CurvatureConfig:
    """The curvature (damped empirical Fisher) in the compressed space.

    Attributes:
        kind: ``full`` (one k×k Cholesky), ``block`` (one block per layer), ``kfac`` (per
            layer, the Kronecker product of the kept input and output-gradient covariances),
            ``ekfac`` (K-FAC's eigenbasis with eigenvalues refitted on the stored gradients),
            ``identity`` (no curvature: gradient similarity, TracIn-like) or ``auto`` (``full``
            when k is at most ``max_full_dim``, else ``ekfac``; ``block`` for projections).
            ``kfac`` and ``ekfac`` give the coordinates of flat layers a diagonal.
        damping: λ added to the diagonal. None means ``damping_ratio · mean(diag F)`` (for
            ``kfac`` / ``ekfac``: per layer, ``damping_ratio`` · the layer's mean eigenvalue).
        damping_ratio: The factor of the default damping; None means the kind's measured
            default (``DEFAULT_DAMPING_RATIOS``: 1 for ``full`` / ``block``, 0.1 for ``kfac`` /
            ``ekfac``).
        max_full_dim: Largest k for which ``auto`` chooses ``full``.
    """

    kind: str = "auto"
    damping: float | None = None
    damping_ratio: float | None = None
    max_full_dim: int = 8192

    def __post_init__(self) -> None:
        _check_choice("curvature kind", self.kind, CURVATURE_KINDS)
        if self.damping is not None:
            _check_positive("damping", self.damping)
        if self.damping_ratio is not None:
            _check_positive("damping_ratio", self.damping_ratio)
        _check_int("max_full_dim", self.max_full_dim, 1)

    def ratio_for(self, kind: str) -> float:
        """The damping ratio a concrete kind uses: ``damping_ratio``, else the kind's default."""
        if self.damping_ratio is not None:
            return self.damping_ratio
        return DEFAULT_DAMPING_RATIOS[kind]

    def resolve_kind(self, total_dim: int, kronecker_factored: bool = True) -> str:
        """The concrete kind ``auto`` stands for at a compressed dimension.

        ``full`` up to ``max_full_dim``; above it ``ekfac`` (memory independent of N and far
        below the exact blocks' k_b²) when the kept blocks have Kronecker factors (dropout masks,
        identity), else ``block`` (projections, whose coordinates have none).

        Args:
            total_dim: The run's compressed dimension k.
            kronecker_factored: Whether the compressor keeps blocks with Kronecker factors.
        """
        if self.kind != "auto":
            return self.kind
        if total_dim <= self.max_full_dim:
            return "full"
        return "ekfac" if kronecker_factored else "block"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of this config."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CurvatureConfig:
        """Rebuild a config saved with ``to_dict``.

        Raises:
            ConfigError: ``values`` is not a dict of this config's fields.
        """
        return _config_from_dict(cls, values)
