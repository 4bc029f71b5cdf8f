"""What to review first: the one ranking of training labels most likely to be wrong.

The mislabel score is the influence-estimated leave-one-out loss (``leave_one_out_loss``); the
review queue, the suspect marks on thumbnails and the detection panel all rank by it, so "what to
review first" has one definition. Flagged examples lead the queue in flag order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from dropinf.errors import ConfigError
from dropinf.review.decisions import UNDECIDED, Decision, review_status

SUSPICION_SCORES = ("leave_one_out_loss", "self_influence")
DEFAULT_SUSPICION = "leave_one_out_loss"
PRIMARY_SCORE = "mislabel score (queue order)"


def leave_one_out_loss(self_influence: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """First-order estimate of each training example's loss had it been left out of training.

    Dropping z from the mean training loss moves the parameters by about
    ``(F + λI)⁻¹ g(z) / N``, which raises z's own loss by ``g(z)ᵀ (F + λI)⁻¹ g(z) / N``: the
    held-out loss is ``ℓ(z) + self_influence(z) / N``. A wrong label has a high held-out loss
    whether the model fits it (high self-influence) or not (high loss); this is the influence
    analogue of the cross-validated probabilities cleanlab ranks by, without retraining.

    Args:
        self_influence: (n_train,) self-influence ``g(z)ᵀ (F + λI)⁻¹ g(z)``.
        losses: (n_train,) the model's loss on each training example.

    Returns:
        (n_train,) float64 estimated held-out losses.
    """
    self_influence = np.asarray(self_influence, dtype=np.float64).ravel()
    return np.asarray(losses, dtype=np.float64).ravel() + self_influence / self_influence.size


def suspicion(
    self_influence: np.ndarray, losses: np.ndarray, kind: str = DEFAULT_SUSPICION
) -> np.ndarray:
    """How likely each training label is wrong; higher = inspect first.

    Args:
        self_influence: (n_train,) self-influence ``g(z)ᵀ (F + λI)⁻¹ g(z)``.
        losses: (n_train,) the model's loss on each training example.
        kind: ``leave_one_out_loss`` (the default, see ``leave_one_out_loss``) or
            ``self_influence`` (the classic signal). Measured ROC AUC of the flipped labels,
            self-influence → leave-one-out loss (dropout keep 0.25, energy mask; 2 000 shifted
            digits, 10 % noise, bench/peers.py's recipe): MLP symmetric 0.992 → 0.995,
            class-conditional 0.975 → 0.993; small CNN symmetric 0.999 → 1.000,
            class-conditional 0.975 → 0.993. Models that memorise their flipped labels (digits,
            20 % noise, lr 3e-3, no weight decay) lose little: MLP, 150 epochs (228 of 287 flips
            fitted) 0.934 → 0.925; small CNN, 60 epochs (all 287 fitted) 0.903 → 0.903.

    Returns:
        (n_train,) float64 scores.

    Raises:
        ConfigError: Unknown ``kind``.
    """
    if kind not in SUSPICION_SCORES:
        raise ConfigError(f"suspicion must be one of {', '.join(SUSPICION_SCORES)}; got {kind!r}")
    if kind == "self_influence":
        return np.asarray(self_influence, dtype=np.float64).ravel()
    return leave_one_out_loss(self_influence, losses)


def review_queue(
    self_influence: np.ndarray,
    losses: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    decisions: Mapping[int, Decision],
    kind: str = DEFAULT_SUSPICION,
    class_names: Sequence[str] | None = None,
    include_decided: bool = True,
    flags: Sequence[int] = (),
) -> pd.DataFrame:
    """Training examples ranked by suspicion, with their review status; flagged ones first.

    Args:
        self_influence: (n_train,) self-influence.
        losses: (n_train,) the model's loss on each training example.
        labels: (n_train,) given labels.
        predictions: (n_train,) predicted labels.
        decisions: Training index -> decision so far.
        kind: The suspicion score (see ``suspicion``).
        class_names: Names of the classes; adds ``given_class`` / ``predicted_class``.
        include_decided: Keep examples that already have a decision.
        flags: Flagged training indices, in the order they lead the queue.

    Returns:
        Columns ``rank``, ``train_index``, ``suspicion``, ``self_influence``, ``loss``,
        ``given_label``, ``predicted_label``, ``disagrees``, ``status``, ``new_label``,
        ``flagged`` (and class names): flagged examples first (in flag order), then the others
        most suspicious first; ``rank`` is the suspicion rank over all examples.
    """
    scores = suspicion(self_influence, losses, kind)
    order = np.argsort(-scores, kind="stable")
    labels, predictions = np.asarray(labels)[order], np.asarray(predictions)[order]
    table = pd.DataFrame({
        "rank": np.arange(1, order.size + 1), "train_index": order, "suspicion": scores[order],
        "self_influence": np.asarray(self_influence, dtype=np.float64)[order],
        "loss": np.asarray(losses, dtype=np.float64)[order],
        "given_label": labels, "predicted_label": predictions, "disagrees": labels != predictions,
        "status": review_status(len(scores), decisions)[order],
        "new_label": [_new_label(decisions.get(int(i))) for i in order],
    })  # fmt: skip
    if class_names is not None:
        table["given_class"] = [class_names[label] for label in labels]
        table["predicted_class"] = [class_names[label] for label in predictions]
    table = _flagged_first(table, flags)
    return table if include_decided else table[table["status"] == UNDECIDED]


def _flagged_first(table: pd.DataFrame, flags: Sequence[int]) -> pd.DataFrame:
    """The table with a ``flagged`` column, flagged rows moved to the front in flag order."""
    position = {int(index): order for order, index in enumerate(flags)}
    keys = np.array([position.get(int(i), len(position)) for i in table["train_index"]])
    table["flagged"] = keys < len(position)
    return table.iloc[np.argsort(keys, kind="stable")]


def _new_label(decision: Decision | None) -> int | None:
    return decision.label if decision is not None else None


def suspect_mask(
    labels: np.ndarray,
    predictions: np.ndarray,
    decisions: Mapping[int, Decision],
    flags: Sequence[int] = (),
) -> np.ndarray:
    """(n_train,) True for examples predicted against their label, decided on, or flagged.

    Args:
        labels: (n_train,) given labels.
        predictions: (n_train,) predicted labels.
        decisions: Training index -> decision.
        flags: Flagged training indices.
    """
    suspects = np.asarray(labels).ravel() != np.asarray(predictions).ravel()
    suspects[[int(i) for i in [*decisions, *flags]]] = True
    return suspects


def mislabel_scores(self_influence: np.ndarray, losses: np.ndarray) -> dict[str, np.ndarray]:
    """The suspicion scores a detection panel compares, by display name.

    Args:
        self_influence: (n_train,) self-influence.
        losses: (n_train,) the model's loss on each training example.

    Returns:
        Display name -> (n_train,) float64 scores; ``PRIMARY_SCORE`` (the queue's order) first.
    """
    return {
        PRIMARY_SCORE: suspicion(self_influence, losses),
        "self-influence": np.asarray(self_influence, dtype=np.float64).ravel(),
        "training loss": np.asarray(losses, dtype=np.float64).ravel(),
    }
