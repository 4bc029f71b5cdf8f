"""Evaluation of attribution scores: mislabel detection, LDS and fidelity.

Three questions, each answered by pure numpy functions so the benchmark, the tests and the
dashboard share one definition:

* **Mislabel detection** — given one suspicion score per training example (higher = more
  suspicious, e.g. self-influence) and the ground-truth mask of flipped labels: ROC AUC,
  precision / recall at k, and recall when a share of the training set is inspected.
* **LDS** (linear datamodeling score, Park et al. 2023) — train the model on many random subsets,
  record each test example's output, and correlate (Spearman, per test example) the outputs with
  the subset effects that the attribution scores predict (sum of the scores of the subset's
  members). Retrained subset outputs are cached on disk so many methods reuse them.
* **Fidelity** — how closely compressed scores follow exact (``identity``) scores computed under
  the same curvature and damping: Spearman and Pearson per test example, and the overlap of the
  top proponents and opponents.

Sign convention: attribution scores are ``+ = proponent`` (up-weighting the training example
lowers the test loss, i.e. raises the test margin), as everywhere in dropinf.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, Dataset

DEFAULT_SHARES = (0.05, 0.1, 0.2)
DEFAULT_KS = (10, 50, 100)


# --------------------------------------------------------------------------------------------
# Ranks and correlations
# --------------------------------------------------------------------------------------------


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks (1-based) along the last axis, ties sharing the mean of their ranks.

    Args:
        values: Array of any shape; ranks are taken independently along the last axis.

    Returns:
        float64 array of the same shape.
    """
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(-1, values.shape[-1])  # (R, n)
    ranks = np.empty_like(flat)
    for row, out in zip(flat, ranks, strict=True):
        out[:] = _average_ranks_1d(row)
    return ranks.reshape(values.shape)


def _average_ranks_1d(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b``.

    A row that is constant in either input carries no ranking information; its correlation is
    reported as 0 rather than NaN.

    Args:
        a: Array of shape (R, n).
        b: Array of shape (R, n).

    Returns:
        float64 array of shape (R,).

    Raises:
        ValueError: If the shapes differ.
    """
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"expected two arrays of the same shape, got {a.shape} and {b.shape}")
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    norms = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    dots = (a * b).sum(axis=1)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def rowwise_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each row of ``a`` with the same row of ``b``.

    Args:
        a: Array of shape (R, n).
        b: Array of shape (R, n).

    Returns:
        float64 array of shape (R,); constant rows give 0.
    """
    return rowwise_pearson(average_ranks(np.atleast_2d(a)), average_ranks(np.atleast_2d(b)))


# --------------------------------------------------------------------------------------------
# Mislabel detection
# --------------------------------------------------------------------------------------------


def _check_detection_inputs(scores: np.ndarray, noisy_mask: np.ndarray) -> tuple[np.ndarray, ...]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    noisy_mask = np.asarray(noisy_mask, dtype=bool).ravel()
    if scores.shape != noisy_mask.shape:
        raise ValueError(
            f"expected one score per training example ({noisy_mask.shape[0]}), "
            f"got {scores.shape[0]} scores"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("expected finite suspicion scores, found NaN or infinity")
    return scores, noisy_mask


def roc_auc(scores: np.ndarray, noisy_mask: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` as a detector of ``noisy_mask``.

    Equals the probability that a random noisy example scores higher than a random clean one,
    ties counting one half (the Mann–Whitney U statistic, computed from average ranks).

    Args:
        scores: Suspicion per training example, shape (n,); higher = more suspicious.
        noisy_mask: True where the label was flipped, shape (n,).

    Returns:
        The AUC in [0, 1], or NaN when either class is empty.
    """
    scores, noisy_mask = _check_detection_inputs(scores, noisy_mask)
    n_pos = int(noisy_mask.sum())
    n_neg = noisy_mask.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = average_ranks(scores)[noisy_mask].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def inspection_order(scores: np.ndarray) -> np.ndarray:
    """Training indices from most to least suspicious; ties keep index order.

    Args:
        scores: Suspicion per training example, shape (n,).

    Returns:
        int64 array of shape (n,).
    """
    return np.argsort(-np.asarray(scores, dtype=np.float64).ravel(), kind="stable")


def precision_at_k(scores: np.ndarray, noisy_mask: np.ndarray, k: int) -> float:
    """Share of noisy examples among the ``k`` most suspicious.

    Args:
        scores: Suspicion per training example, shape (n,).
        noisy_mask: True where the label was flipped, shape (n,).
        k: How many examples are inspected; clipped to n.

    Returns:
        Precision in [0, 1].
    """
    scores, noisy_mask = _check_detection_inputs(scores, noisy_mask)
    k = _check_k(k, scores.size)
    return float(noisy_mask[inspection_order(scores)[:k]].mean())


def recall_at_k(scores: np.ndarray, noisy_mask: np.ndarray, k: int) -> float:
    """Share of all noisy examples found among the ``k`` most suspicious.

    Args:
        scores: Suspicion per training example, shape (n,).
        noisy_mask: True where the label was flipped, shape (n,).
        k: How many examples are inspected; clipped to n.

    Returns:
        Recall in [0, 1], or NaN when there is no noisy example.
    """
    scores, noisy_mask = _check_detection_inputs(scores, noisy_mask)
    k = _check_k(k, scores.size)
    n_noisy = int(noisy_mask.sum())
    if n_noisy == 0:
        return math.nan
    return float(noisy_mask[inspection_order(scores)[:k]].sum() / n_noisy)


def recall_at_share(scores: np.ndarray, noisy_mask: np.ndarray, share: float) -> float:
    """Recall when the ``ceil(share · n)`` most suspicious examples are inspected.

    Args:
        scores: Suspicion per training example, shape (n,).
        noisy_mask: True where the label was flipped, shape (n,).
        share: Share of the training set inspected, in (0, 1].

    Returns:
        Recall in [0, 1], or NaN when there is no noisy example.

    Raises:
        ValueError: If ``share`` is outside (0, 1].
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"expected a share in (0, 1], got {share!r}")
    n = np.asarray(noisy_mask).size
    return recall_at_k(scores, noisy_mask, math.ceil(share * n - 1e-9))


def _check_k(k: int, n: int) -> int:
    if k < 1:
        raise ValueError(f"expected k of at least 1, got {k!r}")
    return min(int(k), n)


@dataclass(frozen=True)
class DetectionReport:
    """Mislabel-detection quality of one suspicion score.

    Attributes:
        auc: ROC AUC.
        precision_at_k: Precision among the k most suspicious, by k.
        recall_at_k: Recall among the k most suspicious, by k.
        recall_at_share: Recall with a share of the training set inspected, by share.
        n_train: Number of training examples.
        n_noisy: Number of flipped labels.
    """

    auc: float
    precision_at_k: dict[int, float]
    recall_at_k: dict[int, float]
    recall_at_share: dict[float, float]
    n_train: int
    n_noisy: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (keys of the inner dicts become strings)."""
        values = asdict(self)
        for name in ("precision_at_k", "recall_at_k", "recall_at_share"):
            values[name] = {str(key): value for key, value in values[name].items()}
        return values


def detection_report(
    scores: np.ndarray,
    noisy_mask: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    shares: Sequence[float] = DEFAULT_SHARES,
) -> DetectionReport:
    """All detection metrics of one suspicion score at once.

    Args:
        scores: Suspicion per training example, shape (n,); higher = more suspicious.
        noisy_mask: True where the label was flipped, shape (n,).
        ks: Inspection budgets for precision / recall at k.
        shares: Inspected shares for recall at share.

    Returns:
        The report.
    """
    scores, noisy_mask = _check_detection_inputs(scores, noisy_mask)
    return DetectionReport(
        auc=roc_auc(scores, noisy_mask),
        precision_at_k={k: precision_at_k(scores, noisy_mask, k) for k in ks},
        recall_at_k={k: recall_at_k(scores, noisy_mask, k) for k in ks},
        recall_at_share={s: recall_at_share(scores, noisy_mask, s) for s in shares},
        n_train=int(noisy_mask.size),
        n_noisy=int(noisy_mask.sum()),
    )


# --------------------------------------------------------------------------------------------
# Fidelity against exact scores
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FidelityReport:
    """Agreement of approximate scores with reference (exact) scores, averaged over test rows.

    Attributes:
        spearman: Mean per-test-example Spearman correlation.
        pearson: Mean per-test-example Pearson correlation.
        top_proponent_overlap: Mean share of the reference's top proponents also in the
            approximation's top proponents.
        top_opponent_overlap: The same for the most negative scores (opponents).
        top: How many proponents / opponents were compared.
    """

    spearman: float
    pearson: float
    top_proponent_overlap: float
    top_opponent_overlap: float
    top: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of this report."""
        return asdict(self)


def top_overlap(scores: np.ndarray, reference: np.ndarray, top: int = 10) -> np.ndarray:
    """Per row, the share of the ``top`` highest reference entries that are also top in scores.

    Args:
        scores: Approximate scores, shape (R, n).
        reference: Reference scores, shape (R, n).
        top: Size of the top set; clipped to n.

    Returns:
        float64 array of shape (R,) with values in [0, 1].
    """
    scores = np.atleast_2d(np.asarray(scores))
    reference = np.atleast_2d(np.asarray(reference))
    top = min(top, scores.shape[1])
    ours = np.argsort(-scores, axis=1, kind="stable")[:, :top]  # (R, top)
    theirs = np.argsort(-reference, axis=1, kind="stable")[:, :top]  # (R, top)
    shared = [np.intersect1d(a, b).size for a, b in zip(ours, theirs, strict=True)]
    return np.asarray(shared, dtype=np.float64) / top


def fidelity(scores: np.ndarray, reference: np.ndarray, top: int = 10) -> FidelityReport:
    """Compare approximate scores with reference scores, test example by test example.

    Args:
        scores: Approximate scores, shape (n_test, n_train).
        reference: Exact scores (``identity`` compression, same curvature and damping), same shape.
        top: Size of the proponent / opponent sets compared.

    Returns:
        The report.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    reference = np.atleast_2d(np.asarray(reference, dtype=np.float64))
    return FidelityReport(
        spearman=float(rowwise_spearman(scores, reference).mean()),
        pearson=float(rowwise_pearson(scores, reference).mean()),
        top_proponent_overlap=float(top_overlap(scores, reference, top).mean()),
        top_opponent_overlap=float(top_overlap(-scores, -reference, top).mean()),
        top=top,
    )


# --------------------------------------------------------------------------------------------
# LDS
# --------------------------------------------------------------------------------------------


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
    recipe: Any,
    bundle: Any,
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
        recipe: A ``dropinf.train.TrainRecipe``.
        bundle: A ``dropinf.data.DatasetBundle``; its test split gives the outputs.
        n_subsets: Number of subsets (LDS needs about 50 or more).
        fraction: Share of the training set in each subset.
        seed: Seed of the subset sampling.
        cache_dir: Folder of the ``lds-<key>.npz`` cache files, or None for no caching.
        progress: Called with ``(done, total)`` after each subset.

    Returns:
        The subset masks and the test margins / losses of each retrained model.
    """
    from dropinf.models import train_model

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
