"""Reviewing a run: ranking, decisions, flags, exports and ``RunReview``.

``ranking`` is the one definition of what to review first (the mislabel score, the queue, the
suspect marks); ``decisions`` is what a decision is and its JSON form; ``decisions_file`` reads and
writes ``RUN_DIR/decisions.json`` (atomic writes, a lock, the undo history); ``export`` writes CSV
and JSON (decisions, the ranked suspects); ``grid`` is the review grid, its filters and the flip
matrix counts; ``cleaned`` writes a cleaned dataset (.npz, relabel manifest, folder copy);
``retrain`` names the job verifying the fixes and reads its report; ``run_review`` holds
``RunReview``, the object pages and the CLI review a run through; ``suggest`` proposes a label
from an example's influence neighbourhood; ``card`` picks what the review card offers;
``compare`` measures how far two runs of the same data agree. May import ``dropinf.run``,
``dropinf.models``, ``dropinf.data``, ``dropinf.metrics``, ``dropinf.core``, ``dropinf.errors`` and
``dropinf.paths``; never the engine, the dashboard, the CLI or streamlit.
"""

from __future__ import annotations

from dropinf.review.card import card_choices, item_caption, item_name
from dropinf.review.cleaned import (
    cleaned_bundle,
    cleaned_npz_bytes,
    copy_cleaned_folder,
    relabel_manifest,
)
from dropinf.review.compare import (
    RunComparison,
    check_comparable,
    compare_runs,
    proponent_overlap,
    suspect_ranks,
)
from dropinf.review.decisions import (
    UNDECIDED,
    Decision,
    DecisionBatch,
    decide,
    decided_flips,
    fixes_from_decisions,
    parse_decisions,
    parse_flags,
    parse_history,
    review_status,
)
from dropinf.review.decisions_file import (
    decisions_path,
    load_decisions,
    load_flags,
    record_decisions,
    save_decisions,
    undo_decisions,
    update_decisions,
    update_flags,
)
from dropinf.review.export import export_csv, export_json, suspects_csv
from dropinf.review.grid import QueueFilter, class_suspect_counts, filter_queue, flip_counts
from dropinf.review.ranking import (
    PRIMARY_SCORE,
    leave_one_out_loss,
    mislabel_scores,
    review_queue,
    suspect_mask,
    suspicion,
)
from dropinf.review.retrain import (
    RETRAIN_JOB,
    load_retrain_report,
    retrain_report_path,
)
from dropinf.review.run_review import RunReview
from dropinf.review.suggest import NEIGHBOURS, suggest_labels

__all__ = [
    "NEIGHBOURS",
    "PRIMARY_SCORE",
    "RETRAIN_JOB",
    "UNDECIDED",
    "Decision",
    "DecisionBatch",
    "QueueFilter",
    "RunComparison",
    "RunReview",
    "card_choices",
    "check_comparable",
    "class_suspect_counts",
    "cleaned_bundle",
    "cleaned_npz_bytes",
    "compare_runs",
    "copy_cleaned_folder",
    "decide",
    "decided_flips",
    "decisions_path",
    "export_csv",
    "export_json",
    "filter_queue",
    "fixes_from_decisions",
    "flip_counts",
    "item_caption",
    "item_name",
    "leave_one_out_loss",
    "load_decisions",
    "load_flags",
    "load_retrain_report",
    "mislabel_scores",
    "parse_decisions",
    "parse_flags",
    "parse_history",
    "proponent_overlap",
    "record_decisions",
    "relabel_manifest",
    "retrain_report_path",
    "review_queue",
    "review_status",
    "save_decisions",
    "suggest_labels",
    "suspect_mask",
    "suspect_ranks",
    "suspects_csv",
    "suspicion",
    "undo_decisions",
    "update_decisions",
    "update_flags",
]
