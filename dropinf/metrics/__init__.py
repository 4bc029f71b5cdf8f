"""Quality measures on arrays: mislabel detection and fidelity.

Quality measures on arrays: mislabel detection (AUC, precision / recall at k) and
fidelity to a reference (rank correlations, top-k overlap). Pure numpy; imports nothing of
dropinf but ``dropinf.errors``.
"""

from __future__ import annotations

from dropinf.metrics.evaluate import (
    SubsetOutputs,
    average_ranks,
    classification_margins,
    detection_report,
    fidelity,
    inspection_order,
    lds_subset_outputs,
    linear_datamodeling_score,
    model_outputs,
    precision_at_k,
    predicted_subset_effects,
    recall_at_k,
    recall_at_share,
    retrain_subset_outputs,
    roc_auc,
    rowwise_pearson,
    rowwise_spearman,
    sample_subsets,
    subset_cache_key,
    top_overlap,
)

__all__ = [
    "SubsetOutputs",
    "average_ranks",
    "classification_margins",
    "detection_report",
    "fidelity",
    "inspection_order",
    "lds_subset_outputs",
    "linear_datamodeling_score",
    "model_outputs",
    "precision_at_k",
    "predicted_subset_effects",
    "recall_at_k",
    "recall_at_share",
    "retrain_subset_outputs",
    "roc_auc",
    "rowwise_pearson",
    "rowwise_spearman",
    "sample_subsets",
    "subset_cache_key",
    "top_overlap",
]
