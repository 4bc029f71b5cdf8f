"""The CIFAR-10 source: python batches, read by a restricted unpickler that runs no code."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from dropinf.data.bundle import RawData
from dropinf.errors import DatasetError

CIFAR10_CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only dicts, lists, bytes, str, numbers and numpy arrays.

    CIFAR-10 python batches are pickles; a plain ``pickle.load`` would run any code a tampered
    file names. This unpickler resolves no global except numpy's array reconstruction helpers and
    ``_codecs.encode`` (how Python 3 writes bytes at protocol 2); anything else is refused.
    """

    ALLOWED_GLOBALS = frozenset({
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    })  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED_GLOBALS:
            raise DatasetError(
                f"refused to unpickle {module}.{name}: CIFAR batches may hold only dicts, lists, "
                "bytes, strings, numbers and numpy arrays"
            )
        return super().find_class(module, name)


def safe_unpickle(data: bytes) -> Any:
    """Unpickle a CIFAR-style batch without running code.

    Args:
        data: The pickle bytes.

    Returns:
        The object (dicts, lists, bytes, str, numbers, numpy arrays only).

    Raises:
        DatasetError: The pickle names any other global, or is corrupt.
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DatasetError:
        raise
    except Exception as error:
        raise DatasetError(f"corrupt pickle ({type(error).__name__}: {error})") from None


def read_cifar10(folder: Path) -> RawData:
    """Read CIFAR-10 python batches (``data_batch_1``..``5``, ``test_batch``, ``batches.meta``).

    Raises:
        DatasetError: Missing batches, refused or corrupt pickles, wrong array shapes.
    """
    train_paths = sorted(folder.glob("data_batch_[0-9]*"))
    if not train_paths or not (folder / "test_batch").is_file():
        raise DatasetError(
            f"{folder}: expected CIFAR-10 python batches data_batch_1..5 and test_batch; found "
            f"{sorted(p.name for p in folder.iterdir())[:10]}"
        )
    batches = [_read_cifar_batch(p) for p in train_paths]
    x_test, y_test = _read_cifar_batch(folder / "test_batch")
    return RawData(
        name=folder.name,
        x_train=np.concatenate([x for x, _ in batches]),
        y_train=np.concatenate([y for _, y in batches]),
        x_test=x_test,
        y_test=y_test,
        class_names=_cifar_class_names(folder),
    )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_unpickle(path.read_bytes())
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetError(f"{path.name}: expected a dict with b'data' and b'labels'")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    is_pixels = isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
    if not is_pixels or data.shape[1] != 3072:
        found = (getattr(data, "shape", None), getattr(data, "dtype", type(data).__name__))
        raise DatasetError(f"{path.name}: data is {found}; expected a uint8 (N, 3072) array")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"{path.name}: labels have shape {labels.shape}; expected ({len(data)},)"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _cifar_class_names(folder: Path) -> list[str]:
    meta_path = folder / "batches.meta"
    if not meta_path.is_file():
        return list(CIFAR10_CLASS_NAMES)
    meta = safe_unpickle(meta_path.read_bytes())
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{meta_path.name}: expected a dict with a list b'label_names'")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
