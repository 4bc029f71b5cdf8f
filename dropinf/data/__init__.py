"""Datasets: specs, sources, bundles with fingerprints, label noise, thumbnails.

Datasets: spec parsing (``digits:noise=0.1,seed=0``, an .npz, an image folder, CIFAR-10
batches), the ``DatasetBundle`` with its fingerprint, label noise with ground truth, thumbnails.

One module per source. Imports nothing of dropinf but ``dropinf.errors``.
"""

from __future__ import annotations

from dropinf.data.sources import (
    CIFAR10_CLASS_NAMES,
    DEMO_DATA_SPEC,
    DIGITS_FLIP_PAIRS,
    SPEC_OPTIONS,
    DatasetBundle,
    Split,
    inject_label_noise,
    load_data,
    parse_spec,
    safe_unpickle,
)

__all__ = [
    "CIFAR10_CLASS_NAMES",
    "DEMO_DATA_SPEC",
    "DIGITS_FLIP_PAIRS",
    "SPEC_OPTIONS",
    "DatasetBundle",
    "Split",
    "inject_label_noise",
    "load_data",
    "parse_spec",
    "safe_unpickle",
]
