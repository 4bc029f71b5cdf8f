"""Retraining after label fixes: the same recipe before and after, over several seeds."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from dropinf.data import DatasetBundle
from dropinf.errors import ConfigError
from dropinf.models.training import TrainRecipe, train_model


@dataclass
class FixReport:
    """Test accuracy and loss over several seeds, before and after fixing training labels.

    Attributes:
        seeds: The training seeds, one run before and one after per seed.
        before_accuracy: Test accuracy per seed on the unfixed data.
        after_accuracy: Test accuracy per seed on the fixed data.
        before_loss: Test loss per seed on the unfixed data.
        after_loss: Test loss per seed on the fixed data.
        n_train_before: Training examples before the fixes.
        n_train_after: Training examples after removals.
        n_removed: Examples removed.
        n_relabeled: Examples relabelled.
        noise_truth: With known injected noise: how many removals hit flipped labels, and how many
            relabels restored the clean label; None otherwise.
    """

    seeds: list[int]
    before_accuracy: list[float]
    after_accuracy: list[float]
    before_loss: list[float]
    after_loss: list[float]
    n_train_before: int
    n_train_after: int
    n_removed: int
    n_relabeled: int
    noise_truth: dict[str, int] | None = None

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean and sample standard deviation (0 for one seed) of each metric list."""
        metrics = ("before_accuracy", "after_accuracy", "before_loss", "after_loss")
        return {name: _mean_std(getattr(self, name)) for name in metrics}

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-serialisable values, with the summary under ``summary``."""
        return {**asdict(self), "summary": self.summary()}


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": spread}


def retrain_with_fixes(
    recipe: TrainRecipe,
    bundle: DatasetBundle,
    removals: Sequence[int],
    relabels: Mapping[int, int],
    seeds: Sequence[int] | int = 3,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> FixReport:
    """Retrain with the same recipe before and after label fixes, over several seeds.

    Args:
        recipe: The recipe (its seed is replaced by each of ``seeds``).
        bundle: The unfixed dataset; fixes apply to its training split, the test split is shared.
        removals: Training indices to drop.
        relabels: Training index -> corrected label.
        seeds: Seeds to train with, or a count ``n`` meaning seeds ``0..n-1``.
        device: ``cpu``, ``cuda`` or None for CUDA when available.
        progress: Show tqdm bars.

    Returns:
        The per-seed and summarised test accuracy and loss, before and after.

    Raises:
        DatasetError: Bad indices or labels in the fixes.
        ConfigError: No seeds.
    """
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ConfigError("retrain_with_fixes needs at least one seed")
    fixed = bundle.with_fixes(removals, relabels)
    runs = {"before": [], "after": []}
    for seed in seed_list:
        seeded = replace(recipe, seed=seed)
        for name, data in (("before", bundle), ("after", fixed)):
            result = train_model(seeded, data, device=device, progress=progress)
            runs[name].append((result.test_accuracy, result.test_loss))
    return FixReport(
        seeds=seed_list,
        before_accuracy=[acc for acc, _ in runs["before"]],
        after_accuracy=[acc for acc, _ in runs["after"]],
        before_loss=[loss for _, loss in runs["before"]],
        after_loss=[loss for _, loss in runs["after"]],
        n_train_before=len(bundle.train),
        n_train_after=len(fixed.train),
        n_removed=len(set(removals)),
        n_relabeled=len(relabels),
        noise_truth=_noise_truth(bundle, removals, relabels),
    )


def _noise_truth(
    bundle: DatasetBundle, removals: Sequence[int], relabels: Mapping[int, int]
) -> dict[str, int] | None:
    if bundle.noisy_mask is None or bundle.clean_labels is None:
        return None
    removed = np.array(sorted(set(removals)), dtype=np.int64)
    relabelled = {int(i): int(label) for i, label in relabels.items()}
    return {
        "noisy_total": int(bundle.noisy_mask.sum()),
        "removed_noisy": int(bundle.noisy_mask[removed].sum()) if len(removed) else 0,
        "relabeled_noisy": int(sum(bundle.noisy_mask[i] for i in relabelled)),
        "relabeled_to_clean": int(
            sum(bundle.clean_labels[i] == lab for i, lab in relabelled.items())
        ),
    }
