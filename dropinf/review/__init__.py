"""Reviewing a run: ranking, decisions, flags, exports and ``RunReview``.

Reviewing a run: the one ranking of what to review first, decisions (keep / relabel /
remove) and flags with their history, exports, and ``RunReview`` used by pages and CLI alike.

May import ``dropinf.run``, ``dropinf.models``, ``dropinf.data``, ``dropinf.metrics`` and
``dropinf.core``; never the dashboard.
"""

from __future__ import annotations

from dropinf.review.decisions import (
    RETRAIN_JOB,
    Decision,
    decide,
    decided_flips,
    decisions_path,
    export_csv,
    export_json,
    fixes_from_decisions,
    load_decisions,
    load_flags,
    load_retrain_report,
    mislabel_scores,
    parse_decisions,
    parse_flags,
    retrain_command,
    retrain_report_path,
    review_queue,
    review_status,
    save_decisions,
    suggested_label,
    suspect_mask,
    suspicion,
    update_decisions,
    update_flags,
)

__all__ = [
    "RETRAIN_JOB",
    "Decision",
    "decide",
    "decided_flips",
    "decisions_path",
    "export_csv",
    "export_json",
    "fixes_from_decisions",
    "load_decisions",
    "load_flags",
    "load_retrain_report",
    "mislabel_scores",
    "parse_decisions",
    "parse_flags",
    "retrain_command",
    "retrain_report_path",
    "review_queue",
    "review_status",
    "save_decisions",
    "suggested_label",
    "suspect_mask",
    "suspicion",
    "update_decisions",
    "update_flags",
]
