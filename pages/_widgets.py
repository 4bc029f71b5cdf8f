"""Widgets shared by the pages: page setup, errors, guidance, sidebar, galleries, the job panel.

Each function draws; what it shows comes from ``pages._state`` (what is current), ``pages._cache``
(what is loaded) and the ``dropinf`` API. Captions and cards are built as escaped HTML by
``dropinf.dashboard``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from dropinf import dashboard as views
from dropinf import data
from dropinf import run as runs
from dropinf.cli import map_command
from dropinf.errors import DropinfError
from dropinf.run import RunStore
from dropinf.run.jobs import read_run_manifest
from pages import _cache as cache
from pages import _state as state

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def setup_page() -> None:
    """Page config, palette CSS and logo, shared by every page."""
    st.set_page_config(
        page_title="dropinf",
        page_icon=str(ASSETS / "icon.svg"),
        layout="wide",
        initial_sidebar_state="expanded",
    )
    css = (ASSETS / "style.css").read_text(encoding="utf-8")
    st.html(f"<style>{css}</style>")
    st.logo(str(ASSETS / "logo.svg"), size="large", icon_image=str(ASSETS / "icon.svg"))


def show_error(error: Exception | None) -> None:
    """Show a dropinf error's own message (never a traceback); nothing for None."""
    if error is not None:
        st.error(str(error), icon=":material/error:")


def open_context(context: state.Context) -> None:
    """Load a model + dataset and rerun on it, or show why it cannot be loaded."""
    try:
        cache.load_context(context)
    except DropinfError as error:
        show_error(error)
        return
    state.set_context(context)
    st.rerun()


def require_context() -> state.Context | None:
    """The current context, or an info box pointing at the Load page."""
    context = state.current_context()
    if context is None:
        st.info("No model loaded yet. Start on the **Load** page.", icon=":material/info:")
        st.page_link("pages/load.py", label="Go to Load", icon=":material/upload:")
    return context


def require_complete_run() -> RunStore | None:
    """The store of the selected run when it is complete, else guidance and None."""
    run_dir = state.current_run_dir()
    if run_dir is None:
        st.info("No run selected. Compute one, or pick a finished run in the sidebar.")
        st.page_link("pages/compute.py", label="Go to Compute", icon=":material/bolt:")
        return None
    store = RunStore(run_dir)
    if not store.is_complete():
        st.warning(f"Run `{run_dir.name}` is {store.status}; its scores are not ready yet.")
        st.page_link("pages/compute.py", label="See its progress", icon=":material/bolt:")
        return None
    return store


def render_sidebar() -> None:
    """The sidebar card naming the current model, dataset and run, and a run picker."""
    with st.sidebar:
        context = state.current_context()
        run_dir = state.current_run_dir()
        model = context.title or Path(context.checkpoint).name if context else "—"
        dataset = context.data_spec if context else "—"
        run = run_dir.name if run_dir else "—"
        st.html(views.sidebar_card_html(model, dataset, run))
        _run_picker()


def _run_picker() -> None:
    """A selectbox over the finished runs; choosing one makes it current."""
    finished = [
        row["key"]
        for row in runs.list_runs()
        if row.get("status") == "complete" and state.is_run_key(row["key"])
    ]
    if not finished:
        return
    current = st.session_state.get(state.RUN_KEY)
    options = [current, *[key for key in finished if key != current]] if current else finished
    st.selectbox(
        "Open a finished run",
        options,
        index=0 if current else None,
        key="sidebar_run_picker",
        placeholder="choose a run",
        on_change=lambda: show_error(state.select_run(st.session_state["sidebar_run_picker"])),
    )


# ---------------------------------------------------------------------------------------------
# Galleries and captions
# ---------------------------------------------------------------------------------------------


def gallery(
    bundle: data.DatasetBundle,
    split: str,
    indices: Sequence[int],
    captions: Sequence[str],
    columns: int = 6,
    on_open: Callable[[int], None] | None = None,
    key: str = "gallery",
    open_icon: str = ":material/open_in_new:",
    open_help: str | None = None,
) -> None:
    """A grid of thumbnails with captions and an optional button under each.

    Args:
        bundle: The dataset the indices point into.
        split: ``"train"`` or ``"test"``.
        indices: Example indices, in display order.
        captions: One HTML caption per index (``views.train_caption_html`` and kin).
        columns: Thumbnails per row.
        on_open: Called with the index when its button is pressed (open it, drop it, ...).
        key: Widget-key prefix, unique per gallery on the page.
        open_icon: The button's icon.
        open_help: The button's tooltip, or None.
    """
    button = (on_open, open_icon, open_help)
    for start in range(0, len(indices), columns):
        row = st.columns(columns)
        for column, index, caption in zip(
            row, indices[start : start + columns], captions[start : start + columns], strict=False
        ):
            with column:
                _gallery_item(bundle, split, int(index), caption, button, key)


def _gallery_item(
    bundle: data.DatasetBundle,
    split: str,
    index: int,
    caption: str,
    button: tuple[Callable[[int], None] | None, str, str | None],
    key: str,
) -> None:
    """One thumbnail, its caption and its button (``(on_click, icon, help)``)."""
    st.image(thumbnail(bundle, split, index), width="stretch")
    st.html(caption)
    on_click, icon, help_text = button
    if on_click is not None:
        st.button(
            f"#{index}",
            key=f"{key}-{index}",
            on_click=on_click,
            args=(index,),
            type="tertiary",
            icon=icon,
            help=help_text,
        )


def thumbnail(bundle: data.DatasetBundle, split: str, index: int) -> bytes:
    """A PNG thumbnail of one example, upscaled without blurring."""
    return views.thumbnail_png(bundle.thumbnail(split, index))


def train_caption(bundle: data.DatasetBundle, item: Any, suspects: np.ndarray) -> str:
    """Caption of a training thumbnail from a ``top_influences`` row."""
    index = int(item.train_index)
    return _train_caption(
        bundle, index, item.given_label, item.predicted_label, suspects, float(item.score)
    )


def train_caption_for(
    bundle: data.DatasetBundle, meta: dict[str, np.ndarray], index: int, suspects: np.ndarray
) -> str:
    """Caption of a training thumbnail without a score (galleries of selections)."""
    return _train_caption(bundle, index, meta["label"][index], meta["prediction"][index], suspects)


def _train_caption(
    bundle: data.DatasetBundle,
    index: int,
    given: int,
    predicted: int,
    suspects: np.ndarray,
    score: float | None = None,
) -> str:
    given_name, predicted_name = bundle.class_name(given), bundle.class_name(predicted)
    name = bundle.example_id("train", index)
    return views.train_caption_html(
        index, given_name, predicted_name, bool(suspects[index]), score, name
    )


def test_caption(
    bundle: data.DatasetBundle, meta: dict[str, np.ndarray], index: int, score: float
) -> str:
    """Caption of a test thumbnail with the score a training example has on it."""
    true, predicted = meta["label"][index], meta["prediction"][index]
    name = bundle.example_id("test", index)
    return views.test_caption_html(
        index, bundle.class_name(true), bundle.class_name(predicted), score, name
    )


def example_describer(bundle: data.DatasetBundle, meta: dict[str, np.ndarray]) -> Callable:
    """A ``format_func`` naming a test example by index, true and predicted label."""

    def describe(index: int) -> str:
        label, prediction = int(meta["label"][index]), int(meta["prediction"][index])
        mark = "" if label == prediction else "  ✗"
        return (
            f"#{index} · {bundle.class_name(label)} → predicted "
            f"{bundle.class_name(prediction)}{mark}"
        )

    return describe


# ---------------------------------------------------------------------------------------------
# Background jobs
# ---------------------------------------------------------------------------------------------


def start_map_job(run_dir: Path) -> None:
    """Start a complete run's gradient-map job in the background, once (no failed one retried).

    Nothing starts with the synchronous runner (tests, scripts): the map is not worth blocking
    the page for; the Gradient-map page offers its button instead.
    """
    runner = cache.job_runner()
    if isinstance(runner, runs.SyncJobRunner):
        return
    if views.load_gradient_map(run_dir) is not None:
        return
    if runner.status(run_dir, views.MAP_JOB).state == "absent":
        try:
            runner.start(map_command(run_dir), run_dir, name=views.MAP_JOB)
        except DropinfError as error:
            show_error(error)


@st.fragment(run_every=1.0)
def job_panel(
    run_dir: Path,
    working: str,
    name: str | None = None,
    phases: Mapping[str, str] | None = None,
    cancel_key: str | None = None,
) -> None:
    """Live progress of one of a run's jobs; reruns the page when the job ends.

    A progress bar filled to ``done / total`` of the job's current phase, labelled with the
    phase (and, for a run over several checkpoints, which checkpoint and its epoch:
    ``views.ensemble_progress_text``), the throughput and the time left in the phase, and a
    Cancel button when asked for.

    Args:
        run_dir: The run the job belongs to.
        working: The label of a phase not named in ``phases``.
        name: The job's name (the map job, the retrain job); None for the run's compute job.
        phases: The job's phase names -> words.
        cancel_key: Widget key of a Cancel button; None shows none.
    """
    job = (run_dir,) if name is None else (run_dir, name)
    status = cache.job_runner().status(*job)
    watching = f"watching_{name or 'compute'}"
    if not status.is_active:
        if st.session_state.get(watching) == run_dir.name:
            st.session_state.pop(watching)
            st.rerun()
        return
    st.session_state[watching] = run_dir.name
    epochs = views.checkpoint_epochs(read_run_manifest(run_dir)) if name is None else []
    text = views.ensemble_progress_text(status, phases or {}, working, epochs)
    st.progress(status.fraction, text=text)
    cols = st.columns([1, 1, 1])
    speed = f"{status.examples_per_s:,.0f}" if status.examples_per_s else "—"
    cols[0].metric("Examples / s", speed)
    cols[1].metric("ETA", views.human_seconds(status.eta_s) if status.eta_s is not None else "—")
    if cancel_key and cols[2].button("Cancel", icon=":material/stop_circle:", key=cancel_key):
        cache.job_runner().cancel(*job)
        st.rerun()
