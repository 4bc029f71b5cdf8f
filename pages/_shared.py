"""Shared page plumbing of the dashboard: page setup, session context, cached loaders, widgets.

Everything here is glue between Streamlit and the ``dropinf`` API: it decides what is cached per
session or per server, which model / dataset / run is current, and how a gallery of thumbnails is
laid out. No influence math and no file formats live here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
import torch
from streamlit.runtime.pages_manager import PagesManager

from dropinf import dashboard as views
from dropinf import data, models, paths, review
from dropinf import run as runs
from dropinf.core import CompressionConfig, CurvatureConfig
from dropinf.errors import DropinfError
from dropinf.run import RunStore

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CONTEXT_KEY = "dropinf_context"
RUN_KEY = "dropinf_run"
SYNC_KEY = "dropinf_sync_jobs"
DEMO_LABEL = "Demo: digits, 10% flipped labels, small CNN"


@dataclass(frozen=True)
class Context:
    """The model and dataset the analyst is working with.

    Attributes:
        checkpoint: Path of the checkpoint on the server.
        data_spec: Dataset spec understood by ``dropinf.data.load_data``.
        arch: Architecture name, or None to read it from the checkpoint's sidecar.
        arch_args: Architecture arguments as a JSON string (hashable for caching).
        title: A short human name shown in the sidebar.
    """

    checkpoint: str
    data_spec: str
    arch: str | None = None
    arch_args: str = "{}"
    title: str = ""

    def arch_kwargs(self) -> dict[str, Any] | None:
        """The architecture arguments as a dict, or None when none were given."""
        values = json.loads(self.arch_args)
        return values or None


# ---------------------------------------------------------------------------------------------
# Page setup and deep links
# ---------------------------------------------------------------------------------------------


def route_through_router() -> None:
    """Hand a page file that Streamlit ran on its own back to the router (``app.py``).

    Until ``st.navigation`` is first called, a fresh server treats the ``pages/`` folder as a
    multipage app of the first version: a deep link such as ``/explore?run=KEY`` runs
    ``pages/explore.py`` without the router (no run synced from the URL, ``app`` and ``shared``
    listed as pages). This switches that mode off and reruns the same URL, now through the router.
    It is called once, when this module is first imported, which is always within the first
    script run of a server.
    """
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


route_through_router()


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


def sync_run_with_url() -> None:
    """Keep the selected run in ``st.query_params`` so a URL reopens the same view.

    A run named in the URL wins (a shared link) when it is a run folder under the runs directory;
    any other key is dropped with a message. Otherwise the session's run is written back to the
    URL (navigation between pages drops query parameters).
    """
    from_url = st.query_params.get("run")
    if from_url and from_url != st.session_state.get(RUN_KEY):
        select_run(from_url)
    elif not from_url and st.session_state.get(RUN_KEY):
        st.query_params["run"] = st.session_state[RUN_KEY]


def select_run(key: str | None) -> None:
    """Make a run current (session and URL) and adopt its model and data.

    A key that is not a run folder under the runs directory, or a run whose model or data lies
    outside the readable folders (``paths.confine``), is refused with a message and clears the run.

    Args:
        key: The run key (its folder name under the runs directory), or None to clear.
    """
    try:
        run_dir = paths.run_dir_of(key) if key else None
        context = context_from_run(run_dir) if run_dir and run_dir.is_dir() else None
    except DropinfError as error:
        show_error(error)
        run_dir = None
    if run_dir is None or not run_dir.is_dir():
        st.session_state.pop(RUN_KEY, None)
        st.query_params.pop("run", None)
        return
    st.session_state[RUN_KEY] = run_dir.name
    st.query_params["run"] = run_dir.name
    if context is not None and current_context() != context:
        st.session_state[CONTEXT_KEY] = context


def context_from_run(run_dir: Path) -> Context | None:
    """The model and data a run was computed from, read from its manifest's provenance.

    Args:
        run_dir: The run directory.

    Returns:
        The context, or None when the manifest is missing or lacks provenance.

    Raises:
        ConfigError: The provenance's checkpoint or data lies outside the readable folders.
    """
    try:
        provenance = RunStore(run_dir).read_manifest().get("provenance", {})
    except DropinfError:
        return None
    if not provenance.get("checkpoint") or not provenance.get("data_spec"):
        return None
    checkpoint = paths.confine(str(provenance["checkpoint"]))
    return Context(
        checkpoint=str(checkpoint),
        data_spec=paths.confine_data_spec(str(provenance["data_spec"])),
        arch=provenance.get("arch"),
        arch_args=json.dumps(provenance.get("arch_args") or {}, sort_keys=True),
        title=checkpoint.name,
    )


def current_context() -> Context | None:
    """The loaded model + dataset of this session, if any."""
    return st.session_state.get(CONTEXT_KEY)


def set_context(context: Context) -> None:
    """Load a new model + dataset; the current run is cleared when it was made from another."""
    st.session_state[CONTEXT_KEY] = context
    run_dir = current_run_dir()
    if st.session_state.get(RUN_KEY) and (
        run_dir is None or _run_context_or_none(run_dir) != context
    ):
        select_run(None)


def _run_context_or_none(run_dir: Path) -> Context | None:
    """``context_from_run``, or None when its provenance is refused."""
    try:
        return context_from_run(run_dir)
    except DropinfError:
        return None


def open_context(context: Context) -> None:
    """Load a model + dataset and rerun on it, or show why it cannot be loaded."""
    try:
        load_context(context)
    except DropinfError as error:
        show_error(error)
        return
    set_context(context)
    st.rerun()


def current_run_dir() -> Path | None:
    """The directory of the selected run (confined to the runs directory), or None."""
    key = st.session_state.get(RUN_KEY)
    try:
        run_dir = paths.run_dir_of(key) if key else None
    except DropinfError:
        return None
    return run_dir if run_dir is not None and run_dir.is_dir() else None


# ---------------------------------------------------------------------------------------------
# Cached loaders (one per server process; the inputs are the cache keys)
# ---------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner="Loading the dataset…", max_entries=8)
def load_bundle(spec: str) -> data.DatasetBundle:
    """The dataset of a spec, loaded once per server.

    Raises:
        DatasetError: When the spec cannot be read.
    """
    return data.load_data(spec)


@st.cache_resource(show_spinner="Loading the checkpoint…", max_entries=8)
def load_model(checkpoint: str, arch: str | None, arch_args: str) -> models.LoadedCheckpoint:
    """The model of a checkpoint, loaded once per server (eval mode).

    Raises:
        CheckpointError: When the checkpoint cannot be read or does not fit the architecture.
    """
    return models.load_checkpoint(checkpoint, arch=arch, arch_args=json.loads(arch_args) or None)


def load_context(context: Context) -> tuple[models.LoadedCheckpoint, data.DatasetBundle]:
    """The model and dataset of a context, checked to lie in the readable folders and to fit.

    Raises:
        ConfigError: When the checkpoint or the data lies outside the readable folders.
        DropinfError: When either cannot be loaded or they do not fit.
    """
    checkpoint = paths.confine(context.checkpoint)
    bundle = load_bundle(paths.confine_data_spec(context.data_spec))
    loaded = load_model(str(checkpoint), context.arch, context.arch_args)
    models.check_model_fits_data(loaded.model, bundle)
    return loaded, bundle


def adopt_prepared_demo() -> None:
    """Open a new session on the demo when its checkpoint is already prepared.

    ``make run`` prepares it before the server starts, so the dashboard opens ready to use; an
    explicit choice (a loaded model, a run in the URL) always wins.
    """
    from dropinf.models import demo_checkpoint_path

    checkpoint = demo_checkpoint_path()
    prepared = checkpoint.is_file() and models.sidecar_path(checkpoint).is_file()
    if current_context() is None and prepared:
        demo = Context(checkpoint=str(checkpoint), data_spec=data.DEMO_DATA_SPEC, title="demo")
        st.session_state[CONTEXT_KEY] = demo


def ensure_demo() -> Context:
    """The demo context, training and caching its checkpoint on first use."""
    with st.spinner("Preparing the demo model (first use trains a small CNN)…"):
        from dropinf.models import ensure_demo_checkpoint

        checkpoint = ensure_demo_checkpoint()
    return Context(checkpoint=str(checkpoint), data_spec=data.DEMO_DATA_SPEC, title="demo")


# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------


def job_runner() -> runs.JobRunner:
    """The runner of background jobs: synchronous in tests, child processes otherwise.

    Tests swap in ``runs.SyncJobRunner`` by setting ``st.session_state["dropinf_sync_jobs"]`` or
    the environment variable ``DROPINF_SYNC_JOBS=1``.
    """
    if st.session_state.get(SYNC_KEY) or os.environ.get("DROPINF_SYNC_JOBS") == "1":
        return runs.SyncJobRunner()
    return _background_runner()


@st.cache_resource
def _background_runner() -> runs.JobRunner:
    """The one background runner of this server process (it reaps its children)."""
    return runs.JobRunner()


# ---------------------------------------------------------------------------------------------
# Widgets
# ---------------------------------------------------------------------------------------------


def show_error(error: Exception) -> None:
    """Show a dropinf error's own message (never a traceback)."""
    st.error(str(error), icon=":material/error:")


def require_context() -> Context | None:
    """The current context, or an info box pointing at the Load page."""
    context = current_context()
    if context is None:
        st.info("No model loaded yet. Start on the **Load** page.", icon=":material/info:")
        st.page_link("pages/load.py", label="Go to Load", icon=":material/upload:")
    return context


def require_complete_run() -> RunStore | None:
    """The store of the selected run when it is complete, else guidance and None."""
    run_dir = current_run_dir()
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
        context = current_context()
        run_dir = current_run_dir()
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
        if row.get("status") == "complete" and _is_run_key(row["key"])
    ]
    if not finished:
        return
    current = st.session_state.get(RUN_KEY)
    options = [current, *[key for key in finished if key != current]] if current else finished
    st.selectbox(
        "Open a finished run",
        options,
        index=0 if current else None,
        key="sidebar_run_picker",
        placeholder="choose a run",
        on_change=lambda: select_run(st.session_state["sidebar_run_picker"]),
    )


def _is_run_key(key: str) -> bool:
    """True when ``key`` names a run folder inside the runs directory (``paths.run_dir_of``)."""
    try:
        paths.run_dir_of(key)
    except DropinfError:
        return False
    return True


def gallery(
    bundle: data.DatasetBundle,
    split: str,
    indices: Sequence[int],
    captions: Sequence[str],
    columns: int = 6,
    on_open: Callable[[int], None] | None = None,
    key: str = "gallery",
) -> None:
    """A grid of thumbnails with captions and an optional "open" button under each.

    Args:
        bundle: The dataset the indices point into.
        split: ``"train"`` or ``"test"``.
        indices: Example indices, in display order.
        captions: One HTML caption per index (``views.train_caption_html`` and kin).
        columns: Thumbnails per row.
        on_open: Called with the index when its button is pressed.
        key: Widget-key prefix, unique per gallery on the page.
    """
    for start in range(0, len(indices), columns):
        row = st.columns(columns)
        for column, index, caption in zip(
            row, indices[start : start + columns], captions[start : start + columns], strict=False
        ):
            with column:
                st.image(thumbnail(bundle, split, int(index)), width="stretch")
                st.html(caption)
                if on_open is not None:
                    st.button(
                        f"#{index}",
                        key=f"{key}-{index}",
                        on_click=on_open,
                        args=(int(index),),
                        type="tertiary",
                        icon=":material/open_in_new:",
                    )


def thumbnail(bundle: data.DatasetBundle, split: str, index: int) -> bytes:
    """A PNG thumbnail of one example, upscaled without blurring."""
    return views.thumbnail_png(bundle.thumbnail(split, index))


@st.cache_data(show_spinner="Evaluating the model…", max_entries=16)
def model_facts(context: Context) -> dict[str, Any]:
    """Parameters, capturable layers, accuracies and class balance of a model + dataset pair.

    Args:
        context: The loaded context (the cache key).

    Returns:
        ``parameters`` (int), ``layers`` (DataFrame, ``views.layer_table``), ``train_accuracy``
        and ``test_accuracy`` (floats), ``class_balance`` (DataFrame, ``views.class_balance``).
    """
    from dropinf.models import evaluate

    loaded, bundle = load_context(context)
    train_accuracy, _ = evaluate(loaded.model, bundle.train)
    test_accuracy, _ = evaluate(loaded.model, bundle.test)
    return {
        "parameters": models.count_parameters(loaded.model),
        "layers": views.layer_table(loaded.model),
        "train_accuracy": train_accuracy,
        "test_accuracy": test_accuracy,
        "class_balance": views.class_balance(bundle.train.labels.numpy(), bundle.class_names),
    }


@st.cache_data(show_spinner="Estimating k, store size and time…", max_entries=64)
def run_estimate(
    context: Context, compression: CompressionConfig, curvature: CurvatureConfig
) -> runs.RunEstimate:
    """The estimate of a run of the loaded model + dataset (``runs.estimate_run``), cached.

    Raises:
        DropinfError: When the context cannot be loaded or the model has no capturable layer.
    """
    loaded, bundle = load_context(context)
    return runs.estimate_run(loaded.model, bundle, compression, curvature)


# ---------------------------------------------------------------------------------------------
# Explore helpers
# ---------------------------------------------------------------------------------------------


def url_int(name: str, default: int) -> int:
    """An integer query parameter, or ``default`` when absent or malformed."""
    try:
        return int(st.query_params.get(name, default))
    except (TypeError, ValueError):
        return default


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


def open_train_detail(index: int | None) -> None:
    """Open (or, with None, close) the detail of a training example."""
    st.session_state["train_detail"] = index


def top_examples(store: RunStore, row: np.ndarray, k: int, sign: float) -> pd.DataFrame:
    """The k strongest proponents (sign +1) or opponents (sign -1) of a scores row."""
    meta = store.train_metadata()
    return views.top_influences(
        row, k, labels=meta["label"], predictions=meta["prediction"], opponents=sign < 0
    )


def suspect_mask(store: RunStore) -> np.ndarray:
    """True for examples flagged, decided, or whose prediction differs from the given label."""
    meta = store.train_metadata()
    return review.suspect_mask(
        meta["label"], meta["prediction"], load_decisions(store.run_dir), load_flags(store.run_dir)
    )


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
    return views.train_caption_html(index, given_name, predicted_name, bool(suspects[index]), score)


def test_caption(
    bundle: data.DatasetBundle, meta: dict[str, np.ndarray], index: int, score: float
) -> str:
    """Caption of a test thumbnail with the score a training example has on it."""
    true, predicted = meta["label"][index], meta["prediction"][index]
    return views.test_caption_html(
        index, bundle.class_name(true), bundle.class_name(predicted), score
    )


# ---------------------------------------------------------------------------------------------
# Review decisions
# ---------------------------------------------------------------------------------------------


def load_decisions(run_dir: Path) -> dict[int, review.Decision]:
    """The run's decisions by training index (empty when none were made)."""
    return review.load_decisions(review.decisions_path(run_dir))


def decide(run_dir: Path, indices: Sequence[int], action: str, label: int | None = None) -> None:
    """Record one decision for each of ``indices`` (a button callback).

    Args:
        run_dir: The run whose ``decisions.json`` is updated.
        indices: Training indices.
        action: ``keep``, ``relabel`` or ``remove``.
        label: The new label for ``relabel``.
    """
    decision = review.decide(action, label)
    review.update_decisions(review.decisions_path(run_dir), {int(i): decision for i in indices})
    st.session_state["last_decision"] = (list(indices), action, label)


def undo_last_decision(run_dir: Path) -> None:
    """Clear the decisions made by the last button press (a button callback)."""
    indices, _, _ = st.session_state.pop("last_decision", ([], None, None))
    review.update_decisions(review.decisions_path(run_dir), {int(i): None for i in indices})


def pending_queue(store: RunStore, bundle: data.DatasetBundle) -> pd.DataFrame:
    """Undecided training examples: flagged ones first, then by the mislabel score."""
    meta = store.train_metadata()
    return review.review_queue(
        store.self_influence(),
        meta["loss"],
        meta["label"],
        meta["prediction"],
        load_decisions(store.run_dir),
        class_names=bundle.class_names,
        include_decided=False,
        flags=load_flags(store.run_dir),
    )


def mislabel_scores(store: RunStore) -> dict[str, np.ndarray]:
    """The suspicion scores the detection panel compares, by display name."""
    return review.mislabel_scores(store.self_influence(), store.train_metadata()["loss"])


@st.cache_resource(show_spinner="Opening the run's influence engine…", max_entries=4)
def influence_engine(run_dir: str, context: Context) -> Any:
    """The complete run reopened for queries (nothing is recomputed)."""
    from dropinf.core import cross_entropy_per_sample
    from dropinf.engine import InfluenceEngine

    loaded, _ = load_context(context)
    return InfluenceEngine.load(run_dir, loaded.model, cross_entropy_per_sample, device="cpu")


@st.cache_data(show_spinner=False, max_entries=256)
def training_example_scores(run_dir: str, context: Context, index: int) -> np.ndarray:
    """(n_train,) influence of every training example on one training example (a query)."""
    _, bundle = load_context(context)
    inputs, label = bundle.train[index]
    batch = (inputs.unsqueeze(0), label.reshape(1))
    return influence_engine(run_dir, context).query(batch)[0].numpy()


def proponents_table(store: RunStore, context: Context, index: int, k: int) -> pd.DataFrame:
    """The k strongest proponents of a training example among the others."""
    row = training_example_scores(str(store.run_dir), context, index)
    meta = store.train_metadata()
    return views.top_influences(
        row, k, labels=meta["label"], predictions=meta["prediction"], exclude=[index]
    )


def load_flags(run_dir: Path) -> list[int]:
    """The run's flagged training examples, most recently flagged first."""
    return review.load_flags(review.decisions_path(run_dir))


def flag_for_review(run_dir: Path, ids: Sequence[int]) -> None:
    """Flag training examples: they lead the run's review queue (a button callback)."""
    review.update_flags(review.decisions_path(run_dir), add=ids)
    st.toast(f"Flagged {len(ids):,} examples: they lead the Label-issues queue.", icon="🚩")


def unflag(run_dir: Path, ids: Sequence[int]) -> None:
    """Clear the flags of training examples (a button callback)."""
    review.update_flags(review.decisions_path(run_dir), remove=ids)


def predict(context: Context, inputs: torch.Tensor) -> int:
    """The model's predicted class of a one-example batch."""
    loaded, _ = load_context(context)
    with torch.no_grad():
        return int(loaded.model(inputs).argmax(dim=1)[0])


def query_scores(run_dir: str, context: Context, inputs: torch.Tensor, label: int) -> np.ndarray:
    """(n_train,) influence of every training example on a new example (a run query)."""
    batch = (inputs, torch.tensor([label], dtype=torch.int64))
    return influence_engine(run_dir, context).query(batch)[0].numpy()
