"""The ``.npz`` source: arrays ``x``, ``y``, optionally ``class_names``, ``x_test``, ``y_test``."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dropinf.data.bundle import RawData
from dropinf.errors import DatasetError


def read_npz(path: Path) -> RawData:
    """Read arrays ``x``, ``y`` (+ optional ``class_names``, ``x_test``, ``y_test``) from a .npz.

    ``x`` may be (N, C, H, W), (N, H, W) (one channel) or (N, D); uint8 is scaled to [0, 1].
    Without ``x_test``/``y_test`` the data is split later by ``split_seed``. Object arrays are
    refused (``allow_pickle=False``).

    Raises:
        DatasetError: Unreadable file, missing or malformed arrays.
    """
    arrays = _read_arrays(path)
    for key in ("x", "y"):
        if key not in arrays:
            raise DatasetError(f"{path.name}: no array {key!r}; found {sorted(arrays)}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DatasetError(
            f"{path.name}: x_test and y_test must come together; found {sorted(arrays)}"
        )
    x, y = _images_first(arrays["x"]), arrays["y"]
    class_names = _npz_class_names(arrays, path)
    x_test = _images_first(arrays["x_test"]) if "x_test" in arrays else None
    return RawData(path.name, x, y, x_test, arrays.get("y_test"), class_names)


def _npz_class_names(arrays: Mapping[str, np.ndarray], path: Path) -> list[str] | None:
    if "class_names" not in arrays:
        return None
    names = arrays["class_names"]
    if names.ndim != 1:
        raise DatasetError(
            f"{path.name}: class_names has shape {names.shape}; expected one name per class (C,)"
        )
    return [str(name) for name in names]


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as error:
        raise DatasetError(
            f"{path.name}: holds object arrays ({error}); expected plain numeric/string arrays"
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise DatasetError(
            f"{path.name}: not a readable .npz archive ({type(error).__name__}: {error})"
        ) from None


def _images_first(x: np.ndarray) -> np.ndarray:
    return x[:, None] if x.ndim == 3 else x  # (N, H, W) -> (N, 1, H, W)
