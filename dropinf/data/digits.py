"""The embedded demo source: scikit-learn's 8×8 digits (no download), split 1 437 / 360."""

from __future__ import annotations

import functools

import numpy as np

from dropinf.data.bundle import RawData, stratified_split


@functools.cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1 797 digits once per process: (N, 1, 8, 8) float32 and (N,) int64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    return images, digits.target.astype(np.int64)


def read_digits() -> RawData:
    """The digits as (1, 8, 8) float32 pixels in [0, 1], split 1 437 / 360 (stratified, seed 0).

    Returns:
        Both splits, class names ``0``..``9``.
    """
    images, labels = _digits_arrays()
    train_idx, test_idx = stratified_split(labels, test_size=360, seed=0)
    return RawData(
        name="digits",
        x_train=images[train_idx],
        y_train=labels[train_idx],
        x_test=images[test_idx],
        y_test=labels[test_idx],
        class_names=[str(d) for d in range(10)],
    )
