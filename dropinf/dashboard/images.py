"""Pictures for the pages: nearest-neighbour upscaling, PNG thumbnails and data URIs."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable

import numpy as np
import pandas as pd
from PIL import Image


def upscale_nearest(image: np.ndarray, min_size: int = 96) -> np.ndarray:
    """Repeat pixels so the longer side is at least ``min_size`` (sharp 8×8 digits).

    Args:
        image: uint8 (H, W) or (H, W, C).
        min_size: Smallest wanted length of the longer side, in pixels.

    Returns:
        The image scaled by a whole factor (1 if it is already large enough).
    """
    factor = max(1, math.ceil(min_size / max(image.shape[:2])))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def thumbnail_png(image: np.ndarray, min_size: int = 96) -> bytes:
    """A PNG of one example's picture, upscaled nearest-neighbour.

    Args:
        image: uint8 (H, W) grey or (H, W, 3) colour, as ``DatasetBundle.thumbnail`` returns.
        min_size: Smallest length of the longer side, in pixels.

    Returns:
        The PNG bytes.
    """
    pixels = np.ascontiguousarray(upscale_nearest(np.asarray(image, dtype=np.uint8), min_size))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnail_data_uri(image: np.ndarray, min_size: int = 96) -> str:
    """A ``data:image/png;base64,...`` URI of one picture (for ``st.column_config.ImageColumn``)."""
    return "data:image/png;base64," + base64.b64encode(thumbnail_png(image, min_size)).decode()


def with_thumbnails(
    table: pd.DataFrame,
    thumbnail_of: Callable[[int], np.ndarray],
    id_column: str = "train_index",
    column: str = "image",
    min_size: int = 64,
) -> pd.DataFrame:
    """A copy of ``table`` with a first column of picture data URIs, one per row's id.

    Args:
        table: Rows with training (or test) ids in ``id_column``.
        thumbnail_of: id -> uint8 picture, e.g. ``lambda i: bundle.thumbnail("train", i)``.
        id_column: The column holding the ids.
        column: Name of the new column.
        min_size: Smallest length of the pictures' longer side.

    Returns:
        The new table.
    """
    uris = [thumbnail_data_uri(thumbnail_of(int(i)), min_size) for i in table[id_column]]
    return pd.concat([pd.DataFrame({column: uris}, index=table.index), table], axis=1)
