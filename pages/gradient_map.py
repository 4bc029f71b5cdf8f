"""Gradient map: a UMAP of the compressed training gradients, with box / lasso selection."""

from __future__ import annotations

import functools
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
    """Start (once, on its own), follow, or report the background UMAP job."""
    ui.start_map_job(run_dir)
    status = cache.job_runner().status(run_dir, gradient_map.MAP_JOB)
    if status.is_active:
        ui.job_panel(run_dir, MAP_WORKING, name=gradient_map.MAP_JOB, phases=views.MAP_PHASES)
        return
    if status.state == "failed":
        st.error(f"The map job failed: {status.error}", icon=":material/error:")
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


def hover_fields(review: RunReview, bundle: DatasetBundle) -> dict[str, list]:
    """What a point's hover says: its name from the data, classes and suspicion score."""
    meta, score = review.metadata, review.primary_score()
    fields: dict[str, list] = {}
    if bundle.train_ids is not None:
        fields["file"] = list(bundle.train_ids)
    fields["given"] = [bundle.class_name(i) for i in meta["label"]]
    fields["predicted"] = [bundle.class_name(i) for i in meta["prediction"]]
    fields["suspicion"] = [f"{value:.3g}" for value in score]
    return fields


def map_figure(
    review: RunReview,
    bundle: DatasetBundle,
    coords: np.ndarray,
    colour: str,
    overlay: bool,
    selected: list[int],
) -> go.Figure:
    """The scatter plot, coloured, optionally ringed, the kept selection marked, box-select mode."""
    names = bundle.class_names if colour in COLOURS[:2] else None
    figure = views.gradient_map_figure(
        coords, color_values=colour_values(review, colour), color_name=colour.lower(),
        category_names=names, highlights=test_highlights(review, overlay),
        hover_fields=hover_fields(review, bundle), selected=selected,
    )  # fmt: skip
    figure.update_layout(dragmode="select", height=560, margin={"t": 30})
    return figure


def flag_for_review(review: RunReview, ids: list[int]) -> None:
    """Flag training examples: they lead the run's review queue (a button callback)."""
    review.flag(ids)
    st.toast(
        f"Flagged {len(ids):,} examples: they lead the Label-issues queue.", icon=":material/flag:"
    )


def selection_key(review: RunReview) -> str:
    """The session key holding a run's selection on its map (a list of training ids)."""
    return f"map_selection-{review.run_dir.name}"


def keep_chart_selection(key: str) -> None:
    """Store the chart's new box / lasso selection under ``key`` (the chart's callback).

    The selection lives in the session, not in the chart: recolouring redraws the chart (a new
    element, no selection of its own) and the selection stays.
    """
    st.session_state[key] = views.selected_ids(st.session_state.get("map_chart"))


def drop_from_selection(key: str, index: int) -> None:
    """Take one training example out of the selection under ``key`` (a button callback)."""
    st.session_state[key] = [i for i in st.session_state.get(key, []) if i != index]


def by_suspicion(review: RunReview, ids: list[int]) -> list[int]:
    """The ids, most suspicious first (the review queue's score), ties by index."""
    score = review.primary_score()
    return sorted(ids, key=lambda i: (-float(score[i]), i))


def selection_panel(review: RunReview, bundle: DatasetBundle, ids: list[int]) -> None:
    """The selected training examples, most suspicious first, with decisions for all at once."""
    meta = review.metadata
    more = f" (showing the {MAX_SHOWN} most suspicious)" if len(ids) > MAX_SHOWN else ""
    st.markdown(f"**{len(ids):,} selected**, most suspicious first{more}")
    key = selection_key(review)
    st.button("Clear the selection", key="clear_selection", on_click=st.session_state.pop,
              args=(key, None), icon=":material/deselect:", type="tertiary")  # fmt: skip
    suspects = review.suspects()
    shown = by_suspicion(review, ids)[:MAX_SHOWN]
    captions = [ui.train_caption_for(bundle, meta, i, suspects) for i in shown]
    ui.gallery(
        bundle, "train", shown, captions, columns=9,
        on_open=functools.partial(drop_from_selection, key), key="drop",
        open_icon=":material/close:", open_help="Take it out of the selection",
    )  # fmt: skip
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
    key = selection_key(review)
    st.plotly_chart(
        map_figure(review, bundle, coords, colour, overlay, st.session_state.get(key, [])),
        on_select=functools.partial(keep_chart_selection, key),
        selection_mode=("box", "lasso"),
        key="map_chart",
    )
    if ids := st.session_state.get(key, []):
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
