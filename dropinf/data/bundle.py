"""The dataset a model sees: splits, the bundle with its fingerprint, and raw-data checks.

A source module (digits, npz, folder, cifar) reads its arrays into a :class:`RawData`; the checks
here refuse malformed arrays before they become a :class:`DatasetBundle`, whose fingerprint keys
the runs computed from it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import Dataset

from dropinf.data.images import picture_as_pixels, to_thumbnail
from dropinf.errors import DatasetError

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
        fingerprint: sha256 hex over inputs, labels, noise mask, class names and example ids.
        train_ids: One name per training example (an image folder's relative file path, an
            .npz's ``ids``), or None when the source names none.
        test_ids: The same for the test split.
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
    train_ids: tuple[str, ...] | None = None
    test_ids: tuple[str, ...] | None = None

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
        pixels = picture_as_pixels(content, *self.input_shape)  # (C, H, W)
        return torch.from_numpy(pixels)[None]  # (1, C, H, W)

    def example_id(self, split: str, index: int) -> str | None:
        """The name of one example: its relative file path, its .npz id, or None.

        Args:
            split: ``train`` or ``test``.
            index: Example index within that split.

        Returns:
            The id, or None when the dataset names no examples.

        Raises:
            DatasetError: Unknown split.
            IndexError: Index out of range.
        """
        size = len(self.split(split))
        if not -size <= index < size:
            raise IndexError(f"{split} index {index} out of range for {size} examples")
        ids = self.train_ids if split == "train" else self.test_ids
        return None if ids is None else ids[index]

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
        return to_thumbnail(inputs[index].numpy())

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
        train_ids = None if self.train_ids is None else tuple(np.array(self.train_ids)[keep])
        fingerprint = fingerprint_of(
            train, self.test, self.class_names, noisy_mask, (train_ids, self.test_ids)
        )
        return replace(self, train=train, noisy_mask=noisy_mask, clean_labels=clean_labels,
                       train_ids=train_ids, fingerprint=fingerprint)  # fmt: skip


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


def fingerprint_of(
    train: Split,
    test: Split,
    class_names: Sequence[str],
    noisy_mask: np.ndarray | None,
    ids: tuple[Sequence[str] | None, Sequence[str] | None] = (None, None),
) -> str:
    """A sha256 hex digest of a dataset's contents (used in run keys).

    Example ids enter it only when the dataset has them (a run's tables and exports show them,
    so a run must not be reused for examples named otherwise); a dataset without ids keeps the
    fingerprint it always had.

    Args:
        train: Training split.
        test: Test split.
        class_names: Class names in label order.
        noisy_mask: Noise ground truth, or None.
        ids: Training and test example ids, each None when absent.

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
    for split, split_ids in zip(("train", "test"), ids, strict=True):
        if split_ids is not None:  # NUL never occurs in an id: the join is unambiguous
            digest.update(f"\0{split}-ids\0".encode() + "\0".join(split_ids).encode())
    return digest.hexdigest()


@dataclass
class RawData:
    """Arrays as read from a source, before validation and noise.

    Attributes:
        name: Short name shown to users (``digits``, a file or folder name).
        x_train: Training inputs, (N, C, H, W) or (N, D); uint8 pixels or real numbers.
        y_train: (N,) integer labels.
        x_test: Test inputs, or None when the source has no test split (split later by seed).
        y_test: Test labels, or None with ``x_test``.
        class_names: One name per class, or None to name classes by their index.
        train_ids: One name per training example, or None.
        test_ids: One name per test example, or None.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: list[str] | None
    train_ids: list[str] | None = None
    test_ids: list[str] | None = None


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


def validate_train(raw: RawData) -> None:
    """Refuse a training split that cannot become a dataset.

    Args:
        raw: Arrays as read from a source.

    Raises:
        DatasetError: No examples, inputs of an unusable shape or dtype, NaN or infinity, labels
            not one non-negative integer per input, or labels that do not fit the class names.
    """
    _check_split_arrays(raw.name, "train", raw.x_train, raw.y_train)
    class_count(raw)


def validate_test(raw: RawData) -> None:
    """Refuse a test split that cannot become a dataset, or does not match the training split.

    Args:
        raw: Arrays with both splits (after any split by seed).

    Raises:
        DatasetError: The checks of :func:`validate_train` fail on the test split, or its
            examples have another shape than the training examples.
    """
    _check_split_arrays(raw.name, "test", raw.x_test, raw.y_test)
    if raw.x_train.shape[1:] != raw.x_test.shape[1:]:
        raise DatasetError(
            f"{raw.name}: test examples have shape {raw.x_test.shape[1:]}, expected the training "
            f"shape {raw.x_train.shape[1:]}"
        )
    class_count(raw)


def _check_split_arrays(name: str, split: str, x: np.ndarray, y: np.ndarray) -> None:
    where = f"{name} ({split})"
    if len(x) == 0:
        raise DatasetError(f"{where}: no examples; expected at least one")
    if x.ndim not in (2, 3, 4):
        raise DatasetError(
            f"{where}: inputs have shape {x.shape}; expected (N, C, H, W), (N, H, W), (N, D), "
            "or (N, C, L) signals"
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


def class_count(raw: RawData) -> int:
    """The number of classes: one per class name, else the largest label plus one.

    Args:
        raw: Arrays as read from a source.

    Returns:
        The class count, at least 2.

    Raises:
        DatasetError: Fewer than 2 classes, more than :data:`MAX_CLASSES`, or a label beyond
            the class names.
    """
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
