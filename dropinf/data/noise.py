"""Label noise with ground truth: symmetric flips or flips within class pairs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dropinf.errors import ConfigError

NOISE_KINDS = ("symmetric", "class_conditional")
DIGITS_FLIP_PAIRS: tuple[tuple[int, int], ...] = ((1, 7), (3, 8), (4, 9), (5, 6), (0, 2))


def inject_label_noise(
    labels: np.ndarray,
    num_classes: int,
    rate: float,
    seed: int,
    kind: str = "symmetric",
    flip_pairs: Sequence[tuple[int, int]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Flip a share of labels, keeping the ground truth.

    ``symmetric``: exactly ``round(rate * n)`` examples, drawn uniformly, each get a uniformly
    drawn *different* class. ``class_conditional``: exactly ``round(rate * m)`` of the ``m``
    examples whose class is in a pair get the other class of their pair (pairs flip both ways).

    Args:
        labels: (n,) integer labels.
        num_classes: Number of classes.
        rate: Share of (eligible) examples to flip, in [0, 1].
        seed: Seed of the draw; same seed, same flips.
        kind: ``symmetric`` or ``class_conditional``.
        flip_pairs: Class pairs for ``class_conditional``; default :data:`DIGITS_FLIP_PAIRS`.

    Returns:
        ``(noisy_labels, noisy_mask)``; ``noisy_mask == (noisy_labels != labels)``.

    Raises:
        ConfigError: Rate outside [0, 1], unknown kind, fewer than 2 classes, or bad pairs.
    """
    labels = np.asarray(labels, dtype=np.int64)
    _check_noise_args(num_classes, rate, kind)
    rng = np.random.default_rng(seed)
    if kind == "symmetric":
        eligible = np.arange(len(labels))
        partner = None
    else:
        partner = _pair_partners(flip_pairs or DIGITS_FLIP_PAIRS, num_classes)
        eligible = np.flatnonzero(partner[labels] >= 0)
    flipped = np.sort(rng.choice(eligible, size=round(rate * len(eligible)), replace=False))
    noisy_labels = labels.copy()
    if partner is None:
        offsets = rng.integers(1, num_classes, size=len(flipped))  # never 0: never the same class
        noisy_labels[flipped] = (labels[flipped] + offsets) % num_classes
    else:
        noisy_labels[flipped] = partner[labels[flipped]]
    return noisy_labels, noisy_labels != labels


def _check_noise_args(num_classes: int, rate: float, kind: str) -> None:
    if kind not in NOISE_KINDS:
        raise ConfigError(f"noise kind must be one of {', '.join(NOISE_KINDS)}; got {kind!r}")
    if not (isinstance(rate, int | float) and 0.0 <= rate <= 1.0):
        raise ConfigError(f"noise rate must be a number in [0, 1], got {rate!r}")
    if num_classes < 2:
        raise ConfigError(f"label noise needs at least 2 classes, got {num_classes}")


def _pair_partners(flip_pairs: Sequence[tuple[int, int]], num_classes: int) -> np.ndarray:
    partner = np.full(num_classes, -1, dtype=np.int64)
    for pair in flip_pairs:
        first, second = (int(c) for c in pair)
        for cls in (first, second):
            if not 0 <= cls < num_classes:
                raise ConfigError(f"flip pair {pair}: expected classes in 0..{num_classes - 1}")
            if partner[cls] >= 0:
                raise ConfigError(f"class {cls} appears in more than one flip pair")
        if first == second:
            raise ConfigError(f"flip pair {pair} flips a class into itself")
        partner[first], partner[second] = second, first
    return partner
