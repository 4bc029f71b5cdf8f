"""Label issues: rank training examples by the mislabel score, review them, export, verify fixes."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import streamlit as st

from dropinf import dashboard as views
from dropinf import metrics as evaluate
from dropinf import review
from dropinf.data import DatasetBundle
from dropinf.errors import DropinfError
from dropinf.run import RunStore
from pages import _shared as ui

RETRAIN_SEEDS = 3
PROPONENTS_SHOWN = 8
QUEUE_CHOICES = 50


def detection_panel(store: RunStore, bundle: DatasetBundle) -> None:
    """Live detection quality against the known flipped labels (the demo only)."""
    if bundle.noisy_mask is None:
        return
    noisy = bundle.noisy_mask
    scores = ui.mislabel_scores(store)
    ranking = next(iter(scores.values()))
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
        cols[3].metric("Your decisions on flipped labels", reviewed_share(store, bundle))
        st.plotly_chart(
            views.detection_curve_figure(
                scores, noisy, title="Flipped labels found per share of the training set inspected"
            ),
            key="detection",
        )


def reviewed_share(store: RunStore, bundle: DatasetBundle) -> str:
    """How many of the decided examples were truly flipped, e.g. ``4 / 5``."""
    flipped, decided = review.decided_flips(ui.load_decisions(store.run_dir), bundle.noisy_mask)
    return f"{flipped} / {decided}"


def choose_item(pending: pd.DataFrame, bundle: DatasetBundle) -> pd.Series:
    """The queue item to review: the most suspicious pending one unless another is picked."""
    top = pending.head(QUEUE_CHOICES)
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
        key="queue_pick",
    )
    return top[top["train_index"] == index].iloc[0]


def item_card(store: RunStore, context: ui.Context, bundle: DatasetBundle, item: pd.Series) -> None:
    """One queue item: image, labels, suggestion, its strongest proponents and the actions."""
    index = int(item["train_index"])
    proponents = ui.proponents_table(store, context, index, PROPONENTS_SHOWN)
    suggested = review.suggested_label(
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
        suspects = ui.suspect_mask(store)
        captions = [ui.train_caption(bundle, row, suspects) for row in proponents.itertuples()]
        ui.gallery(
            bundle, "train", proponents["train_index"].tolist(), captions, columns=PROPONENTS_SHOWN
        )
        actions(store.run_dir, bundle, index, suggested)


def actions(run_dir: Path, bundle: DatasetBundle, index: int, suggested: int) -> None:
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
        on_click=ui.decide,
        args=(run_dir, [index], "keep"),
    )
    cols[1].button(
        "Relabel",
        key="relabel",
        shortcut="L",
        icon=":material/edit:",
        type="primary",
        width="stretch",
        on_click=ui.decide,
        args=(run_dir, [index], "relabel", int(new_label)),
    )
    cols[2].button(
        "Remove",
        key="remove",
        shortcut="X",
        icon=":material/delete:",
        width="stretch",
        on_click=ui.decide,
        args=(run_dir, [index], "remove"),
    )
    cols[3].button(
        "Undo",
        key="undo",
        shortcut="U",
        icon=":material/undo:",
        width="stretch",
        on_click=ui.undo_last_decision,
        args=(run_dir,),
        disabled="last_decision" not in st.session_state,
    )
    st.caption("Keyboard: **K** keep · **L** relabel · **X** remove · **U** undo")


def export_panel(store: RunStore, bundle: DatasetBundle) -> None:
    """The decisions and flags so far, and their CSV / JSON downloads."""
    decisions, flags = ui.load_decisions(store.run_dir), ui.load_flags(store.run_dir)
    st.subheader(f"Decisions ({len(decisions):,})")
    if flags:
        st.caption(f"{len(flags):,} examples flagged for review (they lead the queue).")
    if not decisions and not flags:
        st.caption("No decisions yet.")
        return
    meta = store.train_metadata()
    csv = review.export_csv(
        decisions,
        meta["label"],
        bundle.class_names,
        meta["prediction"],
        store.self_influence(),
        flags=flags,
    )
    st.dataframe(pd.read_csv(io.BytesIO(csv)), hide_index=True, height=180)
    cols = st.columns([1, 1, 4])
    cols[0].download_button(
        "Export CSV", csv, "decisions.csv", "text/csv", key="export_csv", icon=":material/download:"
    )
    cols[1].download_button(
        "Export JSON",
        review.export_json(decisions, flags),
        "decisions.json",
        "application/json",
        key="export_json",
        icon=":material/download:",
    )


@st.fragment(run_every=1.0)
def retrain_progress(run_dir: Path) -> None:
    """Polls the retrain job; reruns the page once it has finished."""
    if ui.job_runner().status(run_dir, review.RETRAIN_JOB).is_active:
        st.progress(0.5, text=f"Retraining before and after your fixes ({RETRAIN_SEEDS} seeds)…")
    else:
        st.rerun()


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


def verify_panel(context: ui.Context, run_dir: Path) -> None:
    """Retrain with the decisions applied and compare test accuracy before / after."""
    st.subheader("Verify the fixes")
    status = ui.job_runner().status(run_dir, review.RETRAIN_JOB)
    if status.is_active:
        retrain_progress(run_dir)
        return
    if status.state == "failed":
        st.error(f"Retraining failed: {status.error}")
    try:
        report = review.load_retrain_report(run_dir)
    except DropinfError as error:
        ui.show_error(error)
        report = None
    if report is not None:
        report_panel(report)
    if st.button(
        f"Retrain with the decisions ({RETRAIN_SEEDS} seeds)",
        key="retrain",
        icon=":material/model_training:",
        disabled=not ui.load_decisions(run_dir),
    ):
        command = review.retrain_command(
            context.checkpoint, context.data_spec, run_dir, RETRAIN_SEEDS
        )
        try:
            ui.job_runner().start(command, run_dir, name=review.RETRAIN_JOB, force=True)
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
        _, bundle = ui.load_context(context)
        pending = ui.pending_queue(store, bundle)
    except DropinfError as error:
        ui.show_error(error)
        return
    detection_panel(store, bundle)
    st.subheader("Review queue")
    if pending.empty:
        st.success("Every training example has a decision.")
    else:
        item_card(store, context, bundle, choose_item(pending, bundle))
    export_panel(store, bundle)
    verify_panel(context, store.run_dir)


main()
