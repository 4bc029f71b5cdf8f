"""Quality measures on arrays: mislabel detection and fidelity.

``detection`` scores a suspicion score as a detector of flipped labels (ROC AUC, inspection
order, precision / recall at k, recall at a share); ``fidelity`` compares approximate scores
with reference scores (per-row Pearson / Spearman, top-k overlap). Pure numpy: imports nothing
of dropinf but ``dropinf.errors``. The LDS, which retrains models, lives in ``bench.lds``.
"""

from __future__ import annotations

from dropinf.metrics.detection import (
    DEFAULT_KS,
    DEFAULT_SHARES,
    DetectionReport,
    average_ranks,
    detection_report,
    inspection_order,
    precision_at_k,
    recall_at_k,
    recall_at_share,
    roc_auc,
)
from dropinf.metrics.fidelity import (
    FidelityReport,
    fidelity,
    rowwise_pearson,
    rowwise_spearman,
    top_overlap,
)

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_SHARES",
    "DetectionReport",
    "FidelityReport",
    "average_ranks",
    "detection_report",
    "fidelity",
    "inspection_order",
    "precision_at_k",
    "recall_at_k",
    "recall_at_share",
    "roc_auc",
    "rowwise_pearson",
    "rowwise_spearman",
    "top_overlap",
]
