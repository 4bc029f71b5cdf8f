"""Label issues: rank training examples by the mislabel score, review them, export, verify fixes."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import pandas as pd
import streamlit as st

from dropinf.data import DatasetBundle
from dropinf.errors import DropinfError
from dropinf.review import UNDECIDED, QueueFilter, RunReview, card_choices, item_caption, item_name
from pages import _cache as cache
from pages import _review_widgets as panels
from pages import _state as state
from pages import _widgets as ui
from pages._review_widgets import JUMPED_KEY, PICK_KEY

PROPONENTS_SHOWN = 8
JUMP_KEY = "jump_to"
GRID_HEIGHT = 300
GRID_COLUMNS = ["rank", "train_index", "path", "given_class", "predicted_class",
                "suggested_class", "suspicion", "flagged", "decision"]  # fmt: skip
GRID_CONFIG = {
    "train_index": st.column_config.NumberColumn("index", format="%d"),
    "given_class": "given", "predicted_class": "predicted", "suggested_class": "suggested",
    "suspicion": st.column_config.NumberColumn("score", format="%.3f"),
}  # fmt: skip
SUGGESTION_HELP = (
    "The prediction when it disagrees with the given label; otherwise the class whose training "
    "examples pull this one away from its label hardest (its strongest opponents of other "
    "labels), when that pull outweighs the support of its own label's proponents."
)


def jump() -> None:
    """Open the training index typed in the jump box on the card (its callback)."""
    index = st.session_state.get(JUMP_KEY)
    if index is not None:
        st.session_state[PICK_KEY] = st.session_state[JUMPED_KEY] = int(index)


def open_row(index: int) -> None:
    """Open a grid row on the card (a button callback)."""
    st.session_state[PICK_KEY] = st.session_state[JUMPED_KEY] = index


def decide(review: RunReview, indices: list[int], action: str, label: int | None = None) -> None:
    """Record one decision batch (a button callback); the card moves on to the next item."""
    review.decide(indices, action, label)
    st.session_state.pop(JUMPED_KEY, None)


def undo(review: RunReview) -> None:
    """Undo the last decision batch and go back to its first example (a button callback)."""
    indices = review.undo()
    if indices:
        st.session_state[PICK_KEY] = indices[0]


def choose_item(shown: pd.DataFrame, everything: pd.DataFrame, bundle: DatasetBundle) -> pd.Series:
    """The item on the card: the most suspicious pending one shown unless another is picked."""
    picked = st.session_state.get(PICK_KEY)
    choices = card_choices(shown, everything, picked, st.session_state.get(JUMPED_KEY))
    rows = choices.to_dict("records")
    names = {int(row["train_index"]): item_name(row, bundle.class_name) for row in rows}
    if names and picked not in names:  # set, not defaulted: a browser would keep showing the old
        st.session_state[PICK_KEY] = next(iter(names))
    pending = int((shown["status"] == UNDECIDED).sum())
    index = st.selectbox(f"Review ({pending:,} pending shown, most suspicious first)",
                         list(names), format_func=names.get, key=PICK_KEY)  # fmt: skip
    return choices[choices["train_index"] == index].iloc[0]


def item_card(
    review: RunReview, context: state.Context, bundle: DatasetBundle, item: pd.Series
) -> None:
    """One queue item: image, labels, suggestion, the actions, then its strongest proponents."""
    index, suggested = int(item["train_index"]), int(item["suggested_label"])
    image, facts = st.columns([1, 2])
    image.image(ui.thumbnail(bundle, "train", index), width=140, caption=item_caption(item))
    cols = facts.columns(2)
    cols[0].metric("Given", bundle.class_name(int(item["given_label"])))
    cols[1].metric("Predicted", bundle.class_name(int(item["predicted_label"])))
    cols[0].metric("Suggested", bundle.class_name(suggested), help=SUGGESTION_HELP)
    cols[1].metric("Rank", f"{int(item['rank']):,}")
    actions(review, bundle, index, suggested)
    panels.trajectory_panel(review, bundle, index, key="card_trajectory")
    st.markdown("**Its strongest proponents** (up-weighting them helps its given label most)")
    proponents = cache.proponents_table(review, context, index, PROPONENTS_SHOWN)
    suspects = review.suspects()
    captions = [ui.train_caption(bundle, row, suspects) for row in proponents.itertuples()]
    ui.gallery(bundle, "train", proponents["train_index"].tolist(), captions, columns=4)


def actions(review: RunReview, bundle: DatasetBundle, index: int, suggested: int) -> None:
    """Keep / relabel / remove buttons with keyboard shortcuts (K, L, X) and undo (U)."""
    classes = list(range(bundle.num_classes))
    new_label = st.selectbox("Relabel as", classes, index=classes.index(suggested),
                             format_func=bundle.class_name, key=f"new_{index}")  # fmt: skip
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


@st.fragment
def review_area(
    review: RunReview,
    context: state.Context,
    bundle: DatasetBundle,
    queue: tuple[QueueFilter, bool],
    suggestions: Mapping[int, int],
) -> None:
    """The card (left) beside the filtered grid (right), then the decisions and their exports.

    A fragment: a decision (K / L / X / U, a bulk action) reruns these only, not the flip
    matrix, the detection panel, the cleaned dataset and the verification below (none of them
    changes with a decision; their downloads and the retrain read the decisions when clicked).

    Args:
        review: The run under review.
        context: The loaded model and data.
        bundle: The dataset.
        queue: The filter over the queue and whether decided rows are shown.
        suggestions: Training index -> suggested label (``cache.queue_suggestions``).
    """
    queue_filter, show_decided = queue
    ids = bundle.train_ids
    shown = review.grid(ids, queue_filter, include_decided=show_decided, suggestions=suggestions)
    everything = review.grid(ids, include_decided=True, suggestions=suggestions)
    card, grid = st.columns([2, 3], gap="medium")
    with grid:
        grid_panel(review, bundle, shown)
    with card:
        if (shown["status"] == UNDECIDED).any() or st.session_state.get(PICK_KEY) is not None:
            item_card(review, context, bundle, choose_item(shown, everything, bundle))
        else:
            st.success("No pending example matches the filters.")
    panels.export_panel(review, bundle)


def suggestions_or_predictions(review: RunReview, context: state.Context) -> dict[int, int]:
    """The queue's suggestions from influence, or none (the predictions) with the reason why."""
    try:
        return cache.queue_suggestions(review, context)
    except DropinfError as error:
        st.caption(f"Suggested labels are the predictions: {error}")
        return {}


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
    suggestions = suggestions_or_predictions(review, context)
    top = st.columns([2, 3, 1, 1], vertical_alignment="bottom")
    top[0].subheader("Review queue")
    top[1].number_input("Jump to training index", 0, len(bundle.train) - 1, None,
                        key=JUMP_KEY, on_change=jump)  # fmt: skip
    show_decided = top[2].toggle("Show decided", key="filter_decided")
    top[3].button("Clear filters", key="clear_filters", on_click=panels.clear_filters)
    queue = (panels.grid_filter(bundle), show_decided)
    review_area(review, context, bundle, queue, suggestions)
    st.subheader("Which labels the suspects flip")
    panels.flip_panel(review, bundle, suggestions)
    panels.detection_panel(review, bundle)
    panels.cleaned_panel(review, bundle)
    panels.verify_panel(context, review)


main()
