"""Label issues: rank training examples by the mislabel score, review them, export, verify fixes."""

from __future__ import annotations

import hashlib
import io
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
    UNDECIDED,
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
    suggested_label,
)
from pages import _cache as cache
from pages import _state as state
from pages import _widgets as ui

RETRAIN_SEEDS = 3
PROPONENTS_SHOWN = 8
QUEUE_CHOICES = 50
PICK_KEY = "queue_pick"
JUMP_KEY = "jump_to"
JUMPED_KEY = "jumped_to"
FLIP_KEY = "flip_matrix"
FILTERS = [("Given", "filter_given"), ("Predicted", "filter_predicted"),
           ("Suggested", "filter_suggested")]  # fmt: skip
GRID_HEIGHT = 300
GRID_COLUMNS = ["rank", "train_index", "path", "given_class", "predicted_class",
                "suggested_class", "suspicion", "flagged", "decision"]  # fmt: skip
GRID_CONFIG = {
    "train_index": st.column_config.NumberColumn("index", format="%d"),
    "given_class": "given", "predicted_class": "predicted", "suggested_class": "suggested",
    "suspicion": st.column_config.NumberColumn("score", format="%.3f"),
}  # fmt: skip


def detection_panel(review: RunReview, bundle: DatasetBundle) -> None:
    """Live detection quality against the known flipped labels (the demo only)."""
    if bundle.noisy_mask is None:
        return
    noisy = bundle.noisy_mask
    scores = review.scores()
    ranking = scores[PRIMARY_SCORE]
    with st.expander(
        f"Detection quality: {int(noisy.sum()):,} labels were flipped on purpose",
        expanded=False,
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


def filter_to_confusion(given: int, suggested: int) -> None:
    """Filter the queue to one confusion, given → suggested (what a flip-matrix click does)."""
    st.session_state.update(filter_given=[given], filter_predicted=[], filter_suggested=[suggested])
    st.session_state.pop(PICK_KEY, None)


def clear_filters() -> None:
    """Show the whole queue again (a button callback)."""
    st.session_state.update(filter_given=[], filter_predicted=[], filter_suggested=[])
    st.session_state["filter_score"] = None


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


def jump() -> None:
    """Open the training index typed in the jump box on the card (its callback)."""
    index = st.session_state.get(JUMP_KEY)
    if index is not None:
        st.session_state[PICK_KEY] = st.session_state[JUMPED_KEY] = int(index)


def choose_item(shown: pd.DataFrame, everything: pd.DataFrame, bundle: DatasetBundle) -> pd.Series:
    """The item on the card: the most suspicious pending one shown unless another is picked.

    The choices are the first ``QUEUE_CHOICES`` pending rows shown, the picked item when it is
    still pending further down (an item an undo brought back), and a jumped-to item.
    """
    picked = st.session_state.get(PICK_KEY)
    pending = shown[shown["status"] == UNDECIDED]
    top = pending.head(QUEUE_CHOICES)
    extra = everything["train_index"] == picked
    if picked != st.session_state.get(JUMPED_KEY):
        extra &= everything["status"] == UNDECIDED
    choices = pd.concat(
        [top, everything[extra & ~everything["train_index"].isin(top["train_index"])]]
    )
    names = {int(r.train_index): item_name(r, bundle) for r in choices.itertuples()}
    if names and picked not in names:  # set, not defaulted: a browser would keep showing the old
        st.session_state[PICK_KEY] = next(iter(names))
    index = st.selectbox(
        f"Review ({len(pending):,} pending shown, most suspicious first)",
        list(names),
        format_func=names.get,
        key=PICK_KEY,
    )
    return choices[choices["train_index"] == index].iloc[0]


def item_name(row: object, bundle: DatasetBundle) -> str:
    """How the picker names a queue row."""
    return (
        f"{'⚑ ' if row.flagged else ''}rank {int(row.rank)} · train #{int(row.train_index)} · "
        f"given {bundle.class_name(row.given_label)}, predicted "
        f"{bundle.class_name(row.predicted_label)}"
    )


def item_card(
    review: RunReview, context: state.Context, bundle: DatasetBundle, item: pd.Series
) -> None:
    """One queue item: image, labels, suggestion, the actions, then its strongest proponents."""
    index = int(item["train_index"])
    proponents = cache.proponents_table(review, context, index, PROPONENTS_SHOWN)
    suggested = suggested_label(
        item["given_label"], item["predicted_label"], proponents["given_label"].tolist()
    )
    image, facts = st.columns([1, 2])
    image.image(ui.thumbnail(bundle, "train", index), width=140, caption=item_caption(item))
    cols = facts.columns(2)
    cols[0].metric("Given", bundle.class_name(int(item["given_label"])))
    cols[1].metric("Predicted", bundle.class_name(int(item["predicted_label"])))
    cols[0].metric("Suggested", bundle.class_name(suggested))
    cols[1].metric("Rank", f"{int(item['rank']):,}")
    actions(review, bundle, index, suggested)
    st.markdown("**Its strongest proponents** (up-weighting them helps its given label most)")
    suspects = review.suspects()
    captions = [ui.train_caption(bundle, row, suspects) for row in proponents.itertuples()]
    ui.gallery(bundle, "train", proponents["train_index"].tolist(), captions, columns=4)


def item_caption(item: pd.Series) -> str:
    """The card's image caption: the index, the path when known, a decision when made."""
    path = f" · {item['path']}" if "path" in item.index else ""
    decided = "" if item["status"] == UNDECIDED else f" · {item['decision']}"
    return f"train #{int(item['train_index'])}{path}{decided}"


def decide(review: RunReview, indices: list[int], action: str, label: int | None = None) -> None:
    """Record one decision batch (a button callback); the card moves on to the next item."""
    review.decide(indices, action, label)
    st.session_state.pop(JUMPED_KEY, None)


def undo(review: RunReview) -> None:
    """Undo the last decision batch and go back to its first example (a button callback)."""
    indices = review.undo()
    if indices:
        st.session_state[PICK_KEY] = indices[0]


def actions(review: RunReview, bundle: DatasetBundle, index: int, suggested: int) -> None:
    """Keep / relabel / remove buttons with keyboard shortcuts (K, L, X) and undo (U)."""
    classes = list(range(bundle.num_classes))
    new_label = st.selectbox(
        "Relabel as",
        classes,
        index=classes.index(suggested),
        format_func=bundle.class_name,
        key=f"new_{index}",
    )
    buttons = [
        ("Keep", "keep", "K", ([index], "keep")),
        ("Relabel", "relabel", "L", ([index], "relabel", int(new_label))),
        ("Remove", "remove", "X", ([index], "remove")),
    ]
    for column, (label, key, shortcut, args) in zip(st.columns(3), buttons, strict=True):
        column.button(label, key=key, shortcut=shortcut, width="stretch",
                      type="primary" if key == "relabel" else "secondary",
                      on_click=decide, args=(review, *args))  # fmt: skip
    undo_column, keys = st.columns([1, 2], vertical_alignment="center")
    undo_column.button("Undo", key="undo", shortcut="U", icon=":material/undo:", width="stretch",
                       on_click=undo, args=(review,), disabled=not review.can_undo())  # fmt: skip
    keys.caption("Keyboard: **K** keep · **L** relabel · **X** remove · **U** undo")


def grid_panel(review: RunReview, bundle: DatasetBundle, shown: pd.DataFrame) -> None:
    """The filtered queue as a sortable grid; select rows to open one or decide many at once."""
    table = shown[[c for c in GRID_COLUMNS if c in shown.columns]]
    digest = hashlib.sha256(repr(table.to_dict("list")).encode()).hexdigest()[:12]
    event = st.dataframe(
        table, key=f"grid_{digest}", hide_index=True, height=GRID_HEIGHT, on_select="rerun",
        selection_mode="multi-row", column_config=GRID_CONFIG,
    )  # fmt: skip
    selected = table["train_index"].iloc[event.selection.rows].astype(int).tolist()
    bulk_actions(review, bundle, selected)


def bulk_actions(review: RunReview, bundle: DatasetBundle, selected: list[int]) -> None:
    """Keep / set the class of / remove every selected row, as one undoable batch each."""
    if len(selected) == 1 and st.session_state.get(PICK_KEY) != selected[0]:
        st.button("Open the selected row on the card", key="open_selected", on_click=open_row,
                  args=(selected[0],))  # fmt: skip
    cols = st.columns([1, 1, 1, 1])
    none = not selected
    cols[0].button(f"Keep {len(selected)} selected", key="bulk_keep", disabled=none,
                   on_click=decide, args=(review, selected, "keep"))  # fmt: skip
    label = cols[1].selectbox("Class", range(bundle.num_classes), format_func=bundle.class_name,
                              key="bulk_label", label_visibility="collapsed")  # fmt: skip
    cols[2].button(f"Set class of {len(selected)}", key="bulk_relabel", disabled=none,
                   on_click=decide, args=(review, selected, "relabel", int(label)))  # fmt: skip
    cols[3].button(f"Remove {len(selected)} selected", key="bulk_remove", disabled=none,
                   on_click=decide, args=(review, selected, "remove"))  # fmt: skip


def open_row(index: int) -> None:
    """Open a grid row on the card (a button callback)."""
    st.session_state[PICK_KEY] = st.session_state[JUMPED_KEY] = index


def flip_panel(review: RunReview, bundle: DatasetBundle) -> None:
    """The flip matrix of the top suspects (click a cell to filter) and per-class counts."""
    n_train = len(bundle.train)
    top_k = st.slider("Suspects counted (top of the queue)", 10, n_train, min(100, n_train), 10,
                      key="flip_k")  # fmt: skip
    counts = review.flip_counts(bundle.num_classes, top_k)
    matrix, per_class = st.columns([3, 2])
    matrix.plotly_chart(
        views.flip_matrix_figure(counts, bundle.class_names, "Given → suggested (click a cell)"),
        key=FLIP_KEY, on_select=partial(on_flip_click, counts), selection_mode="points",
    )  # fmt: skip
    per_class.dataframe(
        class_suspect_counts(counts, bundle.class_names), hide_index=True, key="class_counts"
    )


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
    """Test accuracy before vs after the fixes: the paired change with its interval, and why."""
    summary = report["summary"]
    before, after = summary["before_accuracy"], summary["after_accuracy"]
    change = summary.get("accuracy_change") or {}
    cols = st.columns(4)
    cols[0].metric("Test accuracy before", f"{before['mean']:.2%} ± {before['std']:.2%}")
    cols[1].metric("Test accuracy after", f"{after['mean']:.2%} ± {after['std']:.2%}")
    if change.get("half_width") is not None:
        cols[2].metric(
            "Paired change (95 % interval)",
            f"{change['mean']:+.2f} ± {change['half_width']:.2f} points",
        )
    cols[3].metric("Removed / relabelled", f"{report['n_removed']} / {report['n_relabeled']}")
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


def cleaned_panel(review: RunReview, bundle: DatasetBundle) -> None:
    """Downloads of the cleaned dataset: an .npz, and for image folders a manifest and a copy."""
    decisions = review.decisions()
    st.subheader("Cleaned dataset")
    st.caption(
        "Relabels applied, removed rows dropped, the test split kept; "
        "`python -m dropinf train --data cleaned.npz` reads it."
    )
    if not st.toggle("Prepare the cleaned dataset", key="export_cleaned", disabled=not decisions):
        return
    cols = st.columns([1, 1, 2])
    cols[0].download_button(
        "Download cleaned .npz", partial(cleaned_npz_bytes, bundle, decisions), "cleaned.npz",
        "application/octet-stream", key="export_npz", icon=":material/download:",
    )  # fmt: skip
    if bundle.train_ids is None:
        return
    cols[1].download_button(
        "Download manifest CSV", relabel_manifest(bundle, decisions), "manifest.csv", "text/csv",
        key="export_manifest", icon=":material/download:",
    )  # fmt: skip
    if cols[2].button("Write a copy of the folder, files in their new class folders",
                      key="export_folder", icon=":material/folder_copy:"):  # fmt: skip
        write_folder_copy(bundle, decisions)


def write_folder_copy(bundle: DatasetBundle, decisions: dict) -> None:
    """Copy the image folder under dropinf's exports folder, or show why it cannot be."""
    try:
        target = copy_cleaned_folder(bundle, decisions, paths.uploads_dir() / "exports")
    except DropinfError as error:
        ui.show_error(error)
        return
    st.success(f"Written to `{target}` (your folder is unchanged).")


def review_area(
    review: RunReview, context: state.Context, bundle: DatasetBundle, shown: pd.DataFrame
) -> None:
    """The card (left) beside the filtered grid (right): both in view at 1440 × 900."""
    everything = review.grid(bundle.train_ids, include_decided=True)
    card, grid = st.columns([2, 3], gap="medium")
    with grid:
        grid_panel(review, bundle, shown)
    with card:
        if (shown["status"] == UNDECIDED).any() or st.session_state.get(PICK_KEY) is not None:
            item_card(review, context, bundle, choose_item(shown, everything, bundle))
        else:
            st.success("No pending example matches the filters.")


def main() -> None:
    """The page: the review card and grid, flip matrix, detection, exports, verification."""
    st.title("Label issues")
    if (store := ui.require_complete_run()) is None or (context := ui.require_context()) is None:
        return
    try:
        _, bundle = cache.load_context(context)
        review = cache.run_review(store, bundle)
    except DropinfError as error:
        ui.show_error(error)
        return
    top = st.columns([2, 3, 1, 1], vertical_alignment="bottom")
    top[0].subheader("Review queue")
    top[1].number_input("Jump to training index", 0, len(bundle.train) - 1, None,
                        key=JUMP_KEY, on_change=jump)  # fmt: skip
    show_decided = top[2].toggle("Show decided", key="filter_decided")
    top[3].button("Clear filters", key="clear_filters", on_click=clear_filters)
    queue_filter = grid_filter(bundle)
    shown = review.grid(bundle.train_ids, queue_filter, include_decided=show_decided)
    review_area(review, context, bundle, shown)
    st.subheader("Which labels the suspects flip")
    flip_panel(review, bundle)
    detection_panel(review, bundle)
    export_panel(review, bundle)
    cleaned_panel(review, bundle)
    verify_panel(context, review)


main()
