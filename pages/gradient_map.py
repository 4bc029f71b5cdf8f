"""Gradient map: a UMAP of the compressed training gradients, with box / lasso selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dropinf import dashboard as gradient_map
from dropinf import dashboard as views
from dropinf import review
from dropinf.data import DatasetBundle
from dropinf.errors import DropinfError
from dropinf.run import RunStore
from pages import _shared as ui

COLOURS = ["Given label", "Predicted label", "Self-influence", "Review status"]
MAX_SHOWN = 36


@st.fragment(run_every=1.0)
def map_progress(run_dir: Path) -> None:
    """Polls the map job; reruns the page once it has finished."""
    if ui.job_runner().status(run_dir, gradient_map.MAP_JOB).is_active:
        st.progress(0.5, text="Computing the UMAP of the whitened training gradients…")
    else:
        st.rerun()


def compute_panel(run_dir: Path) -> None:
    """Start, follow, or report the background UMAP job."""
    status = ui.job_runner().status(run_dir, gradient_map.MAP_JOB)
    if status.is_active:
        map_progress(run_dir)
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
        command = gradient_map.map_command(run_dir)
        try:
            ui.job_runner().start(command, run_dir, name=gradient_map.MAP_JOB, force=True)
        except DropinfError as error:
            ui.show_error(error)
            return
        st.rerun()


def colour_values(store: RunStore, colour: str) -> np.ndarray:
    """One value per training example for the chosen colouring."""
    meta = store.train_metadata()
    if colour == "Given label":
        return meta["label"]
    if colour == "Predicted label":
        return meta["prediction"]
    if colour == "Self-influence":
        return np.asarray(store.self_influence(), dtype=np.float64)
    decisions, flags = ui.load_decisions(store.run_dir), ui.load_flags(store.run_dir)
    return review.review_status(len(meta["label"]), decisions, flags)


def test_highlights(store: RunStore, overlay: bool) -> dict[str, list[int]]:
    """Rings on the proponents / opponents of the test example open in Explore (``?test=``)."""
    if not overlay:
        return {}
    test_index = ui.url_int("test", 0)
    row = np.asarray(store.test_scores()[test_index])  # (n_train,)
    return views.influence_highlights(row, 20, f"test #{test_index}")


def map_figure(
    store: RunStore, bundle: DatasetBundle, coords: np.ndarray, colour: str, overlay: bool
) -> go.Figure:
    """The scatter plot, coloured and optionally ringed, in box-select mode."""
    meta = store.train_metadata()
    names = bundle.class_names if colour in COLOURS[:2] else None
    figure = views.gradient_map_figure(
        coords, color_values=colour_values(store, colour), color_name=colour.lower(),
        category_names=names, highlights=test_highlights(store, overlay),
        hover_fields={"given": [bundle.class_name(i) for i in meta["label"]],
                      "predicted": [bundle.class_name(i) for i in meta["prediction"]]},
    )  # fmt: skip
    figure.update_layout(dragmode="select", height=560, margin={"t": 30})
    return figure


def selection_panel(store: RunStore, bundle: DatasetBundle, ids: list[int]) -> None:
    """The selected training examples as a gallery, with decisions for all of them at once."""
    meta = store.train_metadata()
    more = f" (showing the first {MAX_SHOWN})" if len(ids) > MAX_SHOWN else ""
    st.markdown(f"**{len(ids):,} selected**{more}")
    suspects = ui.suspect_mask(store)
    shown = ids[:MAX_SHOWN]
    captions = [ui.train_caption_for(bundle, meta, i, suspects) for i in shown]
    ui.gallery(bundle, "train", shown, captions, columns=9)
    cols = st.columns([2, 2, 2, 2, 1])
    cols[0].button(
        f"Flag {len(ids):,} for review",
        icon=":material/flag:",
        key="flag_selected",
        on_click=ui.flag_for_review,
        args=(store.run_dir, ids),
        type="primary",
    )
    cols[1].button(
        "Keep all",
        icon=":material/check:",
        key="keep_selected",
        on_click=ui.decide,
        args=(store.run_dir, ids, "keep"),
    )
    cols[2].button(
        "Remove all",
        icon=":material/delete:",
        key="remove_selected",
        on_click=ui.decide,
        args=(store.run_dir, ids, "remove"),
    )
    cols[3].button(
        "Unmark",  # no "flag" in the name: the browser test finds the Flag button by name
        icon=":material/remove_done:",
        key="unflag_selected",
        on_click=ui.unflag,
        args=(store.run_dir, ids),
        disabled=not set(ids) & set(ui.load_flags(store.run_dir)),
    )


def map_panel(store: RunStore, bundle: DatasetBundle, coords: np.ndarray) -> None:
    """The coloured scatter plot and what is selected on it."""
    left, right = st.columns([2, 1])
    colour = left.selectbox("Colour by", COLOURS, key="map_colour")
    overlay = right.toggle("Ring the test example's top influences", key="map_overlay")
    event = st.plotly_chart(
        map_figure(store, bundle, coords, colour, overlay),
        on_select="rerun",
        selection_mode=("box", "lasso"),
        key="map_chart",
    )
    ids = views.selected_ids(event)
    if ids:
        selection_panel(store, bundle, ids)
    else:
        st.caption("Drag a box (or pick the lasso in the toolbar) to select training examples.")


def main() -> None:
    """The page: compute the map once per run, then colour, select and flag."""
    st.title("Gradient map")
    if (store := ui.require_complete_run()) is None or (context := ui.require_context()) is None:
        return
    try:
        _, bundle = ui.load_context(context)
        coords = gradient_map.load_gradient_map(store.run_dir)
    except DropinfError as error:
        ui.show_error(error)
        return
    if coords is None:
        compute_panel(store.run_dir)
    else:
        map_panel(store, bundle, coords)


main()
