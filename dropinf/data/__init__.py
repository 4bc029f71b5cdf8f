"""Datasets: a spec string in, a ``DatasetBundle`` with its fingerprint and noise truth out.

``spec`` parses ``source[:key=value,...]`` and loads it; one module per source reads its arrays
(``digits``, ``npz``, ``folder`` for image folders, ``cifar`` for CIFAR-10 batches through the
restricted unpickler ``safe_unpickle``); ``bundle`` checks the raw arrays and holds the splits,
the fingerprint and the train/test split by seed; ``noise`` flips labels and keeps the ground
truth; ``images`` reads pictures and draws thumbnails. It sits at the bottom of the engine's
layers: it imports nothing of dropinf but ``dropinf.errors`` (``dropinf.paths`` may be used, and
``dropinf.core`` and ``dropinf.metrics`` are allowed below it, though it needs neither).
"""

from __future__ import annotations

from dropinf.data.bundle import DatasetBundle, Split
from dropinf.data.cifar import CIFAR10_CLASS_NAMES, safe_unpickle
from dropinf.data.images import IMAGE_SUFFIXES
from dropinf.data.noise import DIGITS_FLIP_PAIRS, inject_label_noise
from dropinf.data.spec import DEMO_DATA_SPEC, SPEC_OPTIONS, load_data, parse_spec

__all__ = [
    "CIFAR10_CLASS_NAMES",
    "DEMO_DATA_SPEC",
    "DIGITS_FLIP_PAIRS",
    "IMAGE_SUFFIXES",
    "SPEC_OPTIONS",
    "DatasetBundle",
    "Split",
    "inject_label_noise",
    "load_data",
    "parse_spec",
    "safe_unpickle",
]
