"""Retraining after label fixes: the same recipe before and after, paired over several seeds.

Each seed trains once on the data as given ("before") and once on the fixed data ("after"); the
verdict is the mean paired difference of test accuracy (after − before) with a 95 % Student-t
interval over seeds, on one CPU thread (deterministic, and no oversubscription on a busy
machine). On the CPU the "before" results of a registry architecture are cached under
``<dropinf home>/retrain-cache``, keyed by the seeded recipe, the data fingerprint, the thread
count and the torch version, so a second verification of the same data trains "after" only.
Progress (phase, epochs done of all epochs, examples/s, ETA) goes to a callback in the format of
a run's ``progress.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dropinf import paths
from dropinf.data import DatasetBundle
from dropinf.errors import ConfigError
from dropinf.models.own_code import is_code_reference
from dropinf.models.training import TrainRecipe, resolve_device, torch_threads, train_model

CONFIDENCE = 0.95
INTERVAL_METHOD = "95 % Student-t interval of the paired differences over seeds"
RETRAIN_PROGRESS_FILE = "retrain_progress.json"
CACHE_FORMAT = 1
TRAIN_THREADS = 1
ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass
class FixReport:
    """Test accuracy and loss over several seeds, before and after fixing training labels.

    Attributes:
        seeds: The training seeds, one run before and one after per seed (paired).
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
        n_test: Test examples every accuracy is measured on (one example = ``100 / n_test``
            points of accuracy).
        before_cached: Per seed, whether the "before" result came from the cache.
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
    n_test: int = 0
    before_cached: list[bool] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, float | None]]:
        """Mean and spread of each metric, and the paired changes with their interval.

        Returns:
            ``before_accuracy`` ... ``after_loss``: mean and sample standard deviation (0 for
            one seed); ``accuracy_change`` (in points) and ``loss_change``: see
            :func:`paired_difference`.
        """
        metrics = ("before_accuracy", "after_accuracy", "before_loss", "after_loss")
        spreads: dict[str, dict[str, float | None]] = {
            name: _mean_std(getattr(self, name)) for name in metrics
        }
        spreads["accuracy_change"] = paired_difference(
            [100 * a for a in self.before_accuracy], [100 * a for a in self.after_accuracy]
        )
        spreads["loss_change"] = paired_difference(self.before_loss, self.after_loss)
        return spreads

    def verdict(self) -> str:
        """The change of test accuracy in one plain sentence, with its uncertainty."""
        change = paired_difference(
            [100 * a for a in self.before_accuracy], [100 * a for a in self.after_accuracy]
        )
        return verdict_sentence(change, len(self.seeds), self.n_test)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON values, with ``summary``, ``verdict`` and ``interval`` added."""
        return {
            **asdict(self),
            "summary": self.summary(),
            "verdict": self.verdict(),
            "interval": INTERVAL_METHOD,
        }


def _mean_std(values: Sequence[float]) -> dict[str, float | None]:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": spread}


def paired_difference(before: Sequence[float], after: Sequence[float]) -> dict[str, float | None]:
    """Mean of ``after − before`` over paired seeds, with a 95 % Student-t interval.

    Args:
        before: The metric per seed before the fixes.
        after: The metric per seed after, in the same seed order.

    Returns:
        ``mean``, ``half_width``, ``low`` and ``high`` (the interval; None for one seed, which
        gives no estimate of the noise).
    """
    from scipy import stats

    differences = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    mean = float(differences.mean())
    if differences.size < 2:
        return {"mean": mean, "half_width": None, "low": None, "high": None}
    quantile = stats.t.ppf(0.5 + CONFIDENCE / 2, df=differences.size - 1)
    half_width = float(quantile * differences.std(ddof=1) / np.sqrt(differences.size))
    return {
        "mean": mean,
        "half_width": half_width,
        "low": mean - half_width,
        "high": mean + half_width,
    }


def verdict_sentence(change: Mapping[str, float | None], n_seeds: int, n_test: int) -> str:
    """A plain sentence on a change of test accuracy (in points) and whether it is noise.

    Args:
        change: What :func:`paired_difference` returned, in points of accuracy.
        n_seeds: Seeds the change is averaged over.
        n_test: Test examples behind each accuracy.

    Returns:
        e.g. "The change is within the noise of retraining: +0.3 ± 0.5 points of test accuracy
        over 3 seeds (...)".
    """
    seeds = f"{n_seeds} seed" + ("s" if n_seeds != 1 else "")
    scale = f"{n_test} test examples, one example = {100 / max(n_test, 1):.2f} points"
    if change["half_width"] is None:
        return (
            f"Test accuracy changed by {change['mean']:+.1f} points with {seeds} ({scale}); one "
            "seed cannot tell a change from the noise of retraining: use 2 or more."
        )
    amount = f"{change['mean']:+.1f} ± {change['half_width']:.1f} points of test accuracy"
    detail = f"over {seeds} (95 % t-interval of the paired differences; {scale})"
    if change["low"] <= 0 <= change["high"]:
        return f"The change is within the noise of retraining: {amount} {detail}."
    direction = "raised" if change["mean"] > 0 else "lowered"
    return f"The fixes {direction} test accuracy beyond the noise of retraining: {amount} {detail}."


def retrain_with_fixes(
    recipe: TrainRecipe,
    bundle: DatasetBundle,
    removals: Sequence[int],
    relabels: Mapping[int, int],
    seeds: Sequence[int] | int = 3,
    device: str | torch.device | None = None,
    progress: bool = False,
    trust_code: bool | None = None,
    cache_dir: str | Path | None = None,
    on_progress: ProgressCallback | None = None,
) -> FixReport:
    """Retrain with the same recipe before and after label fixes, paired over several seeds.

    Args:
        recipe: The recipe (its seed is replaced by each of ``seeds``).
        bundle: The unfixed dataset; fixes apply to its training split, the test split is shared.
        removals: Training indices to drop.
        relabels: Training index -> corrected label.
        seeds: Seeds to train with, or a count ``n`` meaning seeds ``0..n-1``.
        device: ``cpu``, ``cuda`` or None for CUDA when available.
        progress: Show tqdm bars.
        trust_code: The opt-in to import an own-code architecture (None: ``DROPINF_TRUST_CODE``).
        cache_dir: Folder caching the "before" results (see :func:`retrain_cache_dir`); None
            caches nothing. Used on the CPU for registry architectures only.
        on_progress: Called with ``{phase, done, total, examples_per_s, eta_s}`` (epochs done
            of all epochs still to train) as training goes, and once more when done.

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
    cache = _BeforeCache.open(cache_dir, recipe, bundle, device)
    before = {seed: cache.get(seed) for seed in seed_list}
    cached = [before[seed] is not None for seed in seed_list]
    jobs = [("before", s, bundle) for s in seed_list if before[s] is None]
    jobs += [("after", s, fixed) for s in seed_list]
    tracker = _ProgressTracker(on_progress, recipe.epochs * len(jobs), len(bundle.train))
    after: dict[int, tuple[float, float]] = {}
    with torch_threads(TRAIN_THREADS):
        for phase, seed, data in jobs:
            result = train_model(
                replace(recipe, seed=seed), data, device, progress, trust_code,
                on_epoch=tracker.epoch_callback(phase),
            )  # fmt: skip
            metrics = (result.test_accuracy, result.test_loss)
            if phase == "before":
                before[seed] = metrics
                cache.put(seed, metrics)
            else:
                after[seed] = metrics
    tracker.finish()
    return FixReport(
        seeds=seed_list,
        before_accuracy=[before[s][0] for s in seed_list],
        after_accuracy=[after[s][0] for s in seed_list],
        before_loss=[before[s][1] for s in seed_list],
        after_loss=[after[s][1] for s in seed_list],
        n_train_before=len(bundle.train),
        n_train_after=len(fixed.train),
        n_removed=len(set(removals)),
        n_relabeled=len(relabels),
        noise_truth=_noise_truth(bundle, removals, relabels),
        n_test=len(bundle.test),
        before_cached=cached,
    )


def retrain_cache_dir() -> Path:
    """Where retraining caches its "before" results: ``<dropinf home>/retrain-cache``."""
    return paths.home_dir() / "retrain-cache"


class _ProgressTracker:
    """Counts epochs over all trainings of a verification and reports them with an ETA."""

    def __init__(self, report: ProgressCallback | None, total: int, n_train: int) -> None:
        self.report, self.total, self.n_train = report, total, n_train
        self.done, self.started = 0, time.perf_counter()
        self._send("retrain", None)

    def epoch_callback(self, phase: str) -> Callable[[int, nn.Module], None]:
        def on_epoch(epoch: int, model: nn.Module) -> None:
            self.done += 1
            self._send(phase, self.done / (time.perf_counter() - self.started))

        return on_epoch

    def finish(self) -> None:
        self.done = self.total
        self._send("done", None)

    def _send(self, phase: str, epochs_per_s: float | None) -> None:
        if self.report is None:
            return
        eta = (self.total - self.done) / epochs_per_s if epochs_per_s else None
        rate = epochs_per_s * self.n_train if epochs_per_s else None
        self.report(
            {"phase": phase, "done": self.done, "total": self.total,
             "examples_per_s": rate, "eta_s": eta}
        )  # fmt: skip


@dataclass
class _BeforeCache:
    """The "before" test accuracy and loss per seed, one JSON file per key; or no cache."""

    folder: Path | None
    key: dict[str, Any]

    @classmethod
    def open(
        cls,
        cache_dir: str | Path | None,
        recipe: TrainRecipe,
        bundle: DatasetBundle,
        device: str | torch.device | None,
    ) -> _BeforeCache:
        deterministic = resolve_device(device).type == "cpu" and not is_code_reference(recipe.arch)
        key = {
            "format": CACHE_FORMAT,
            "recipe": recipe.to_dict(),
            "data_fingerprint": bundle.fingerprint,
            "threads": TRAIN_THREADS,
            "torch": torch.__version__,
        }
        folder = Path(cache_dir) if cache_dir is not None and deterministic else None
        return cls(folder, key)

    def _entry(self, seed: int) -> tuple[dict[str, Any], Path | None]:
        key = {**self.key, "recipe": {**self.key["recipe"], "seed": seed}}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return key, (self.folder / f"before-{digest}.json" if self.folder else None)

    def get(self, seed: int) -> tuple[float, float] | None:
        key, path = self._entry(seed)
        try:
            saved = json.loads(path.read_text()) if path else None
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("key") != key:
            return None
        return float(saved["test_accuracy"]), float(saved["test_loss"])

    def put(self, seed: int, metrics: tuple[float, float]) -> None:
        key, path = self._entry(seed)
        if path is None:
            return
        entry = {"key": key, "test_accuracy": metrics[0], "test_loss": metrics[1]}
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(handle, "w") as tmp:
            json.dump(entry, tmp, sort_keys=True)
        os.replace(tmp_name, path)


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
