"""The ``.npz`` source: arrays ``x`` and ``y``, and optional extras.

The extras are ``class_names``, ``x_test``, ``y_test``, ``ids``, ``ids_test`` (one name per
example) and ``layout`` (``images`` or ``signals``).
"""

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
    With ``layout="signals"``, a 3-D ``x`` is (N, C, L) and kept so (1-D signals for Conv1d).
    ``ids`` / ``ids_test`` name the examples (strings, one per example, no NUL). Without
    ``x_test``/``y_test`` the data is split later by ``split_seed``. Object arrays are refused
    (``allow_pickle=False``).

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
    if "ids_test" in arrays and "x_test" not in arrays:
        raise DatasetError(f"{path.name}: ids_test needs x_test and y_test; found {sorted(arrays)}")
    signals = _layout(arrays, path) == "signals"
    x, y = _shaped(arrays["x"], signals), arrays["y"]
    class_names = _npz_class_names(arrays, path)
    x_test = _shaped(arrays["x_test"], signals) if "x_test" in arrays else None
    train_ids = _npz_ids(arrays, "ids", len(x), path)
    test_ids = None if x_test is None else _npz_ids(arrays, "ids_test", len(x_test), path)
    return RawData(path.name, x, y, x_test, arrays.get("y_test"), class_names, train_ids,
                   test_ids)  # fmt: skip


def _layout(arrays: Mapping[str, np.ndarray], path: Path) -> str:
    if "layout" not in arrays:
        return "images"
    layout = str(arrays["layout"].reshape(-1)[0]) if arrays["layout"].size == 1 else None
    if layout not in ("images", "signals"):
        raise DatasetError(
            f"{path.name}: layout {layout!r}; expected 'images' or 'signals' (one string)"
        )
    if layout == "signals" and arrays["x"].ndim != 3:
        raise DatasetError(
            f"{path.name}: layout 'signals' needs x of shape (N, C, L); found {arrays['x'].shape}"
        )
    return layout


def _npz_ids(
    arrays: Mapping[str, np.ndarray], key: str, count: int, path: Path
) -> list[str] | None:
    if key not in arrays:
        return None
    ids = arrays[key]
    if ids.shape != (count,):
        raise DatasetError(
            f"{path.name}: {key} has shape {ids.shape}; expected ({count},), one per example"
        )
    if ids.dtype.kind not in "US":
        raise DatasetError(f"{path.name}: {key} has dtype {ids.dtype}; expected strings")
    names = [str(name) for name in ids]
    for index, name in enumerate(names):
        if "\0" in name:
            raise DatasetError(f"{path.name}: {key}[{index}] holds a NUL character; expected text")
    return names


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


def _shaped(x: np.ndarray, signals: bool) -> np.ndarray:
    if signals:
        return x  # (N, C, L)
    return x[:, None] if x.ndim == 3 else x  # (N, H, W) -> (N, 1, H, W)
