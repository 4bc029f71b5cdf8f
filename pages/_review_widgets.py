"""The Label-issues panels around the review card: filters, flip matrix, exports, verdict.

Filters over the queue, the flip matrix, detection quality (with the AUC gap against the
training loss), the decision exports, the cleaned dataset and the retrain verdict. Each function
draws one panel from a ``RunReview`` and the dataset; numbers, figures and sentences come from
``dropinf.review`` and ``dropinf.dashboard``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from functools import partial

import numpy as np
import pandas as pd
import streamlit as st

from dropinf import dashboard as views
from dropinf import metrics as evaluate
from dropinf import paths
from dropinf.cli import retrain_command
from dropinf.data import DatasetBundle
from dropinf.errors import DropinfError
from dropinf.review import (
    PRIMARY_SCORE,
    RETRAIN_JOB,
    QueueFilter,
    RunReview,
    class_suspect_counts,
    cleaned_npz_bytes,
    copy_cleaned_folder,
    decided_flips,
    export_csv,
    export_json,
    load_retrain_report,
    relabel_manifest,
)
from pages import _cache as cache
from pages import _state as state
from pages import _widgets as ui

PICK_KEY = "queue_pick"
JUMPED_KEY = "jumped_to"
FLIP_KEY = "flip_matrix"
FILTERS = [("Given", "filter_given"), ("Predicted", "filter_predicted"),
           ("Suggested", "filter_suggested")]  # fmt: skip
FINAL_ALONE = "final checkpoint alone"  # RunReview.scores() of a run over several checkpoints
RETRAIN_SEEDS = 3
MIN_RETRAIN_SEEDS = 2  # the fewest with a spread, hence an interval
MAX_RETRAIN_SEEDS = 10


def grid_filter(bundle: DatasetBundle) -> QueueFilter:
    """Filters over the queue: given / predicted / suggested class and a score threshold."""
    classes = list(range(bundle.num_classes))
    cols = st.columns([1, 1, 1, 1])
    chosen = [
        column.multiselect(name, classes, format_func=bundle.class_name, key=key, placeholder="any")
        for column, (name, key) in zip(cols, FILTERS, strict=False)
    ]
    min_score = cols[3].number_input("Score at least", value=None, key="filter_score")
    return QueueFilter(*chosen, min_score=min_score)


def clear_filters() -> None:
    """Show the whole queue again (a button callback)."""
    st.session_state.update(filter_given=[], filter_predicted=[], filter_suggested=[])
    st.session_state["filter_score"] = None


def filter_to_confusion(given: int, suggested: int) -> None:
    """Filter the queue to one confusion, given → suggested (what a flip-matrix click does)."""
    st.session_state.update(filter_given=[given], filter_predicted=[], filter_suggested=[suggested])
    st.session_state.pop(PICK_KEY, None)


def on_flip_click(counts: np.ndarray) -> None:
    """Turn a click on the flip matrix into a queue filter (the chart's callback).

    The clicked marker is read by its position among the non-empty cells (the figure's marker
    order): a browser sends the marker's integer ``customdata`` row back as a mapping, which
    ``clicked_confusion`` does not read.

    Args:
        counts: The (C, C) given → suggested counts the chart shows.
    """
    points = st.session_state[FLIP_KEY]["selection"]["points"]
    markers = [point["point_index"] for point in points if point.get("curve_number") == 1]
    if markers:
        filter_to_confusion(*(int(i) for i in np.argwhere(counts)[markers[0]]))


def flip_panel(review: RunReview, bundle: DatasetBundle, suggestions: Mapping[int, int]) -> None:
    """The flip matrix of the top suspects (click a cell to filter) and per-class counts."""
    n_train = len(bundle.train)
    top_k = st.slider("Suspects counted (top of the queue)", 10, n_train, min(100, n_train), 10,
                      key="flip_k")  # fmt: skip
    counts = review.flip_counts(bundle.num_classes, top_k, suggestions)
    matrix, per_class = st.columns([3, 2])
    matrix.plotly_chart(
        views.flip_matrix_figure(counts, bundle.class_names, "Given → suggested (click a cell)"),
        key=FLIP_KEY, on_select=partial(on_flip_click, counts), selection_mode="points",
    )  # fmt: skip
    per_class.dataframe(
        class_suspect_counts(counts, bundle.class_names), hide_index=True, key="class_counts"
    )


def detection_panel(review: RunReview, bundle: DatasetBundle) -> None:
    """Live detection quality against the known flipped labels (the demos only)."""
    if bundle.noisy_mask is None:
        return
    noisy, scores = bundle.noisy_mask, review.scores()
    aucs = views.score_aucs(scores, noisy)
    gap = views.auc_gap_sentence(aucs[PRIMARY_SCORE], aucs["training loss"])
    if FINAL_ALONE in aucs:
        gap += (f" The ensemble of the training trajectory: AUC {aucs[PRIMARY_SCORE]:.3f}; the "
                f"final checkpoint alone: {aucs[FINAL_ALONE]:.3f}.")  # fmt: skip
    st.caption(f":material/target: {gap}")
    with st.expander(
        f"Detection quality: {int(noisy.sum()):,} labels were flipped on purpose",
        expanded=False,
        icon=":material/target:",
    ):
        ranking = scores[PRIMARY_SCORE]
        k = st.slider("Inspect the top k of the queue", 10, len(ranking),
                      min(int(noisy.sum()), len(ranking)), 10, key="detect_k")  # fmt: skip
        final = aucs.get(FINAL_ALONE)
        cols = st.columns(4 if final is None else 5)
        cols[0].metric(
            "ROC AUC",
            f"{aucs[PRIMARY_SCORE]:.3f}",
            help="Of the queue's score: for a training trajectory, the ensemble's.",
        )
        cols[1].metric("Training-loss AUC", f"{aucs['training loss']:.3f}")
        cols[2].metric(f"Precision @ {k}", f"{evaluate.precision_at_k(ranking, noisy, k):.1%}")
        cols[3].metric(f"Recall @ {k}", f"{evaluate.recall_at_k(ranking, noisy, k):.1%}")
        if final is not None:
            cols[4].metric("Final checkpoint alone AUC", f"{final:.3f}",
                           delta=f"{aucs[PRIMARY_SCORE] - final:+.3f} by the ensemble",
                           delta_color="off")  # fmt: skip
        st.plotly_chart(
            views.detection_curve_figure(
                scores, noisy, title="Flipped labels found per share of the training set inspected"
            ),
            key="detection",
        )


def trajectory_panel(review: RunReview, bundle: DatasetBundle, index: int, key: str) -> None:
    """When in training an example was learned: its score and prediction per checkpoint.

    Drawn for a run over several checkpoints only.

    Args:
        review: The run under review.
        bundle: The dataset.
        index: The training example.
        key: Widget-key prefix, unique on the page.
    """
    table = review.trajectory(index)
    if table is None:
        return
    given = int(review.metadata["label"][index])
    st.markdown("**When in training it was learned**")
    st.caption(views.learned_sentence(table, bundle.class_name, given))
    figure = views.trajectory_figure(table, bundle.class_name)
    st.plotly_chart(figure, key=f"{key}_{index}", config={"displayModeBar": False})


def export_panel(review: RunReview, bundle: DatasetBundle) -> None:
    """The decisions and flags so far, and their CSV / JSON downloads."""
    decisions, flags = review.decisions(), review.flags()
    st.subheader(f"Decisions ({len(decisions):,})")
    notes = [f"{len(flags):,} examples flagged for review (they lead the queue)."] if flags else []
    if decisions and bundle.noisy_mask is not None:
        flipped, decided = decided_flips(decisions, bundle.noisy_mask)
        notes.append(f"{flipped} of your {decided} decisions are on labels flipped on purpose.")
    if notes:
        st.caption(" ".join(notes))
    if not decisions and not flags:
        st.caption("No decisions yet.")
        return
    meta = review.metadata
    csv = export_csv(decisions, meta["label"], bundle.class_names, meta["prediction"],
                     review.self_influence, flags=flags)  # fmt: skip
    st.dataframe(pd.read_csv(io.BytesIO(csv)), hide_index=True, height=180)
    cols = st.columns([1, 1, 4])
    cols[0].download_button(
        "Export CSV", csv, "decisions.csv", "text/csv", key="export_csv", icon=":material/download:"
    )
    cols[1].download_button(
        "Export JSON", export_json(decisions, flags), "decisions.json", "application/json",
        key="export_json", icon=":material/download:",
    )  # fmt: skip


def cleaned_panel(review: RunReview, bundle: DatasetBundle) -> None:
    """Downloads of the cleaned dataset: an .npz, and for image folders a manifest and a copy.

    The files are made when a button is clicked, from the decisions stored then (the card
    decides without rerunning this panel).
    """
    st.subheader("Cleaned dataset")
    st.caption(
        "Relabels applied, removed rows dropped, the test split kept; "
        "`python -m dropinf train --data cleaned.npz` reads it."
    )
    if not st.toggle("Prepare the cleaned dataset", key="export_cleaned"):
        return
    cols = st.columns([1, 1, 2])
    cols[0].download_button(
        "Download cleaned .npz", lambda: cleaned_npz_bytes(bundle, review.decisions()),
        "cleaned.npz", "application/octet-stream", key="export_npz", icon=":material/download:",
    )  # fmt: skip
    if bundle.train_ids is None:
        return
    cols[1].download_button(
        "Download manifest CSV", lambda: relabel_manifest(bundle, review.decisions()),
        "manifest.csv", "text/csv", key="export_manifest", icon=":material/download:",
    )  # fmt: skip
    if cols[2].button("Write a copy of the folder, files in their new class folders",
                      key="export_folder", icon=":material/folder_copy:"):  # fmt: skip
        write_folder_copy(bundle, review.decisions())


def write_folder_copy(bundle: DatasetBundle, decisions: dict) -> None:
    """Copy the image folder under dropinf's exports folder, or show why it cannot be."""
    try:
        target = copy_cleaned_folder(bundle, decisions, paths.uploads_dir() / "exports")
    except DropinfError as error:
        ui.show_error(error)
        return
    st.success(f"Written to `{target}` (your folder is unchanged).")


def report_panel(report: dict) -> None:
    """Test accuracy before vs after the fixes: the paired change with its interval, and why."""
    cells = views.retrain_cells(report)
    for column, (label, value) in zip(st.columns(len(cells)), cells, strict=True):
        column.metric(label, value)
    if report.get("verdict"):
        st.info(report["verdict"], icon=":material/balance:")
    st.plotly_chart(
        views.before_after_figure(report["before_accuracy"], report["after_accuracy"]),
        key="before_after",
    )


def verify_panel(context: state.Context, review: RunReview) -> None:
    """Retrain with the decisions applied and compare test accuracy before / after."""
    st.subheader("Verify the fixes")
    run_dir = review.run_dir
    status = cache.job_runner().status(run_dir, RETRAIN_JOB)
    if status.is_active:
        ui.job_panel(run_dir, "Retraining before and after your fixes", name=RETRAIN_JOB)
        return
    if status.state == "failed":
        st.error(f"Retraining failed: {status.error}")
    try:
        report = load_retrain_report(run_dir)
    except DropinfError as error:
        ui.show_error(error)
        report = None
    if report is not None:
        report_panel(report)
    seeds_column, button_column = st.columns([1, 3], vertical_alignment="bottom")
    seeds = seeds_column.number_input(
        "Seeds (paired)", MIN_RETRAIN_SEEDS, MAX_RETRAIN_SEEDS, RETRAIN_SEEDS, key="retrain_seeds",
        help="Each seed trains once before and once after the fixes; the before runs are cached.",
    )  # fmt: skip
    if button_column.button(f"Retrain with the decisions ({seeds} seeds)", key="retrain",
                            icon=":material/model_training:"):  # fmt: skip
        start_retrain(context, review, int(seeds))


def start_retrain(context: state.Context, review: RunReview, seeds: int) -> None:
    """Start the retrain job with the run's decisions, or say why not."""
    if not review.decisions():
        st.warning("Decide on at least one example first: there is nothing to verify yet.")
        return
    command = retrain_command(context.checkpoint, context.data_spec, review.run_dir, seeds)
    try:
        cache.job_runner().start(command, review.run_dir, name=RETRAIN_JOB, force=True)
    except DropinfError as error:
        ui.show_error(error)
        return
    st.rerun()
