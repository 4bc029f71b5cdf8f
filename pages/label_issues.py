"""Label issues: rank training examples by the mislabel score, review them, export, verify fixes."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import streamlit as st

from dropinf import dashboard as views
from dropinf import metrics as evaluate
from dropinf.cli import retrain_command
from dropinf.data import DatasetBundle
from dropinf.errors import DropinfError
from dropinf.review import (
    PRIMARY_SCORE,
    RETRAIN_JOB,
    RunReview,
    decided_flips,
    export_csv,
    export_json,
    load_retrain_report,
    suggested_label,
)
from pages import _cache as cache
from pages import _state as state
from pages import _widgets as ui

RETRAIN_SEEDS = 3
PROPONENTS_SHOWN = 8
QUEUE_CHOICES = 50
PICK_KEY = "queue_pick"


def detection_panel(review: RunReview, bundle: DatasetBundle) -> None:
    """Live detection quality against the known flipped labels (the demo only)."""
    if bundle.noisy_mask is None:
        return
    noisy = bundle.noisy_mask
    scores = review.scores()
    ranking = scores[PRIMARY_SCORE]
    with st.expander(
        f"Detection quality: {int(noisy.sum()):,} labels were flipped on purpose",
        expanded=True,
        icon=":material/target:",
    ):
        k = st.slider(
            "Inspect the top k of the queue",
            10,
            len(ranking),
            min(int(noisy.sum()), len(ranking)),
            10,
            key="detect_k",
        )
        cols = st.columns(4)
        cols[0].metric("ROC AUC", f"{evaluate.roc_auc(ranking, noisy):.3f}")
        cols[1].metric(f"Precision @ {k}", f"{evaluate.precision_at_k(ranking, noisy, k):.1%}")
        cols[2].metric(f"Recall @ {k}", f"{evaluate.recall_at_k(ranking, noisy, k):.1%}")
        cols[3].metric("Your decisions on flipped labels", reviewed_share(review, bundle))
        st.plotly_chart(
            views.detection_curve_figure(
                scores, noisy, title="Flipped labels found per share of the training set inspected"
            ),
            key="detection",
        )


def reviewed_share(review: RunReview, bundle: DatasetBundle) -> str:
    """How many of the decided examples were truly flipped, e.g. ``4 / 5``."""
    flipped, decided = decided_flips(review.decisions(), bundle.noisy_mask)
    return f"{flipped} / {decided}"


def choose_item(pending: pd.DataFrame, bundle: DatasetBundle) -> pd.Series:
    """The queue item to review: the most suspicious pending one unless another is picked.

    The choices are the first ``QUEUE_CHOICES`` of the queue, and the picked item when it is
    still pending further down (e.g. an item an undo brought back).
    """
    picked = (pending["train_index"] == st.session_state.get(PICK_KEY)).to_numpy()
    top = pending[(np.arange(len(pending)) < QUEUE_CHOICES) | picked]
    names = {
        int(r.train_index): f"{'⚑ ' if r.flagged else ''}rank {int(r.rank)} · "
        f"train #{int(r.train_index)} · given "
        f"{bundle.class_name(r.given_label)}, predicted "
        f"{bundle.class_name(r.predicted_label)}"
        for r in top.itertuples()
    }
    index = st.selectbox(
        f"Review ({len(pending):,} pending, most suspicious first)",
        list(names),
        format_func=names.get,
        key=PICK_KEY,
    )
    return top[top["train_index"] == index].iloc[0]


def item_card(
    review: RunReview, context: state.Context, bundle: DatasetBundle, item: pd.Series
) -> None:
    """One queue item: image, labels, suggestion, its strongest proponents and the actions."""
    index = int(item["train_index"])
    proponents = cache.proponents_table(review, context, index, PROPONENTS_SHOWN)
    suggested = suggested_label(
        item["given_label"], item["predicted_label"], proponents["given_label"].tolist()
    )
    left, right = st.columns([1, 3], gap="large")
    with left:
        st.image(ui.thumbnail(bundle, "train", index), width=160, caption=f"train #{index}")
        cols = st.columns(2)
        cols[0].metric("Given", bundle.class_name(int(item["given_label"])))
        cols[1].metric("Predicted", bundle.class_name(int(item["predicted_label"])))
        cols[0].metric("Suggested", bundle.class_name(suggested))
        cols[1].metric("Rank", f"{int(item['rank']):,}")
    with right:
        st.markdown(
            "**Its strongest proponents** (training examples whose up-weighting helps "
            "its given label most)"
        )
        suspects = review.suspects()
        captions = [ui.train_caption(bundle, row, suspects) for row in proponents.itertuples()]
        ui.gallery(
            bundle, "train", proponents["train_index"].tolist(), captions, columns=PROPONENTS_SHOWN
        )
        actions(review, bundle, index, suggested)


def undo(review: RunReview) -> None:
    """Undo the last decision batch and go back to its first example (a button callback)."""
    indices = review.undo()
    if indices:
        st.session_state[PICK_KEY] = indices[0]


def actions(review: RunReview, bundle: DatasetBundle, index: int, suggested: int) -> None:
    """Keep / relabel / remove buttons with keyboard shortcuts (K, L, X) and undo."""
    classes = list(range(bundle.num_classes))
    new_label = st.selectbox(
        "Relabel as",
        classes,
        index=classes.index(suggested),
        format_func=bundle.class_name,
        key=f"new_{index}",
    )
    cols = st.columns([1, 1, 1, 1])
    cols[0].button(
        "Keep",
        key="keep",
        shortcut="K",
        icon=":material/check:",
        width="stretch",
        on_click=review.decide,
        args=([index], "keep"),
    )
    cols[1].button(
        "Relabel",
        key="relabel",
        shortcut="L",
        icon=":material/edit:",
        type="primary",
        width="stretch",
        on_click=review.decide,
        args=([index], "relabel", int(new_label)),
    )
    cols[2].button(
        "Remove",
        key="remove",
        shortcut="X",
        icon=":material/delete:",
        width="stretch",
        on_click=review.decide,
        args=([index], "remove"),
    )
    cols[3].button(
        "Undo",
        key="undo",
        shortcut="U",
        icon=":material/undo:",
        width="stretch",
        on_click=undo,
        args=(review,),
        disabled=not review.can_undo(),
    )
    st.caption("Keyboard: **K** keep · **L** relabel · **X** remove · **U** undo")


def export_panel(review: RunReview, bundle: DatasetBundle) -> None:
    """The decisions and flags so far, and their CSV / JSON downloads."""
    decisions, flags = review.decisions(), review.flags()
    st.subheader(f"Decisions ({len(decisions):,})")
    if flags:
        st.caption(f"{len(flags):,} examples flagged for review (they lead the queue).")
    if not decisions and not flags:
        st.caption("No decisions yet.")
        return
    meta = review.metadata
    csv = export_csv(
        decisions,
        meta["label"],
        bundle.class_names,
        meta["prediction"],
        review.self_influence,
        flags=flags,
    )
    st.dataframe(pd.read_csv(io.BytesIO(csv)), hide_index=True, height=180)
    cols = st.columns([1, 1, 4])
    cols[0].download_button(
        "Export CSV", csv, "decisions.csv", "text/csv", key="export_csv", icon=":material/download:"
    )
    cols[1].download_button(
        "Export JSON",
        export_json(decisions, flags),
        "decisions.json",
        "application/json",
        key="export_json",
        icon=":material/download:",
    )


def report_panel(report: dict) -> None:
    """Test accuracy before vs after the fixes: mean ± std over seeds."""
    summary = report["summary"]
    before, after = summary["before_accuracy"], summary["after_accuracy"]
    cols = st.columns(3)
    cols[0].metric("Test accuracy before", f"{before['mean']:.2%} ± {before['std']:.2%}")
    cols[1].metric(
        "Test accuracy after",
        f"{after['mean']:.2%} ± {after['std']:.2%}",
        delta=f"{after['mean'] - before['mean']:+.2%}",
    )
    cols[2].metric("Removed / relabelled", f"{report['n_removed']} / {report['n_relabeled']}")
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
        working = f"Retraining before and after your fixes ({RETRAIN_SEEDS} seeds)"
        ui.job_panel(run_dir, working, name=RETRAIN_JOB)
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
    if st.button(
        f"Retrain with the decisions ({RETRAIN_SEEDS} seeds)",
        key="retrain",
        icon=":material/model_training:",
        disabled=not review.decisions(),
    ):
        command = retrain_command(context.checkpoint, context.data_spec, run_dir, RETRAIN_SEEDS)
        try:
            cache.job_runner().start(command, run_dir, name=RETRAIN_JOB, force=True)
        except DropinfError as error:
            ui.show_error(error)
            return
        st.rerun()


def main() -> None:
    """The page: detection quality, the review queue, export and verification."""
    st.title("Label issues")
    if (store := ui.require_complete_run()) is None or (context := ui.require_context()) is None:
        return
    try:
        _, bundle = cache.load_context(context)
        review = cache.run_review(store, bundle)
        pending = review.queue()
    except DropinfError as error:
        ui.show_error(error)
        return
    detection_panel(review, bundle)
    st.subheader("Review queue")
    if pending.empty:
        st.success("Every training example has a decision.")
    else:
        item_card(review, context, bundle, choose_item(pending, bundle))
    export_panel(review, bundle)
    verify_panel(context, review)


main()
