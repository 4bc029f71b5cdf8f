"""Explore: a test example, its top proponents and opponents, and a training example's detail."""

from __future__ import annotations

import numpy as np
import streamlit as st

from dropinf import dashboard as views
from dropinf.data import DatasetBundle
from dropinf.errors import DropinfError
from dropinf.run import RunStore
from pages import _shared as ui

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
    wanted = ui.url_int("test", default=candidates[0])
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
    label, prediction = int(meta["label"][index]), int(meta["prediction"][index])
    st.metric("True label", bundle.class_name(label))
    st.metric(
        "Predicted",
        bundle.class_name(prediction),
        delta="correct" if label == prediction else "wrong",
        delta_color="normal" if label == prediction else "inverse",
    )
    st.metric("Loss", f"{float(meta['loss'][index]):.3f}")


def influence_galleries(store: RunStore, bundle: DatasetBundle, row: np.ndarray) -> None:
    """Top-k proponents and opponents as thumbnail galleries."""
    top_k = st.slider("How many", 4, 24, 12, 4, key="explore_top_k")
    suspects = ui.suspect_mask(store)
    for title, sign in (
        ("Proponents (helped this prediction)", 1.0),
        ("Opponents (pushed against it)", -1.0),
    ):
        st.markdown(f"**{title}**")
        table = ui.top_examples(store, row, top_k, sign)
        captions = [ui.train_caption(bundle, item, suspects) for item in table.itertuples()]
        ui.gallery(
            bundle,
            "train",
            table["train_index"].tolist(),
            captions,
            columns=6,
            on_open=ui.open_train_detail,
            key=f"gallery{int(sign)}",
        )


def train_detail(store: RunStore, bundle: DatasetBundle, scores: np.ndarray, index: int) -> None:
    """One training example: its self-influence and the test examples it most helps / harms."""
    st.subheader(f"Training example #{index}")
    meta = store.train_metadata()
    left, right = st.columns([1, 4])
    with left:
        st.image(ui.thumbnail(bundle, "train", index), width=120)
        st.metric("Given label", bundle.class_name(int(meta["label"][index])))
        st.metric("Predicted", bundle.class_name(int(meta["prediction"][index])))
        st.metric("Self-influence", f"{float(store.self_influence()[index]):.3g}")
    with right:
        column = np.asarray(scores[:, index])  # (n_test,)
        test_meta = store.test_metadata()
        for title, sign in (
            ("Test examples it helps most", 1.0),
            ("Test examples it harms most", -1.0),
        ):
            st.markdown(f"**{title}**")
            top = views.top_influences(column, 6, opponents=sign < 0)  # rows are test examples
            order = top["train_index"].tolist()
            captions = [ui.test_caption(bundle, test_meta, i, float(column[i])) for i in order]
            ui.gallery(bundle, "test", order, captions, columns=6)
    st.button("Close", key="close_detail", on_click=ui.open_train_detail, args=(None,))


def histogram(store: RunStore, bundle: DatasetBundle, row: np.ndarray) -> None:
    """The influence histogram of every training example on one (test) example."""
    labels = store.train_metadata()["label"]
    figure = views.influence_histogram(
        row, labels, bundle.class_names, tail_k=12, title="Influence of every training example"
    )
    st.plotly_chart(figure, key="histogram")


def uploaded_example(store: RunStore, context: ui.Context, bundle: DatasetBundle) -> None:
    """Score an uploaded picture against the stored run (a query; nothing is refitted)."""
    upload = st.file_uploader("A picture", type=["png", "jpg", "jpeg", "bmp"], key="upload_test")
    if upload is None:
        st.caption(f"It is converted to the dataset's input shape {bundle.input_shape}.")
        return
    try:
        inputs = bundle.inputs_from_image(upload.getvalue())
        prediction = ui.predict(context, inputs)
    except DropinfError as error:
        ui.show_error(error)
        return
    left, right = st.columns([1, 4], gap="large")
    with left:
        st.image(upload.getvalue(), width=150, caption=upload.name)
        st.metric("Predicted", bundle.class_name(prediction))
        label = st.selectbox(
            "Its label",
            range(bundle.num_classes),
            index=prediction,
            format_func=bundle.class_name,
            key="upload_label",
        )
    row = ui.query_scores(str(store.run_dir), context, inputs, int(label))
    with right:
        influence_galleries(store, bundle, row)
    histogram(store, bundle, row)


def main() -> None:
    """The page: choose, show, galleries, histogram, detail."""
    st.title("Explore a test example")
    if (store := ui.require_complete_run()) is None or (context := ui.require_context()) is None:
        return
    try:
        _, bundle = ui.load_context(context)
        scores = store.test_scores()  # (n_test, n_train)
        meta = store.test_metadata()
    except DropinfError as error:
        ui.show_error(error)
        return
    mode = st.segmented_control("Choose by", MODES, default=MODES[0], key="explore_mode")
    if mode == "Upload an image":
        uploaded_example(store, context, bundle)
    elif (index := choose_test_example(bundle, meta, mode or MODES[0])) is not None:
        row = np.asarray(scores[index])  # (n_train,)
        left, right = st.columns([1, 4], gap="large")
        with left:
            example_panel(bundle, meta, index)
        with right:
            influence_galleries(store, bundle, row)
        histogram(store, bundle, row)
    if (detail := st.session_state.get("train_detail")) is not None:
        train_detail(store, bundle, scores, int(detail))


main()
