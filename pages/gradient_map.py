"""Gradient map: a UMAP of the compressed training gradients, with box / lasso selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dropinf import dashboard as gradient_map
from dropinf import dashboard as views
from dropinf.cli import map_command
from dropinf.data import DatasetBundle
from dropinf.errors import DropinfError
from dropinf.review import RunReview, review_status
from pages import _cache as cache
from pages import _state as state
from pages import _widgets as ui

COLOURS = ["Given label", "Predicted label", "Self-influence", "Review status"]
MAX_SHOWN = 36
MAP_WORKING = "Computing the UMAP of the whitened training gradients"


def compute_panel(run_dir: Path) -> None:
    """Start, follow, or report the background UMAP job."""
    status = cache.job_runner().status(run_dir, gradient_map.MAP_JOB)
    if status.is_active:
        ui.job_panel(run_dir, MAP_WORKING, name=gradient_map.MAP_JOB)
        return
    if status.state == "failed":
        st.error(f"The map job failed: {status.error}")
    st.info("This run's gradient map is not computed yet (a UMAP, computed once and cached).")
    if st.button(
        "Compute the gradient map",
        type="primary",
        key="compute_map",
        icon=":material/scatter_plot:",
    ):
        command = map_command(run_dir)
        try:
            cache.job_runner().start(command, run_dir, name=gradient_map.MAP_JOB, force=True)
        except DropinfError as error:
            ui.show_error(error)
            return
        st.rerun()


def colour_values(review: RunReview, colour: str) -> np.ndarray:
    """One value per training example for the chosen colouring."""
    meta = review.metadata
    if colour == "Given label":
        return meta["label"]
    if colour == "Predicted label":
        return meta["prediction"]
    if colour == "Self-influence":
        return np.asarray(review.self_influence, dtype=np.float64)
    return review_status(len(meta["label"]), review.decisions(), review.flags())


def test_highlights(review: RunReview, overlay: bool) -> dict[str, list[int]]:
    """Rings on the proponents / opponents of the test example open in Explore (``?test=``)."""
    if not overlay:
        return {}
    test_index = state.url_int("test", 0)
    row = np.asarray(review.store.test_scores()[test_index])  # (n_train,)
    return views.influence_highlights(row, 20, f"test #{test_index}")


def map_figure(
    review: RunReview, bundle: DatasetBundle, coords: np.ndarray, colour: str, overlay: bool
) -> go.Figure:
    """The scatter plot, coloured and optionally ringed, in box-select mode."""
    meta = review.metadata
    names = bundle.class_names if colour in COLOURS[:2] else None
    figure = views.gradient_map_figure(
        coords, color_values=colour_values(review, colour), color_name=colour.lower(),
        category_names=names, highlights=test_highlights(review, overlay),
        hover_fields={"given": [bundle.class_name(i) for i in meta["label"]],
                      "predicted": [bundle.class_name(i) for i in meta["prediction"]]},
    )  # fmt: skip
    figure.update_layout(dragmode="select", height=560, margin={"t": 30})
    return figure


def flag_for_review(review: RunReview, ids: list[int]) -> None:
    """Flag training examples: they lead the run's review queue (a button callback)."""
    review.flag(ids)
    st.toast(f"Flagged {len(ids):,} examples: they lead the Label-issues queue.", icon="🚩")


def selection_panel(review: RunReview, bundle: DatasetBundle, ids: list[int]) -> None:
    """The selected training examples as a gallery, with decisions for all of them at once."""
    meta = review.metadata
    more = f" (showing the first {MAX_SHOWN})" if len(ids) > MAX_SHOWN else ""
    st.markdown(f"**{len(ids):,} selected**{more}")
    suspects = review.suspects()
    shown = ids[:MAX_SHOWN]
    captions = [ui.train_caption_for(bundle, meta, i, suspects) for i in shown]
    ui.gallery(bundle, "train", shown, captions, columns=9)
    cols = st.columns([2, 2, 2, 2, 1])
    cols[0].button(
        f"Flag {len(ids):,} for review",
        icon=":material/flag:",
        key="flag_selected",
        on_click=flag_for_review,
        args=(review, ids),
        type="primary",
    )
    cols[1].button(
        "Keep all",
        icon=":material/check:",
        key="keep_selected",
        on_click=review.decide,
        args=(ids, "keep"),
    )
    cols[2].button(
        "Remove all",
        icon=":material/delete:",
        key="remove_selected",
        on_click=review.decide,
        args=(ids, "remove"),
    )
    cols[3].button(
        "Unmark",  # no "flag" in the name: the browser test finds the Flag button by name
        icon=":material/remove_done:",
        key="unflag_selected",
        on_click=review.unflag,
        args=(ids,),
        disabled=not set(ids) & set(review.flags()),
    )


def map_panel(review: RunReview, bundle: DatasetBundle, coords: np.ndarray) -> None:
    """The coloured scatter plot and what is selected on it."""
    left, right = st.columns([2, 1])
    colour = left.selectbox("Colour by", COLOURS, key="map_colour")
    overlay = right.toggle("Ring the test example's top influences", key="map_overlay")
    event = st.plotly_chart(
        map_figure(review, bundle, coords, colour, overlay),
        on_select="rerun",
        selection_mode=("box", "lasso"),
        key="map_chart",
    )
    ids = views.selected_ids(event)
    if ids:
        selection_panel(review, bundle, ids)
    else:
        st.caption("Drag a box (or pick the lasso in the toolbar) to select training examples.")


def main() -> None:
    """The page: compute the map once per run, then colour, select and flag."""
    st.title("Gradient map")
    if (store := ui.require_complete_run()) is None or (context := ui.require_context()) is None:
        return
    try:
        _, bundle = cache.load_context(context)
        review = cache.run_review(store, bundle)
        coords = gradient_map.load_gradient_map(store.run_dir)
    except DropinfError as error:
        ui.show_error(error)
        return
    if coords is None:
        compute_panel(store.run_dir)
    else:
        map_panel(review, bundle, coords)


main()
