"""Datasets for dropinf: the embedded digits demo, an analyst's own data, and label noise.

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

import functools
import hashlib
import io
import math
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dropinf.errors import ConfigError, DatasetError, DropinfError

DEMO_DATA_SPEC = "digits:noise=0.1,seed=0"
NOISE_KINDS = ("symmetric", "class_conditional")
DIGITS_FLIP_PAIRS: tuple[tuple[int, int], ...] = ((1, 7), (3, 8), (4, 9), (5, 6), (0, 2))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
CIFAR10_CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
DEFAULT_TEST_FRACTION = 0.2
SPEC_OPTIONS = ("noise", "kind", "pairs", "seed", "test_fraction", "split_seed")
MAX_SEED = 2**32 - 1  # the largest seed scikit-learn's splits accept
MAX_CLASSES = 100_000


class Split(Dataset):
    """One split of a dataset, held in memory.

    Yields ``(input, label)``: a float32 tensor of the example's shape and an int64 scalar.

    Attributes:
        inputs: (N, C, H, W) for images, (N, D) for vectors; float32.
        labels: (N,) int64.
    """

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        self.inputs = inputs
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.labels[index]


@dataclass
class DatasetBundle:
    """A dataset ready for a model: both splits, class names, label-noise ground truth.

    Attributes:
        name: Short name shown to users (``digits``, a file or folder name).
        spec: The spec string it was loaded from.
        train: The training split (labels after noise injection, if any).
        test: The test split (never noisy).
        class_names: One name per class; its length is the class count.
        input_shape: Shape of one example, e.g. ``(1, 8, 8)``.
        noisy_mask: (n_train,) bool, True where the given label was flipped; None without noise.
        clean_labels: (n_train,) int, the labels before noise; None without noise.
        fingerprint: sha256 hex over inputs, labels, noise mask and class names.
    """

    name: str
    spec: str
    train: Split
    test: Split
    class_names: list[str]
    input_shape: tuple[int, ...]
    noisy_mask: np.ndarray | None
    clean_labels: np.ndarray | None
    fingerprint: str

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def class_name(self, label: int) -> str:
        """The display name of a class index (the index itself when it has no name)."""
        label = int(label)
        return str(self.class_names[label]) if 0 <= label < len(self.class_names) else str(label)

    def inputs_from_image(self, content: bytes) -> torch.Tensor:
        """A picture file as a one-example input batch in this dataset's format.

        Image datasets hold (C, H, W) float32 pixels in [0, 1] (the loaders divide uint8 by
        255), so the picture is converted to grey (C = 1) or RGB (C = 3), resized to (H, W)
        and scaled the same way.

        Args:
            content: The bytes of a PNG / JPEG / BMP / ... picture.

        Returns:
            (1, C, H, W) float32.

        Raises:
            DatasetError: The bytes are not a readable picture, or the dataset is not made of
                grey or RGB images.
        """
        if len(self.input_shape) != 3 or self.input_shape[0] not in (1, 3):
            raise DatasetError(
                f"expected an image dataset of shape (1 or 3, H, W) to take a picture; "
                f"this one's inputs are {self.input_shape}"
            )
        channels, height, width = self.input_shape
        image = _open_picture(content).convert("L" if channels == 1 else "RGB")
        pixels = np.asarray(image.resize((width, height)), dtype=np.float32) / 255.0
        pixels = pixels[None] if channels == 1 else np.moveaxis(pixels, -1, 0)  # (C, H, W)
        return torch.from_numpy(np.ascontiguousarray(pixels))[None]  # (1, C, H, W)

    def split(self, name: str) -> Split:
        """The split called ``train`` or ``test``.

        Raises:
            DatasetError: For any other name.
        """
        if name not in ("train", "test"):
            raise DatasetError(f"split must be 'train' or 'test', got {name!r}")
        return self.train if name == "train" else self.test

    def thumbnail(self, split: str, index: int) -> np.ndarray:
        """A displayable picture of one example.

        Args:
            split: ``train`` or ``test``.
            index: Example index within that split.

        Returns:
            uint8 (H, W) for one or two channels (the first is shown), (H, W, 3) for three or
            more (the first three); vectors of square length are shown as a square, others as a
            one-row strip. Values in [0, 1] map to 0..255, other ranges are min-max scaled.

        Raises:
            DatasetError: Unknown split.
            IndexError: Index out of range.
        """
        inputs = self.split(split).inputs
        if not -len(inputs) <= index < len(inputs):
            raise IndexError(f"{split} index {index} out of range for {len(inputs)} examples")
        return _to_thumbnail(inputs[index].numpy())

    def with_fixes(self, removals: Sequence[int], relabels: Mapping[int, int]) -> DatasetBundle:
        """A copy with training examples removed and relabelled.

        Indices refer to this bundle's training split. The noise ground truth follows the kept
        examples; the test split is unchanged.

        Args:
            removals: Training indices to drop.
            relabels: Training index -> new label.

        Returns:
            A new bundle with its own fingerprint.

        Raises:
            DatasetError: An index out of range, a label out of range, or an index both removed
                and relabelled.
        """
        removal_set, relabel_map = _check_fixes(self, removals, relabels)
        labels = self.train.labels.clone()
        for index, label in relabel_map.items():
            labels[index] = label
        keep = np.array([i not in removal_set for i in range(len(self.train))], dtype=bool)
        train = Split(self.train.inputs[torch.from_numpy(keep)], labels[torch.from_numpy(keep)])
        noisy_mask = None if self.noisy_mask is None else self.noisy_mask[keep]
        clean_labels = None if self.clean_labels is None else self.clean_labels[keep]
        fingerprint = fingerprint_of(train, self.test, self.class_names, noisy_mask)
        return replace(self, train=train, noisy_mask=noisy_mask, clean_labels=clean_labels,
                       fingerprint=fingerprint)  # fmt: skip


def _check_fixes(
    bundle: DatasetBundle, removals: Sequence[int], relabels: Mapping[int, int]
) -> tuple[set[int], dict[int, int]]:
    n_train = len(bundle.train)
    removal_set = {int(i) for i in removals}
    relabel_map = {int(i): int(label) for i, label in relabels.items()}
    for index in removal_set | set(relabel_map):
        if not 0 <= index < n_train:
            raise DatasetError(f"training index {index} out of range: expected 0..{n_train - 1}")
    for index, label in relabel_map.items():
        if not 0 <= label < bundle.num_classes:
            raise DatasetError(
                f"relabel of training index {index} to {label}: expected a label in "
                f"0..{bundle.num_classes - 1}"
            )
    both = sorted(removal_set & set(relabel_map))
    if both:
        raise DatasetError(f"training indices both removed and relabelled: {both[:10]}")
    return removal_set, relabel_map


def _open_picture(content: bytes) -> Any:
    """A PIL image of picture bytes, fully decoded (so a truncated file fails here)."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(content))
        image.load()
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(
            f"expected a picture file (PNG, JPEG, BMP, ...); could not read {len(content):,} "
            f"bytes as one: {error}"
        ) from None
    return image


def _to_thumbnail(example: np.ndarray) -> np.ndarray:
    if example.ndim == 1:
        side = math.isqrt(example.size)
        example = example.reshape(side, side) if side * side == example.size else example[None]
    elif example.ndim == 3:
        example = example[0] if example.shape[0] < 3 else np.moveaxis(example[:3], 0, -1)
    low, high = float(example.min()), float(example.max())
    if low >= 0.0 and high <= 1.0:
        scaled = example
    else:
        scaled = (example - low) / (high - low) if high > low else np.zeros_like(example)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def fingerprint_of(
    train: Split, test: Split, class_names: Sequence[str], noisy_mask: np.ndarray | None
) -> str:
    """A sha256 hex digest of a dataset's contents (used in run keys).

    Args:
        train: Training split.
        test: Test split.
        class_names: Class names in label order.
        noisy_mask: Noise ground truth, or None.

    Returns:
        64 hex characters; equal contents give equal fingerprints, wherever they were loaded from.
    """
    digest = hashlib.sha256()
    for split in (train, test):
        digest.update(str(tuple(split.inputs.shape)).encode())
        digest.update(split.inputs.contiguous().numpy().tobytes())
        digest.update(split.labels.contiguous().numpy().tobytes())
    digest.update("\n".join(class_names).encode())
    digest.update(b"no-noise" if noisy_mask is None else np.packbits(noisy_mask).tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- label noise


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


# ---------------------------------------------------------------- specs


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
    _check_split_arrays(raw.name, "train", raw.x_train, raw.y_train)
    _class_count(raw)
    if raw.x_test is None or raw.y_test is None:
        test_fraction = _option_float(options, "test_fraction", DEFAULT_TEST_FRACTION)
        raw = _split_off_test(raw, test_fraction, _option_seed(options, "split_seed"))
    _validate_test(raw)
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


@dataclass
class _RawData:
    """Arrays as read from a source, before validation and noise; no test split yet if None."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: list[str] | None


def _split_off_test(raw: _RawData, test_fraction: float, split_seed: int) -> _RawData:
    train_idx, test_idx = stratified_split(raw.y_train, test_fraction, split_seed)
    x, y = raw.x_train, raw.y_train
    return replace(raw, x_train=x[train_idx], y_train=y[train_idx], x_test=x[test_idx],
                   y_test=y[test_idx])  # fmt: skip


def _load_source(source: str) -> _RawData:
    if source == "digits":
        return _load_digits()
    try:
        return _load_path(Path(source).expanduser(), source)
    except DropinfError:
        raise
    except (OSError, ValueError) as error:
        raise DatasetError(
            f"cannot read data {source!r}: expected a readable .npz file or folder; {error}"
        ) from None


def _load_path(path: Path, source: str) -> _RawData:
    if not path.exists():
        raise DatasetError(
            f"data not found: {source!r} (expected 'digits', a .npz file or a folder)"
        )
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise DatasetError(f"unsupported data file {path.name!r}: expected a .npz file")
        return _load_npz(path)
    if (path / "data_batch_1").exists() or (path / "test_batch").exists():
        return _load_cifar10(path)
    return _load_image_folder(path)


def _bundle_from_raw(raw: _RawData, spec: str, options: Mapping[str, str]) -> DatasetBundle:
    num_classes = _class_count(raw)
    class_names = raw.class_names or [str(c) for c in range(num_classes)]
    y_train, noisy_mask, clean_labels = _apply_noise(raw.y_train, num_classes, options)
    train = Split(_as_float_tensor(raw.x_train), torch.from_numpy(y_train.astype(np.int64)))
    test = Split(_as_float_tensor(raw.x_test), torch.from_numpy(raw.y_test.astype(np.int64)))
    return DatasetBundle(
        name=raw.name,
        spec=spec,
        train=train,
        test=test,
        class_names=list(class_names),
        input_shape=tuple(train.inputs.shape[1:]),
        noisy_mask=noisy_mask,
        clean_labels=clean_labels,
        fingerprint=fingerprint_of(train, test, class_names, noisy_mask),
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


def stratified_split(
    labels: np.ndarray, test_size: float | int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified train/test indices (unstratified if a class is too small).

    Args:
        labels: (n,) integer labels.
        test_size: Share of examples in the test split, in (0, 1), or their exact count.
        seed: Seed of the shuffle.

    Returns:
        ``(train_indices, test_indices)``, each sorted.

    Raises:
        DatasetError: Fraction out of range or too few examples to split.
    """
    from sklearn.model_selection import train_test_split

    if isinstance(test_size, float) and not 0.0 < test_size < 1.0:
        raise DatasetError(f"test_fraction must be in (0, 1), got {test_size}")
    indices = np.arange(len(labels))
    try:
        train_idx, test_idx = train_test_split(
            indices, test_size=test_size, random_state=seed, stratify=labels
        )
    except ValueError:  # a class too small to stratify: fall back to a plain seeded shuffle
        try:
            train_idx, test_idx = train_test_split(indices, test_size=test_size, random_state=seed)
        except ValueError as error:
            raise DatasetError(
                f"cannot split {len(labels)} examples into train/test: {error}"
            ) from None
    return np.sort(train_idx), np.sort(test_idx)


# ---------------------------------------------------------------- validation


def _validate_test(raw: _RawData) -> None:
    _check_split_arrays(raw.name, "test", raw.x_test, raw.y_test)
    if raw.x_train.shape[1:] != raw.x_test.shape[1:]:
        raise DatasetError(
            f"{raw.name}: test examples have shape {raw.x_test.shape[1:]}, expected the training "
            f"shape {raw.x_train.shape[1:]}"
        )
    _class_count(raw)


def _check_split_arrays(name: str, split: str, x: np.ndarray, y: np.ndarray) -> None:
    where = f"{name} ({split})"
    if len(x) == 0:
        raise DatasetError(f"{where}: no examples; expected at least one")
    if x.ndim not in (2, 4):
        raise DatasetError(
            f"{where}: inputs have shape {x.shape}; expected (N, C, H, W), (N, H, W) or (N, D)"
        )
    if not any(np.issubdtype(x.dtype, kind) for kind in (np.integer, np.floating, np.bool_)):
        raise DatasetError(f"{where}: inputs have dtype {x.dtype}; expected real numbers")
    if x[0].size == 0:
        raise DatasetError(f"{where}: inputs have shape {x.shape}; expected at least one value")
    if y.ndim != 1 or len(y) != len(x):
        raise DatasetError(
            f"{where}: labels have shape {y.shape}; expected ({len(x)},), one per input"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{where}: labels have dtype {y.dtype}; expected integers")
    if y.min() < 0:
        raise DatasetError(f"{where}: label {int(y.min())} is negative; expected 0..C-1")
    _check_finite(where, x)


def _check_finite(where: str, x: np.ndarray) -> None:
    if not np.issubdtype(x.dtype, np.floating):
        return
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            f"{where}: {int(bad.sum())} inputs hold NaN or infinity (first at index {first}); "
            "expected finite values"
        )


def _class_count(raw: _RawData) -> int:
    test_max = raw.y_test.max() if raw.y_test is not None and len(raw.y_test) else 0
    max_label = int(max(raw.y_train.max(), test_max))
    if raw.class_names is None:
        if max_label < 1:
            raise DatasetError(f"{raw.name}: labels hold one class only; expected at least 2")
        if max_label >= MAX_CLASSES:
            raise DatasetError(
                f"{raw.name}: label {max_label} implies {max_label + 1:,} classes; expected "
                f"labels in 0..C-1 with at most {MAX_CLASSES:,} classes"
            )
        return max_label + 1
    if len(raw.class_names) < 2:
        raise DatasetError(f"{raw.name}: {len(raw.class_names)} class names; expected at least 2")
    if max_label >= len(raw.class_names):
        raise DatasetError(
            f"{raw.name}: label {max_label} out of range; expected labels in "
            f"0..{len(raw.class_names) - 1} for {len(raw.class_names)} class names"
        )
    return len(raw.class_names)


# ---------------------------------------------------------------- digits


@functools.cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    return images, digits.target.astype(np.int64)


def _load_digits() -> _RawData:
    images, labels = _digits_arrays()
    train_idx, test_idx = stratified_split(labels, test_size=360, seed=0)
    return _RawData(
        name="digits",
        x_train=images[train_idx],
        y_train=labels[train_idx],
        x_test=images[test_idx],
        y_test=labels[test_idx],
        class_names=[str(d) for d in range(10)],
    )


# ---------------------------------------------------------------- .npz


def _load_npz(path: Path) -> _RawData:
    """Read arrays ``x``, ``y`` (+ optional ``class_names``, ``x_test``, ``y_test``) from a .npz.

    ``x`` may be (N, C, H, W), (N, H, W) (one channel) or (N, D); uint8 is scaled to [0, 1].
    Without ``x_test``/``y_test`` the data is split later by ``split_seed``. Object arrays are
    refused (``allow_pickle=False``).

    Raises:
        DatasetError: Unreadable file, missing or malformed arrays.
    """
    arrays = _read_npz(path)
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
    return _RawData(path.name, x, y, x_test, arrays.get("y_test"), class_names)


def _npz_class_names(arrays: Mapping[str, np.ndarray], path: Path) -> list[str] | None:
    if "class_names" not in arrays:
        return None
    names = arrays["class_names"]
    if names.ndim != 1:
        raise DatasetError(
            f"{path.name}: class_names has shape {names.shape}; expected one name per class (C,)"
        )
    return [str(name) for name in names]


def _read_npz(path: Path) -> dict[str, np.ndarray]:
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


# ---------------------------------------------------------------- ImageFolder


def _load_image_folder(root: Path) -> _RawData:
    """Read an ImageFolder: ``root/{train,test}/<class>/<image>`` or ``root/<class>/<image>``.

    Without ``train/`` and ``test/`` the images are split later by ``split_seed``. Images must
    share one size; all grayscale gives one channel, else RGB. Hidden files are skipped; any
    other non-image file in a class folder is an error.

    Raises:
        DatasetError: No class folders, an empty class, a non-image or unreadable file, or
            images of different sizes.
    """
    if (root / "train").is_dir() and (root / "test").is_dir():
        class_names, x_train, y_train = _read_class_folders(root / "train", None)
        _, x_test, y_test = _read_class_folders(root / "test", class_names)
        return _RawData(root.name, x_train, y_train, x_test, y_test, class_names)
    class_names, x, y = _read_class_folders(root, None)
    return _RawData(root.name, x, y, None, None, class_names)


def _read_class_folders(
    root: Path, expected_classes: list[str] | None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    class_names = sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not class_names:
        raise DatasetError(f"{root}: no class folders; expected one sub-folder of images per class")
    if expected_classes is not None and not set(class_names) <= set(expected_classes):
        extra = sorted(set(class_names) - set(expected_classes))
        raise DatasetError(f"{root}: class folders {extra} are not in the training classes")
    label_of = {name: i for i, name in enumerate(expected_classes or class_names)}
    files, labels = [], []
    for name in class_names:
        class_files = _image_files(root / name)
        files += class_files
        labels += [label_of[name]] * len(class_files)
    return expected_classes or class_names, _read_images(files), np.array(labels, dtype=np.int64)


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    for path in files:
        if path.is_dir() or path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DatasetError(
                f"non-image entry in class folder: {path} (expected only image files: "
                f"{', '.join(IMAGE_SUFFIXES)})"
            )
    if not files:
        raise DatasetError(f"class folder {folder} holds no images; expected at least one")
    return files


def _read_images(files: list[Path]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                image.load()
                images.append(image.copy())
        except (UnidentifiedImageError, OSError) as error:
            raise DatasetError(f"unreadable image {path}: {error}") from None
    grayscale = all(image.mode in ("1", "L", "LA", "I", "I;16", "F") for image in images)
    mode = "L" if grayscale else "RGB"
    size = images[0].size
    arrays = []
    for path, image in zip(files, images, strict=True):
        if image.size != size:
            raise DatasetError(
                f"image {path} is {image.size[0]}×{image.size[1]}; expected {size[0]}×{size[1]} "
                f"like {files[0].name} (resize the images to one size)"
            )
        arrays.append(np.asarray(image.convert(mode), dtype=np.uint8))
    stacked = np.stack(arrays)  # (N, H, W) or (N, H, W, 3)
    return stacked[:, None] if grayscale else np.moveaxis(stacked, -1, 1)


# ---------------------------------------------------------------- CIFAR-10


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


def _load_cifar10(folder: Path) -> _RawData:
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
    return _RawData(
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
