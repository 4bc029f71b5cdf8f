"""Explore: a test example, its top proponents and opponents, and a training example's detail."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from dropinf import dashboard as views
from dropinf.data import DatasetBundle
from dropinf.errors import DropinfError
from dropinf.review import RunReview
from pages import _cache as cache
from pages import _review_widgets as panels
from pages import _state as state
from pages import _widgets as ui

MODES = ["By index", "By class", "Misclassified only", "Upload an image"]


def test_candidates(bundle: DatasetBundle, meta: dict[str, np.ndarray], mode: str) -> list[int]:
    """The test indices the chosen mode offers."""
    label = None
    if mode == "By class":
        label = st.selectbox(
            "Class",
            range(bundle.num_classes),
            key="explore_class",
            format_func=bundle.class_name,
        )
    misclassified_only = mode == "Misclassified only"
    return views.example_indices(meta["label"], meta["prediction"], label, misclassified_only)


def choose_test_example(
    bundle: DatasetBundle, meta: dict[str, np.ndarray], mode: str
) -> int | None:
    """The selection widgets of a mode; the chosen index is mirrored in the URL (``?test=``)."""
    candidates = test_candidates(bundle, meta, mode)
    if not candidates:
        st.info("No test example matches.")
        return None
    wanted = state.url_int("test", default=candidates[0])
    start = candidates.index(wanted) if wanted in candidates else 0
    describe = ui.example_describer(bundle, meta)
    index = st.selectbox(
        f"Test example ({len(candidates):,} to choose from)",
        candidates,
        index=start,
        format_func=describe,
        key=f"explore_pick_{mode}",
    )
    st.query_params["test"] = str(index)
    return int(index)


def example_panel(bundle: DatasetBundle, meta: dict[str, np.ndarray], index: int) -> None:
    """The test example's image, true and predicted label, and loss."""
    st.image(ui.thumbnail(bundle, "test", index), width=150, caption=f"test #{index}")
    if (name := bundle.example_id("test", index)) is not None:
        st.text(name)  # plain text: a name from the data is never read as markup
    label, prediction = int(meta["label"][index]), int(meta["prediction"][index])
    st.metric("True label", bundle.class_name(label))
    st.metric(
        "Predicted",
        bundle.class_name(prediction),
        delta="correct" if label == prediction else "wrong",
        delta_color="normal" if label == prediction else "inverse",
    )
    st.metric("Loss", f"{float(meta['loss'][index]):.3f}")


def top_examples(review: RunReview, row: np.ndarray, k: int, sign: float) -> pd.DataFrame:
    """The k strongest proponents (sign +1) or opponents (sign -1) of a scores row."""
    meta = review.metadata
    return views.top_influences(
        row, k, labels=meta["label"], predictions=meta["prediction"], opponents=sign < 0
    )


def influence_galleries(
    review: RunReview, bundle: DatasetBundle, row: np.ndarray, true: int, predicted: int
) -> None:
    """The strongest influences as thumbnail galleries, worded for a right or a wrong prediction.

    Args:
        review: The run's review.
        bundle: The dataset.
        row: (n_train,) influence on the example's loss at its true (or chosen) label.
        true: The example's true (or chosen) label.
        predicted: The model's prediction.
    """
    top_k = st.slider("How many", 4, 24, 12, 4, key="explore_top_k")
    st.caption(
        "Scores are the influence on this example's loss at its true label: **+** lowers it "
        "(up-weighting that training example helps the true class), **−** raises it."
    )
    suspects = review.suspects()
    columns = 4 if st.session_state.get(state.DETAIL_KEY) is not None else 6
    sections = views.influence_sections(bundle.class_name(true), bundle.class_name(predicted))
    for heading, sign in sections:
        st.html(heading)
        table = top_examples(review, row, top_k, sign)
        captions = [ui.train_caption(bundle, item, suspects) for item in table.itertuples()]
        ui.gallery(
            bundle,
            "train",
            table["train_index"].tolist(),
            captions,
            columns=columns,
            on_open=state.open_train_detail,
            key=f"gallery{int(sign)}",
        )


def train_detail(review: RunReview, bundle: DatasetBundle, scores: np.ndarray, index: int) -> None:
    """One training example: its self-influence and the test examples it most helps / harms."""
    st.subheader(f"Training example #{index}")
    meta = review.metadata
    left, right = st.columns([1, 2])
    left.image(ui.thumbnail(bundle, "train", index), width=120)
    if (name := bundle.example_id("train", index)) is not None:
        left.text(name)  # plain text: a name from the data is never read as markup
    right.metric("Given label", bundle.class_name(int(meta["label"][index])))
    right.metric("Predicted", bundle.class_name(int(meta["prediction"][index])))
    right.metric("Self-influence", f"{float(review.self_influence[index]):.3g}")
    panels.trajectory_panel(review, bundle, index, key="detail_trajectory")
    column = np.asarray(scores[:, index])  # (n_test,)
    test_meta = review.store.test_metadata()
    for title, sign in (
        ("Test examples it helps most", 1.0),
        ("Test examples it harms most", -1.0),
    ):
        st.markdown(f"**{title}**")
        top = views.top_influences(column, 6, opponents=sign < 0)  # rows are test examples
        order = top["train_index"].tolist()
        captions = [ui.test_caption(bundle, test_meta, i, float(column[i])) for i in order]
        ui.gallery(bundle, "test", order, captions, columns=3)
    st.button("Close", key="close_detail", on_click=state.open_train_detail, args=(None,))


def with_detail(
    review: RunReview, bundle: DatasetBundle, scores: np.ndarray
) -> list[DeltaGenerator]:
    """The page's columns: example, galleries and, when one is open, the training example's detail.

    Returns:
        The example and gallery columns (the detail column is drawn here).
    """
    detail = st.session_state.get(state.DETAIL_KEY)
    if detail is None:
        return list(st.columns([1, 4], gap="large"))
    left, middle, right = st.columns([1, 3, 2], gap="medium")
    with right, st.container(border=True):
        train_detail(review, bundle, scores, int(detail))
    return [left, middle]


def histogram(review: RunReview, bundle: DatasetBundle, row: np.ndarray) -> None:
    """The influence histogram of every training example on one (test) example."""
    labels = review.metadata["label"]
    figure = views.influence_histogram(
        row, labels, bundle.class_names, tail_k=12, title="Influence of every training example"
    )
    st.plotly_chart(figure, key="histogram")


def uploaded_example(review: RunReview, context: state.Context, bundle: DatasetBundle) -> None:
    """Score an uploaded picture against the stored run (a query; nothing is refitted)."""
    upload = st.file_uploader("A picture", type=["png", "jpg", "jpeg", "bmp"], key="upload_test")
    if upload is None:
        st.caption(f"It is converted to the dataset's input shape {bundle.input_shape}.")
        return
    try:
        inputs = bundle.inputs_from_image(upload.getvalue())
        prediction = cache.predict(context, inputs)
    except DropinfError as error:
        ui.show_error(error)
        return
    left, right = with_detail(review, bundle, review.store.test_scores())
    with left:
        st.image(upload.getvalue(), width=150)
        st.text(upload.name)
        st.metric("Predicted", bundle.class_name(prediction))
        label = st.selectbox(
            "Its label",
            range(bundle.num_classes),
            index=prediction,
            format_func=bundle.class_name,
            key="upload_label",
        )
    row = cache.query_scores(str(review.run_dir), context, inputs, int(label))
    with right:
        influence_galleries(review, bundle, row, int(label), prediction)
    histogram(review, bundle, row)


def main() -> None:
    """The page: choose, show, galleries, histogram, detail."""
    st.title("Explore a test example")
    if (store := ui.require_complete_run()) is None or (context := ui.require_context()) is None:
        return
    try:
        _, bundle = cache.load_context(context)
        review = cache.run_review(store, bundle)
        scores = store.test_scores()  # (n_test, n_train)
        meta = store.test_metadata()
    except DropinfError as error:
        ui.show_error(error)
        return
    mode = st.segmented_control(
        "Choose by",
        MODES,
        default=MODES[0],
        key="explore_mode",
        on_change=state.open_train_detail,
        args=(None,),  # a new mode closes the training example's detail
    )
    if mode == "Upload an image":
        uploaded_example(review, context, bundle)
    elif (index := choose_test_example(bundle, meta, mode or MODES[0])) is not None:
        row = np.asarray(scores[index])  # (n_train,)
        true, predicted = int(meta["label"][index]), int(meta["prediction"][index])
        left, right = with_detail(review, bundle, scores)
        with left:
            example_panel(bundle, meta, index)
        with right:
            influence_galleries(review, bundle, row, true, predicted)
        histogram(review, bundle, row)


main()
