"""LDS (linear datamodeling score, Park et al. 2023): retrain on subsets, correlate.

Train the model on many random training subsets, record each test example's output, and
correlate (Spearman, per test example) those outputs with the subset effects that the
attribution scores predict (the sum of the scores of the subset's members). Retrained subset
outputs are cached on disk so many methods reuse them. This trains models, so it lives in the
benchmark rather than in the pure-numpy ``dropinf.metrics``.

Sign convention: attribution scores are ``+ = proponent`` (up-weighting the training example
lowers the test loss, i.e. raises the test margin), as everywhere in dropinf.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, Dataset

from dropinf.data import DatasetBundle
from dropinf.metrics import rowwise_spearman
from dropinf.models import TrainRecipe, train_model


def sample_subsets(
    n_train: int, n_subsets: int, fraction: float = 0.5, seed: int = 0
) -> np.ndarray:
    """Random training subsets of a fixed size, as membership masks.

    Args:
        n_train: Size of the training set.
        n_subsets: Number of subsets.
        fraction: Share of the training set in each subset, in (0, 1).
        seed: Seed; same seed, same subsets.

    Returns:
        bool array of shape (n_subsets, n_train), each row with ``round(fraction · n_train)``
        members.

    Raises:
        ValueError: If ``fraction`` is outside (0, 1) or ``n_subsets`` is below 1.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"expected a subset fraction in (0, 1), got {fraction!r}")
    if n_subsets < 1:
        raise ValueError(f"expected at least one subset, got {n_subsets!r}")
    rng = np.random.default_rng(seed)
    size = max(1, round(fraction * n_train))
    masks = np.zeros((n_subsets, n_train), dtype=bool)
    for row in masks:
        row[rng.choice(n_train, size=size, replace=False)] = True
    return masks


def predicted_subset_effects(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The linear datamodel's prediction: for each subset and test example, the summed scores.

    Args:
        scores: Attribution scores, shape (n_test, n_train), + = proponent.
        masks: Subset membership, shape (n_subsets, n_train).

    Returns:
        float64 array of shape (n_subsets, n_test).
    """
    scores = np.asarray(scores, dtype=np.float64)
    return np.asarray(masks, dtype=np.float64) @ scores.T  # (S, n_test)


@dataclass(frozen=True)
class LDSReport:
    """Linear datamodeling score of one attribution method.

    Attributes:
        lds: Mean over test examples of the Spearman correlation across subsets.
        per_test: The per-test-example correlations, shape (n_test,).
        n_subsets: Number of retrained subsets.
    """

    lds: float
    per_test: np.ndarray
    n_subsets: int

    @property
    def std_error(self) -> float:
        """Standard error of the mean over test examples."""
        return float(self.per_test.std(ddof=1) / math.sqrt(max(1, self.per_test.size)))


def linear_datamodeling_score(
    scores: np.ndarray, masks: np.ndarray, subset_outputs: np.ndarray
) -> LDSReport:
    """LDS: Spearman, per test example, between predicted subset effects and actual outputs.

    Args:
        scores: Attribution scores, shape (n_test, n_train), + = proponent.
        masks: Subset membership, shape (n_subsets, n_train).
        subset_outputs: Output of the model trained on each subset, shape (n_subsets, n_test),
            oriented so that proponents raise it: the correct-class margin, or minus the loss.

    Returns:
        The report.

    Raises:
        ValueError: If the shapes do not agree.
    """
    scores = np.atleast_2d(np.asarray(scores))
    masks = np.asarray(masks)
    subset_outputs = np.asarray(subset_outputs, dtype=np.float64)
    expected = (masks.shape[0], scores.shape[0])
    if masks.shape[1] != scores.shape[1] or subset_outputs.shape != expected:
        raise ValueError(
            f"expected scores (n_test, n_train), masks (n_subsets, n_train) and outputs "
            f"(n_subsets, n_test) = {expected}; got {scores.shape}, {masks.shape}, "
            f"{subset_outputs.shape}"
        )
    predicted = predicted_subset_effects(scores, masks)  # (S, n_test)
    per_test = rowwise_spearman(predicted.T, subset_outputs.T)  # (n_test,)
    return LDSReport(lds=float(per_test.mean()), per_test=per_test, n_subsets=masks.shape[0])


def classification_margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Correct-class margin: the label's logit minus the largest other logit.

    Args:
        logits: Shape (n, C).
        labels: Shape (n,), integer classes.

    Returns:
        float64 array of shape (n,).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(labels))
    correct = logits[rows, labels]
    others = logits.copy()
    others[rows, labels] = -np.inf
    return correct - others.max(axis=1)


@torch.no_grad()
def model_outputs(
    model: nn.Module, dataset: Dataset, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Correct-class margins and cross-entropy losses of a classifier on a dataset.

    Args:
        model: A classifier returning logits (B, C); it is put in eval mode.
        dataset: Yields ``(inputs, label)`` pairs.
        batch_size: Evaluation batch size.

    Returns:
        ``(margins, losses)``, each float64 of shape (n,).
    """
    model.eval()
    device = next(model.parameters()).device
    margins, losses = [], []
    for inputs, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        logits = model(inputs.to(device)).float().cpu()  # (B, C)
        losses.append(functional.cross_entropy(logits, labels, reduction="none").numpy())
        margins.append(classification_margins(logits.numpy(), labels.numpy()))
    return np.concatenate(margins), np.concatenate(losses).astype(np.float64)


SubsetTrainer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""Trains on the training examples whose mask entry is True; returns test (margins, losses)."""


@dataclass(frozen=True)
class SubsetOutputs:
    """Test outputs of models retrained on random training subsets.

    Attributes:
        masks: Subset membership, shape (n_subsets, n_train).
        margins: Correct-class test margins, shape (n_subsets, n_test).
        losses: Test cross-entropy losses, shape (n_subsets, n_test).
        path: The cache file they were read from or written to, if any.
    """

    masks: np.ndarray
    margins: np.ndarray
    losses: np.ndarray
    path: Path | None = None


def subset_cache_key(recipe: Mapping[str, Any], data_fingerprint: str, **subset_args: Any) -> str:
    """Content key of a set of retrained subsets: model recipe + data + subset sampling.

    Args:
        recipe: The training recipe as a JSON-ready mapping (architecture, epochs, lr, seed, ...).
        data_fingerprint: The dataset's fingerprint (contents, labels and noise).
        **subset_args: The subset sampling (``n_subsets``, ``fraction``, ``seed``, ...).

    Returns:
        A 20-character hex key.
    """
    payload = {"recipe": dict(recipe), "data": data_fingerprint, "subsets": subset_args}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def retrain_subset_outputs(
    train_on_subset: SubsetTrainer,
    masks: np.ndarray,
    cache_path: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SubsetOutputs:
    """Retrain on every subset (or read the results from the cache) and collect test outputs.

    The cache is an ``.npz`` holding the masks and the outputs of the subsets done so far; it is
    rewritten atomically after each subset, so an interrupted run resumes where it stopped. A
    cache whose masks differ from ``masks`` is ignored and overwritten.

    Args:
        train_on_subset: Trains on the examples where the mask is True and returns the test
            ``(margins, losses)`` of the trained model.
        masks: Subset membership, shape (n_subsets, n_train).
        cache_path: The ``.npz`` cache file, or None for no caching.
        progress: Called with ``(done, total)`` after each subset.

    Returns:
        The outputs of every subset.
    """
    path = Path(cache_path) if cache_path is not None else None
    margins, losses = _read_subset_cache(path, masks)
    for index in range(len(masks)):
        if index < len(margins):
            continue
        subset_margins, subset_losses = train_on_subset(masks[index])
        margins.append(np.asarray(subset_margins, dtype=np.float64))
        losses.append(np.asarray(subset_losses, dtype=np.float64))
        if path is not None:
            _write_subset_cache(path, masks, margins, losses)
        if progress is not None:
            progress(index + 1, len(masks))
    return SubsetOutputs(masks=masks, margins=np.stack(margins), losses=np.stack(losses), path=path)


def _read_subset_cache(
    path: Path | None, masks: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if path is None or not path.exists():
        return [], []
    with np.load(path) as cached:
        if cached["masks"].shape != masks.shape or not np.array_equal(cached["masks"], masks):
            return [], []
        return list(cached["margins"]), list(cached["losses"])


def _write_subset_cache(
    path: Path, masks: np.ndarray, margins: list[np.ndarray], losses: list[np.ndarray]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, masks=masks, margins=np.stack(margins), losses=np.stack(losses))
    os.replace(partial, path)


def lds_subset_outputs(
    recipe: TrainRecipe,
    bundle: DatasetBundle,
    n_subsets: int = 50,
    fraction: float = 0.5,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SubsetOutputs:
    """Retrain ``recipe`` on random subsets of ``bundle.train``, cached by recipe + data + seed.

    Subset ``i`` is trained with the recipe's own seed, so the only thing that differs between
    subsets is which training examples they hold.

    Args:
        recipe: The training recipe.
        bundle: The data; its test split gives the outputs.
        n_subsets: Number of subsets (LDS needs about 50 or more).
        fraction: Share of the training set in each subset.
        seed: Seed of the subset sampling.
        cache_dir: Folder of the ``lds-<key>.npz`` cache files, or None for no caching.
        progress: Called with ``(done, total)`` after each subset.

    Returns:
        The subset masks and the test margins / losses of each retrained model.
    """
    n_train = len(bundle.train)
    masks = sample_subsets(n_train, n_subsets, fraction, seed)
    cache_path = None
    if cache_dir is not None:
        key = subset_cache_key(
            asdict(recipe), bundle.fingerprint, n_subsets=n_subsets, fraction=fraction, seed=seed
        )
        cache_path = Path(cache_dir) / f"lds-{key}.npz"

    def train_on_subset(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        subset = bundle.with_fixes(removals=np.flatnonzero(~mask).tolist(), relabels={})
        result = train_model(recipe, subset, progress=False)
        return model_outputs(result.model, bundle.test)

    return retrain_subset_outputs(train_on_subset, masks, cache_path, progress)
