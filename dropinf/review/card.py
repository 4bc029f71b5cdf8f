"""What the review card offers: which queue rows its picker lists, and how it names them.

The card shows the most suspicious pending row the filters let through, unless the analyst
picked another: a row further down, an example an undo brought back, or a training index typed
in the jump box (shown even when decided, so a decision can be looked at again).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from dropinf.review.decisions import UNDECIDED

CARD_CHOICES = 50


def card_choices(
    shown: pd.DataFrame,
    everything: pd.DataFrame,
    picked: int | None,
    jumped: int | None,
    limit: int = CARD_CHOICES,
) -> pd.DataFrame:
    """The rows the card's picker lists, in order.

    Args:
        shown: The grid rows the filters let through (``RunReview.grid``), in queue order.
        everything: Every grid row, decided included.
        picked: The training index picked on the card, or None.
        jumped: The training index typed in the jump box, or None.
        limit: Pending rows of ``shown`` listed from the top.

    Returns:
        The first ``limit`` pending rows shown, then the picked row when it is pending but
        further down or filtered out, or when it was jumped to (decided or not).
    """
    top = shown[shown["status"] == UNDECIDED].head(limit)
    extra = everything["train_index"] == picked
    if picked is None or picked != jumped:
        extra &= everything["status"] == UNDECIDED
    extra &= ~everything["train_index"].isin(top["train_index"])
    return pd.concat([top, everything[extra]])


def item_name(row: Mapping[str, Any], class_name: Callable[[int], str]) -> str:
    """How the card's picker names a grid row (``⚑`` when flagged).

    Args:
        row: A grid row (a Series, or a dict of ``to_dict("records")``).
        class_name: Label -> class name.
    """
    return (
        f"{'⚑ ' if row['flagged'] else ''}rank {int(row['rank'])} · "
        f"train #{int(row['train_index'])} · given {class_name(int(row['given_label']))}, "
        f"predicted {class_name(int(row['predicted_label']))}"
    )


def item_caption(item: pd.Series) -> str:
    """The card's image caption: the index, the path when known, a decision when made."""
    path = f" · {item['path']}" if "path" in item.index else ""
    decided = "" if item["status"] == UNDECIDED else f" · {item['decision']}"
    return f"train #{int(item['train_index'])}{path}{decided}"
