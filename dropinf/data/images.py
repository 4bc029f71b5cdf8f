"""Pictures: reading image files into pixel arrays, and examples into displayable thumbnails."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from dropinf.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def picture_as_pixels(content: bytes, channels: int, height: int, width: int) -> np.ndarray:
    """A picture file as the pixels of one image example: grey or RGB, resized, in [0, 1].

    Args:
        content: The bytes of a PNG / JPEG / BMP / ... picture.
        channels: 1 for grey, 3 for RGB.
        height: Height of the examples.
        width: Width of the examples.

    Returns:
        (C, H, W) float32, C-contiguous, scaled as the loaders scale uint8 pixels (/ 255).

    Raises:
        DatasetError: The bytes are not a readable picture.
    """
    image = _open_picture(content).convert("L" if channels == 1 else "RGB")
    pixels = np.asarray(image.resize((width, height)), dtype=np.float32) / 255.0
    pixels = pixels[None] if channels == 1 else np.moveaxis(pixels, -1, 0)  # (C, H, W)
    return np.ascontiguousarray(pixels)


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


def to_thumbnail(example: np.ndarray) -> np.ndarray:
    """A displayable picture of one example.

    Args:
        example: (C, H, W), (H, W) or (D,) values.

    Returns:
        uint8 (H, W) for one or two channels (the first is shown), (H, W, 3) for three or more
        (the first three); vectors of square length as a square, others as a one-row strip.
        Values in [0, 1] map to 0..255, other ranges are min-max scaled.
    """
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


def read_images(files: list[Path]) -> np.ndarray:
    """Read picture files of one size into one array of pixels.

    Args:
        files: The picture files, in label order.

    Returns:
        uint8 (N, 1, H, W) when every picture is grey, else (N, 3, H, W) RGB.

    Raises:
        DatasetError: A file is not a readable picture, or the pictures differ in size.
    """
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
