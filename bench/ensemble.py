"""Checkpoint ensembles vs the final model vs cross-validated self-confidence (issue 14).

The memorising setting: the embedded digits with 20 % symmetric label flips and an MLP
64-256-256-10 trained 300 epochs without weight decay (the ``memorising`` demo preset, whose
checkpoint schedule keeps epochs 1, 2, 4, ..., 256 and 300). Measured side by side, on one
thread each:

- dropinf over the checkpoints (``EnsembleEngine``, default settings): the ROC AUC of the
  flipped labels for each combination (rank, standardised, tracin) of self-influence, the
  leave-one-out estimate and the loss, with the seconds of the fit (all checkpoints, and the
  later ones only);
- the final checkpoint alone (self-influence, leave-one-out estimate, loss);
- cleanlab-style self-confidence: 5-fold cross-validated models of the same recipe (5 plain
  torch retrainings), ranking by ``1 - p(given label)`` on the held-out fold.

Run: ``nice -n 10 .venv/bin/python -m bench.ensemble [--out figures.json]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from dropinf.core import cross_entropy_per_sample
from dropinf.data import DatasetBundle, load_data
from dropinf.engine import COMBINATIONS, CheckpointInfo, EnsembleEngine, combine_scores
from dropinf.metrics import roc_auc
from dropinf.models import build_architecture, demo_checkpoints_dir, ensure_demo_checkpoint
from dropinf.models.demo import DEMO_PRESETS
from dropinf.models.training import full_arch_args
from dropinf.run import (
    RunStore,
    checkpoint_epoch,
    checkpoint_files,
    checkpoint_learning_rate,
    in_epoch_order,
)

PRESET = "memorising"
FOLDS = 5
SIGNALS = ("self_influence", "leave_one_out_loss", "loss")


def load_schedule(folder: Path) -> list[Any]:
    """The preset's checkpoints, in epoch order."""
    from dropinf.models import load_checkpoint

    return in_epoch_order([load_checkpoint(path) for path in checkpoint_files(folder)])


def fit_ensemble_run(checkpoints: list[Any], bundle: DatasetBundle, run_dir: Path) -> float:
    """Fit the ensemble run over ``checkpoints``; returns its wall-clock seconds."""
    infos = [
        CheckpointInfo(
            name=c.path.name,
            path=str(c.path),
            sha256=c.sha256,
            epoch=checkpoint_epoch(c),
            learning_rate=checkpoint_learning_rate(c),
        )
        for c in checkpoints
    ]
    engine = EnsembleEngine(
        [c.model for c in checkpoints],
        cross_entropy_per_sample,
        run_dir=run_dir,
        device="cpu",
        checkpoints=infos,
    )
    started = time.perf_counter()
    engine.fit(bundle.train, 256, data_fingerprint=bundle.fingerprint)
    return time.perf_counter() - started


def per_checkpoint_signals(run_dir: Path) -> tuple[dict[str, np.ndarray], list[float]]:
    """(C, n) self-influence, leave-one-out estimate and loss, and each checkpoint's seconds."""
    top = RunStore(run_dir)
    section = top.read_manifest()["ensemble"]
    stores = [RunStore(run_dir / "checkpoints" / c["run"]) for c in section["checkpoints"]]
    self_influence = np.stack([s.self_influence() for s in stores]).astype(np.float64)
    loss = np.stack([s.train_metadata()["loss"] for s in stores])
    seconds = [sum(s.read_manifest()["timings"].values()) for s in stores]
    signals = {
        "self_influence": self_influence,
        "leave_one_out_loss": loss + self_influence / self_influence.shape[1],
        "loss": loss,
    }
    return signals, seconds


def ensemble_table(
    signals: dict[str, np.ndarray], noisy: np.ndarray, members: slice
) -> dict[str, dict[str, float]]:
    """AUC of each combination of each signal over the checkpoints ``members``."""
    return {
        combination: {
            signal: roc_auc(combine_scores(values[members], combination), noisy)
            for signal, values in signals.items()
        }
        for combination in COMBINATIONS
    }


def self_confidence_cv(bundle: DatasetBundle, folds: int = FOLDS) -> tuple[float, float]:
    """Cleanlab-style self-confidence from ``folds``-fold cross-validated retrainings.

    Returns:
        The ROC AUC of ``1 - p(given label)`` for the flipped labels, and the seconds of the
        retrainings and held-out predictions.
    """
    recipe = DEMO_PRESETS[PRESET].recipe
    inputs, labels = bundle.train.inputs, bundle.train.labels
    order = np.random.default_rng(0).permutation(len(labels))
    confidence = np.zeros(len(labels))
    started = time.perf_counter()
    for fold in np.array_split(order, folds):
        held_out = np.zeros(len(labels), dtype=bool)
        held_out[fold] = True
        model = train_plain(recipe, bundle, inputs[~held_out], labels[~held_out])
        with torch.no_grad():
            probabilities = functional.softmax(model(inputs[held_out]), dim=1)
        given = labels[held_out]
        confidence[held_out] = probabilities[torch.arange(len(given)), given].numpy()
    seconds = time.perf_counter() - started
    return roc_auc(1.0 - confidence, bundle.noisy_mask), seconds


def train_plain(
    recipe: Any, bundle: DatasetBundle, inputs: torch.Tensor, labels: torch.Tensor
) -> torch.nn.Module:
    """The preset's recipe (AdamW, batch, epochs, seed) in a plain torch loop on a subset."""
    torch.manual_seed(recipe.seed)
    model = build_architecture(recipe.arch, full_arch_args(recipe, bundle))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    generator = torch.Generator().manual_seed(recipe.seed)
    model.train()
    for _ in range(recipe.epochs):
        for batch in torch.randperm(len(labels), generator=generator).split(recipe.batch_size):
            loss = functional.cross_entropy(model(inputs[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


def measure(later_from_epoch: int) -> dict[str, Any]:
    """Every figure of the section, as a JSON-ready dict."""
    torch.set_num_threads(1)
    ensure_demo_checkpoint(progress=False, preset=PRESET)
    bundle = load_data(DEMO_PRESETS[PRESET].data_spec)
    noisy = np.asarray(bundle.noisy_mask)
    checkpoints = load_schedule(demo_checkpoints_dir(PRESET))
    epochs = [checkpoint_epoch(c) for c in checkpoints]
    with tempfile.TemporaryDirectory(prefix="dropinf-ensemble-bench-") as folder:
        fit_seconds = fit_ensemble_run(checkpoints, bundle, Path(folder) / "run")
        signals, seconds = per_checkpoint_signals(Path(folder) / "run")
    later = slice(next(i for i, e in enumerate(epochs) if e >= later_from_epoch), None)
    cleanlab_auc, cleanlab_seconds = self_confidence_cv(bundle)
    return {
        "epochs": epochs,
        "flips": int(noisy.sum()),
        "n_train": int(noisy.size),
        "ensemble_fit_seconds": fit_seconds,
        "checkpoint_seconds": seconds,
        "all": ensemble_table(signals, noisy, slice(None)),
        "later_epochs": [e for e in epochs[later]],
        "later_seconds": float(sum(seconds[later])),
        "later": ensemble_table(signals, noisy, later),
        "per_checkpoint": {
            signal: [roc_auc(row, noisy) for row in values] for signal, values in signals.items()
        },
        "final_only": {signal: roc_auc(values[-1], noisy) for signal, values in signals.items()},
        "cleanlab_cv_auc": cleanlab_auc,
        "cleanlab_cv_seconds": cleanlab_seconds,
    }


def markdown(results: dict[str, Any]) -> str:
    """The RESULTS.md table of ``measure``'s figures."""
    rows = [
        "| ranking of the flips | self-influence | leave-one-out est. | loss | seconds |",
        "|---|---|---|---|---|",
    ]
    final = results["final_only"]
    rows.append(
        f"| final checkpoint alone (epoch {results['epochs'][-1]}) | "
        + " | ".join(f"{final[s]:.3f}" for s in SIGNALS)
        + f" | {results['checkpoint_seconds'][-1]:.1f} |"
    )
    for members, label, seconds in (
        ("all", f"all {len(results['epochs'])} checkpoints", results["ensemble_fit_seconds"]),
        ("later", f"epochs {results['later_epochs']}", results["later_seconds"]),
    ):
        for combination in COMBINATIONS:
            aucs = results[members][combination]
            rows.append(
                f"| {combination}, {label} | "
                + " | ".join(f"{aucs[s]:.3f}" for s in SIGNALS)
                + f" | {seconds:.1f} |"
            )
    rows.append(
        f"| cleanlab-style self-confidence, {FOLDS}-fold CV retraining | "
        f"{results['cleanlab_cv_auc']:.3f} | | | {results['cleanlab_cv_seconds']:.1f} |"
    )
    per = results["per_checkpoint"]
    rows.append("")
    rows.append("| epoch | " + " | ".join(str(e) for e in results["epochs"]) + " |")
    rows.append("|---" * (len(results["epochs"]) + 1) + "|")
    for signal in SIGNALS:
        rows.append(f"| {signal} AUC | " + " | ".join(f"{a:.3f}" for a in per[signal]) + " |")
    rows.append(
        "| seconds | " + " | ".join(f"{s:.1f}" for s in results["checkpoint_seconds"]) + " |"
    )
    return "\n".join(rows)


def main() -> None:
    """Measure, print the table and save the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also save the figures as JSON")
    parser.add_argument(
        "--later-from", type=int, default=16, help="first epoch of the 'later' ensemble"
    )
    args = parser.parse_args()
    results = measure(args.later_from)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
