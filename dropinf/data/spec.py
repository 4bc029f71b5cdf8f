"""Data specs: parsing ``source[:key=value,...]``, checking the options, and loading the bundle.

A dataset is named by a *spec* string, read by :func:`load_data`:

- ``digits`` — scikit-learn's bundled 8×8 digits (1 797 images, no download), split 1 437 / 360.
- ``path/to/file.npz`` — arrays ``x`` and ``y`` (optional ``class_names``, ``x_test``, ``y_test``).
- ``path/to/folder/`` — an ImageFolder (``train/`` and ``test/`` holding one folder per class,
  or the class folders directly, split by seed).
- ``path/to/cifar-10-batches-py/`` — CIFAR-10 python batches, parsed by a restricted unpickler.

Any spec takes options after a colon: ``digits:noise=0.1,seed=0``,
``data.npz:noise=0.2,kind=class_conditional,pairs=1-7/3-8,seed=1``. Options: ``noise`` (rate of
flipped training labels), ``kind`` (``symmetric`` or ``class_conditional``), ``pairs`` (class pairs
flipped into each other), ``seed`` (noise seed), ``test_fraction`` and ``split_seed`` (for data
without its own test split). Noise is injected into the training split only, and the ground truth
travels with the bundle (``noisy_mask``, ``clean_labels``) so detection can be measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dropinf.data.bundle import (
    DatasetBundle,
    RawData,
    Split,
    class_count,
    fingerprint_of,
    stratified_split,
    validate_test,
    validate_train,
)
from dropinf.data.cifar import read_cifar10
from dropinf.data.digits import read_digits
from dropinf.data.folder import read_image_folder
from dropinf.data.noise import inject_label_noise
from dropinf.data.npz import read_npz
from dropinf.errors import ConfigError, DatasetError, DropinfError

DEMO_DATA_SPEC = "digits:noise=0.1,seed=0"
DEFAULT_TEST_FRACTION = 0.2
SPEC_OPTIONS = ("noise", "kind", "pairs", "seed", "test_fraction", "split_seed")
MAX_SEED = 2**32 - 1  # the largest seed scikit-learn's splits accept


def load_data(spec: str) -> DatasetBundle:
    """Load a dataset named by a spec string (see the module docstring).

    Args:
        spec: ``digits[:options]``, a ``.npz`` file, an ImageFolder or a CIFAR-10 batches folder,
            each optionally followed by ``:key=value,...`` options.

    Returns:
        The dataset, with label noise injected into the training split if asked.

    Raises:
        DatasetError: The spec names nothing readable, or the data is malformed.
        ConfigError: A noise option is out of range.
    """
    source, options = parse_spec(spec)
    _check_option_values(options)
    raw = _load_source(source)
    validate_train(raw)
    if raw.x_test is None or raw.y_test is None:
        test_fraction = _option_float(options, "test_fraction", DEFAULT_TEST_FRACTION)
        raw = _split_off_test(raw, test_fraction, _option_seed(options, "split_seed"))
    validate_test(raw)
    return _bundle_from_raw(raw, spec, options)


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split a spec into its source and options.

    Args:
        spec: e.g. ``digits:noise=0.1,seed=0`` or ``/data/x.npz:noise=0.2``.

    Returns:
        ``(source, options)``.

    Raises:
        DatasetError: Empty spec, malformed, unknown or repeated options.
    """
    spec = spec.strip()
    if not spec:
        raise DatasetError("empty data spec: expected 'digits', a .npz file or a folder")
    source, _, option_text = spec.rpartition(":")
    if not source or "=" not in option_text:
        return spec, {}
    options: dict[str, str] = {}
    for item in option_text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in SPEC_OPTIONS:
            raise DatasetError(
                f"bad data spec option {item!r} in {spec!r}: expected key=value with key one of "
                f"{', '.join(SPEC_OPTIONS)}"
            )
        if key in options:
            raise DatasetError(f"data spec option {key!r} given twice in {spec!r}; expected once")
        options[key] = value.strip()
    return source, options


def _split_off_test(raw: RawData, test_fraction: float, split_seed: int) -> RawData:
    train_idx, test_idx = stratified_split(raw.y_train, test_fraction, split_seed)
    x, y, ids = raw.x_train, raw.y_train, raw.train_ids
    return replace(raw, x_train=x[train_idx], y_train=y[train_idx], x_test=x[test_idx],
                   y_test=y[test_idx], train_ids=_pick(ids, train_idx),
                   test_ids=_pick(ids, test_idx))  # fmt: skip


def _pick(ids: list[str] | None, indices: np.ndarray) -> list[str] | None:
    return None if ids is None else [ids[i] for i in indices]


def _load_source(source: str) -> RawData:
    if source == "digits":
        return read_digits()
    try:
        return _load_path(Path(source).expanduser(), source)
    except DropinfError:
        raise
    except (OSError, ValueError) as error:
        raise DatasetError(
            f"cannot read data {source!r}: expected a readable .npz file or folder; {error}"
        ) from None


def _load_path(path: Path, source: str) -> RawData:
    if not path.exists():
        raise DatasetError(
            f"data not found: {source!r} (expected 'digits', a .npz file or a folder)"
        )
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise DatasetError(f"unsupported data file {path.name!r}: expected a .npz file")
        return read_npz(path)
    if (path / "data_batch_1").exists() or (path / "test_batch").exists():
        return read_cifar10(path)
    return read_image_folder(path)


def _bundle_from_raw(raw: RawData, spec: str, options: Mapping[str, str]) -> DatasetBundle:
    num_classes = class_count(raw)
    class_names = raw.class_names or [str(c) for c in range(num_classes)]
    y_train, noisy_mask, clean_labels = _apply_noise(raw.y_train, num_classes, options)
    train = Split(_as_float_tensor(raw.x_train), torch.from_numpy(y_train.astype(np.int64)))
    test = Split(_as_float_tensor(raw.x_test), torch.from_numpy(raw.y_test.astype(np.int64)))
    train_ids = None if raw.train_ids is None else tuple(raw.train_ids)
    test_ids = None if raw.test_ids is None else tuple(raw.test_ids)
    return DatasetBundle(
        name=raw.name,
        spec=spec,
        train=train,
        test=test,
        class_names=list(class_names),
        input_shape=tuple(train.inputs.shape[1:]),
        noisy_mask=noisy_mask,
        clean_labels=clean_labels,
        fingerprint=fingerprint_of(train, test, class_names, noisy_mask, (train_ids, test_ids)),
        train_ids=train_ids,
        test_ids=test_ids,
    )


def _apply_noise(
    labels: np.ndarray, num_classes: int, options: Mapping[str, str]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    rate = _option_float(options, "noise", 0.0)
    if rate == 0.0:
        return labels, None, None
    kind = options.get("kind", "symmetric")
    pairs = _parse_pairs(options["pairs"]) if "pairs" in options else None
    seed = _option_seed(options, "seed")
    noisy, mask = inject_label_noise(labels, num_classes, rate, seed, kind, pairs)
    return noisy, mask, labels.astype(np.int64).copy()


def _option_float(options: Mapping[str, str], key: str, default: float) -> float:
    try:
        return float(options.get(key, default))
    except ValueError:
        raise DatasetError(f"data spec option {key}={options[key]!r}: expected a number") from None


def _check_option_values(options: Mapping[str, str]) -> None:
    """Refuse a malformed option value, even one the source does not use (fail early)."""
    for key in ("noise", "test_fraction"):
        _option_float(options, key, 0.0)
    for key in ("seed", "split_seed"):
        _option_seed(options, key)
    if "pairs" in options:
        _parse_pairs(options["pairs"])


def _option_seed(options: Mapping[str, str], key: str) -> int:
    text = options.get(key, "0")
    try:
        seed = int(text)
    except ValueError:
        raise DatasetError(f"data spec option {key}={text!r}: expected an integer") from None
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"data spec option {key}={text!r}: expected an integer in 0..{MAX_SEED}")
    return seed


def _parse_pairs(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [tuple(int(c) for c in pair.split("-")) for pair in text.split("/")]
    except ValueError:
        pairs = []
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise DatasetError(f"pairs={text!r}: expected class pairs like 1-7/3-8")
    return pairs  # type: ignore[return-value]


def _as_float_tensor(x: np.ndarray) -> torch.Tensor:
    if x.dtype == np.uint8:
        return torch.from_numpy(x.astype(np.float32) / 255.0)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
