"""The image-folder source: one sub-folder of pictures per class, with or without a test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dropinf.data.bundle import RawData
from dropinf.data.images import IMAGE_SUFFIXES, read_images
from dropinf.errors import DatasetError


def read_image_folder(root: Path) -> RawData:
    """Read an ImageFolder: ``root/{train,test}/<class>/<image>`` or ``root/<class>/<image>``.

    Without ``train/`` and ``test/`` the images are split later by ``split_seed``. Images must
    share one size; all grayscale gives one channel, else RGB. Hidden files are skipped; any
    other non-image file in a class folder is an error. Each example's id is its file path
    relative to ``root`` (``train/cat/001.png``), with ``/`` separators.

    Raises:
        DatasetError: No class folders, an empty class, a non-image or unreadable file, or
            images of different sizes.
    """
    if (root / "train").is_dir() and (root / "test").is_dir():
        class_names, x_train, y_train, train_files = _read_class_folders(root / "train", None)
        _, x_test, y_test, test_files = _read_class_folders(root / "test", class_names)
        return RawData(root.name, x_train, y_train, x_test, y_test, class_names,
                       _relative(train_files, root), _relative(test_files, root))  # fmt: skip
    class_names, x, y, files = _read_class_folders(root, None)
    return RawData(root.name, x, y, None, None, class_names, _relative(files, root))


def _relative(files: list[Path], root: Path) -> list[str]:
    return [file.relative_to(root).as_posix() for file in files]


def _read_class_folders(
    root: Path, expected_classes: list[str] | None
) -> tuple[list[str], np.ndarray, np.ndarray, list[Path]]:
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
    labels_array = np.array(labels, dtype=np.int64)
    return expected_classes or class_names, read_images(files), labels_array, files


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
