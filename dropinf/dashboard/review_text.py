"""What the review pages say in words: metric cells, the AUC gap, run names, comparisons.

Each function turns numbers (a retraining report, detection scores, a run row, a comparison)
into the label / value pairs and sentences a page shows, so the pages only place them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dropinf.metrics import roc_auc


def retrain_cells(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Label / value pairs of a retraining report (``FixReport.to_dict()``), in display order.

    Before and after as mean ± std over seeds, the paired change with its 95 % half-width when
    there is one, the test-set size when known and the removed / relabelled counts.
    """
    summary = report["summary"]
    before, after = summary["before_accuracy"], summary["after_accuracy"]
    change = summary.get("accuracy_change") or {}
    cells = [
        ("Test accuracy before", f"{before['mean']:.2%} ± {before['std']:.2%}"),
        ("Test accuracy after", f"{after['mean']:.2%} ± {after['std']:.2%}"),
    ]
    if change.get("half_width") is not None:
        cells.append(
            (
                "Paired change (95 % interval)",
                f"{change['mean']:+.2f} ± {change['half_width']:.2f} points",
            )
        )
    if report.get("n_test"):
        cells.append(("Test examples", f"{int(report['n_test']):,}"))
    cells.append(("Removed / relabelled", f"{report['n_removed']} / {report['n_relabeled']}"))
    return cells


def score_aucs(scores: Mapping[str, np.ndarray], noisy_mask: np.ndarray) -> dict[str, float]:
    """ROC AUC of each suspicion score as a detector of the flipped labels."""
    return {name: roc_auc(values, noisy_mask) for name, values in scores.items()}


def auc_gap_sentence(ours: float, loss: float) -> str:
    """One sentence comparing the queue's score with the plain training loss.

    Args:
        ours: ROC AUC of the mislabel score (the queue's order).
        loss: ROC AUC of the training loss.

    Returns:
        The gap and what it means for the analyst.
    """
    gap = ours - loss
    if abs(gap) < 0.005:
        verdict = "here the training loss alone finds the flipped labels as well"
    elif gap > 0:
        verdict = "influence finds flipped labels the loss misses (the model fitted them)"
    else:
        verdict = "the training loss alone ranks the flipped labels better here"
    return (
        f"Mislabel score AUC {ours:.3f} vs training loss {loss:.3f}: a gap of {gap:+.3f}; "
        f"{verdict}."
    )


def run_name(row: Mapping[str, Any]) -> str:
    """A run as the compare picker names it: compressor, keep ratio, k and key."""
    method = row.get("method") or "?"
    keep = row.get("keep_ratio")
    keep_text = f" keep {keep:g}" if isinstance(keep, int | float) else ""
    k = row.get("k")
    k_text = f" · k {k:,}" if isinstance(k, int) else ""
    return f"{method}{keep_text}{k_text} · {row['key'][:24]}"


def comparison_cells(comparison: Any) -> list[tuple[str, str]]:
    """Label / value pairs of a run comparison (``review.RunComparison``), in display order."""
    return [
        (f"Top-{comparison.k} suspects shared", f"{comparison.shared} ({comparison.overlap:.0%})"),
        ("Self-influence Spearman", f"{comparison.self_influence_spearman:.3f}"),
        ("Mislabel score Spearman", f"{comparison.score_spearman:.3f}"),
    ]
