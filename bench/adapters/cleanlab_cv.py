"""The cleanlab adapter (imported inside): label quality from cross-validated probabilities."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from bench.adapters.measure import MethodResult, phase
from bench.adapters.runner import Problem


def cleanlab_adapter(train_fold: Callable[[np.ndarray], nn.Module], folds: int = 5):
    """Cleanlab ``find_label_issues`` on cross-validated predicted probabilities.

    Args:
        train_fold: Trains the same recipe on the training examples of a boolean mask.
        folds: Number of cross-validation folds.
    """

    def adapter(problem: Problem, result: MethodResult) -> None:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        labels = np.asarray([int(y) for _, y in problem.train])
        with phase(result, "cross_val_training"):
            probs = _cross_val_probs(problem.train, labels, train_fold, problem.num_classes, folds)
        with phase(result, "find_label_issues"):
            issues = find_label_issues(labels, probs, filter_by="prune_by_noise_rate")
            quality = get_label_quality_scores(labels, probs)
        result.suspicion = 1.0 - quality
        result.bytes_stored = probs.nbytes
        result.note = f"{folds}-fold CV probs; flags {int(issues.sum())} issues"

    return adapter


def _cross_val_probs(train, labels, train_fold, num_classes: int, folds: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    fold_of = rng.permutation(len(labels)) % folds
    probs = np.zeros((len(labels), num_classes), dtype=np.float64)
    inputs = torch.stack([x for x, _ in train])
    for fold in range(folds):
        model = train_fold(fold_of != fold).eval()
        held_out = np.flatnonzero(fold_of == fold)
        with torch.no_grad():
            logits = model(inputs[torch.from_numpy(held_out)])
        probs[held_out] = torch.softmax(logits, -1).double().numpy()
    return probs
