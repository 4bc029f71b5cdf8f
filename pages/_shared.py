"""Shared page plumbing of the dashboard: page setup, session context, cached loaders, widgets.

Everything here is glue between Streamlit and the ``dropinf`` API: it decides what is cached per
session or per server, which model / dataset / run is current, and how a gallery of thumbnails is
laid out. No influence math and no file formats live here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from dropinf import data, models, paths, review, runs, views
from dropinf.errors import DropinfError
from dropinf.store import RunStore

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

    A run named in the URL wins (a shared link); otherwise the session's run is written back to
    the URL (navigation between pages drops query parameters).
    """
    from_url = st.query_params.get("run")
    if from_url and from_url != st.session_state.get(RUN_KEY):
        if (paths.runs_dir() / from_url).is_dir():
            select_run(from_url)
        else:
            st.query_params.pop("run", None)
    elif not from_url and st.session_state.get(RUN_KEY):
        st.query_params["run"] = st.session_state[RUN_KEY]


def select_run(key: str | None) -> None:
    """Make a run current (session and URL) and adopt its model and data when none is loaded.

    Args:
        key: The run key (its folder name under the runs directory), or None to clear.
    """
    if not key:
        st.session_state.pop(RUN_KEY, None)
        st.query_params.pop("run", None)
        return
    st.session_state[RUN_KEY] = key
    st.query_params["run"] = key
    context = context_from_run(paths.runs_dir() / key)
    if context is not None and current_context() != context:
        st.session_state[CONTEXT_KEY] = context


def context_from_run(run_dir: Path) -> Context | None:
    """The model and data a run was computed from, read from its manifest's provenance.

    Args:
        run_dir: The run directory.

    Returns:
        The context, or None when the manifest is missing or lacks provenance.
    """
    try:
        provenance = RunStore(run_dir).read_manifest().get("provenance", {})
    except DropinfError:
        return None
    if not provenance.get("checkpoint") or not provenance.get("data_spec"):
        return None
    return Context(
        checkpoint=str(provenance["checkpoint"]),
        data_spec=str(provenance["data_spec"]),
        arch=provenance.get("arch"),
        arch_args=json.dumps(provenance.get("arch_args") or {}, sort_keys=True),
        title=Path(str(provenance["checkpoint"])).name,
    )


def current_context() -> Context | None:
    """The loaded model + dataset of this session, if any."""
    return st.session_state.get(CONTEXT_KEY)


def set_context(context: Context) -> None:
    """Load a new model + dataset; the current run is cleared when it was made from another."""
    st.session_state[CONTEXT_KEY] = context
    key = st.session_state.get(RUN_KEY)
    if key and context_from_run(paths.runs_dir() / key) != context:
        select_run(None)


def current_run_dir() -> Path | None:
    """The directory of the selected run, or None."""
    key = st.session_state.get(RUN_KEY)
    if not key:
        return None
    run_dir = paths.runs_dir() / key
    return run_dir if run_dir.is_dir() else None


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
    """The model and dataset of a context, checked to fit each other.

    Raises:
        DropinfError: When either cannot be loaded or they do not fit.
    """
    loaded = load_model(context.checkpoint, context.arch, context.arch_args)
    bundle = load_bundle(context.data_spec)
    models.check_model_fits_data(loaded.model, bundle)
    return loaded, bundle


def ensure_demo() -> Context:
    """The demo context, training and caching its checkpoint on first use."""
    with st.spinner("Preparing the demo model (first use trains a small CNN)…"):
        from dropinf.train import ensure_demo_checkpoint

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
        st.html(
            '<div class="dropinf-sidebar-card">'
            f"<b>Model</b><br>{model}<br><b>Dataset</b><br>{dataset}<br><b>Run</b><br>{run}</div>"
        )
        _run_picker()


def _run_picker() -> None:
    """A selectbox over the finished runs; choosing one makes it current."""
    finished = [row["key"] for row in runs.list_runs() if row.get("status") == "complete"]
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


def caption_html(lines: Sequence[str]) -> str:
    """A compact multi-line caption for a thumbnail (already escaped HTML parts)."""
    return '<div class="dropinf-caption">' + "<br>".join(lines) + "</div>"


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
        captions: One HTML caption per index (see ``caption_html``).
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


def class_name(bundle: data.DatasetBundle, label: int) -> str:
    """The display name of a class index."""
    label = int(label)
    if 0 <= label < len(bundle.class_names):
        return str(bundle.class_names[label])
    return str(label)


def context_dict(context: Context) -> dict[str, Any]:
    """A JSON-ready dict of a context (for display)."""
    return asdict(context)


def as_int_array(values: Any) -> np.ndarray:
    """An int64 numpy view of labels coming from the store."""
    return np.asarray(values).astype(np.int64, copy=False)


@st.cache_data(show_spinner="Evaluating the model…", max_entries=16)
def model_facts(context: Context) -> dict[str, Any]:
    """Parameters, capturable layers, accuracies and class balance of a model + dataset pair.

    Args:
        context: The loaded context (the cache key).

    Returns:
        ``parameters`` (int), ``layers`` (list of dicts), ``train_accuracy`` and
        ``test_accuracy`` (floats), ``class_balance`` (DataFrame with ``class``, ``examples``).
    """
    from dropinf.train import evaluate

    loaded, bundle = load_context(context)
    train_accuracy, _ = evaluate(loaded.model, bundle.train)
    test_accuracy, _ = evaluate(loaded.model, bundle.test)
    counts = np.bincount(as_int_array(bundle.train.labels.numpy()), minlength=bundle.num_classes)
    return {
        "parameters": models.count_parameters(loaded.model),
        "layers": capturable_layers(loaded.model),
        "train_accuracy": train_accuracy,
        "test_accuracy": test_accuracy,
        "class_balance": pd.DataFrame({"class": bundle.class_names, "examples": counts}),
    }


def capturable_layers(model: Any) -> list[dict[str, Any]]:
    """The layers whose per-sample gradients a run captures, as table rows.

    Raises:
        NoCapturableLayerError: When the model has none.
    """
    from dropinf.capture import discover_layers

    return [
        {"layer": spec.name, "kind": spec.kind, "parameters": spec.full_dim}
        for spec in discover_layers(model).specs
    ]


@st.cache_data(show_spinner="Estimating k, store size and time…", max_entries=64)
def run_estimate(context: Context, compression: Any, curvature: Any) -> dict[str, float]:
    """k, gradient-store size and a time estimate of a run, from timed samples on this machine.

    Time = one timed capture batch scaled to the training + test examples, plus the curvature
    blocks' dense algebra (``d³`` to factor, ``4·n·d²`` to accumulate and precondition each
    block of size d) at the measured matmul rate.

    Args:
        context: The loaded model + dataset.
        compression: The ``CompressionConfig`` of the run.
        curvature: The ``CurvatureConfig`` of the run.

    Returns:
        ``k`` (int), ``store_bytes`` (float16 store of the training set) and ``seconds``.
    """
    from dropinf.capture import discover_layers

    loaded, bundle = load_context(context)
    layout = discover_layers(loaded.model)
    capture = _timing_capture(loaded.model, layout, compression)
    per_example = _seconds_per_example(capture, bundle)
    n_examples = len(bundle.train) + len(bundle.test)
    kind = curvature.resolve_kind(capture.k)
    blocks = {"full": [capture.k], "block": [c.k for c in capture.compressors]}.get(kind, [])
    algebra = sum(d**3 + 4 * n_examples * d**2 for d in blocks) / _matmul_flops_per_s()
    return {
        "k": capture.k,
        "store_bytes": float(capture.k * len(bundle.train) * 2),
        "seconds": per_example * n_examples + algebra,
    }


def _timing_capture(model: Any, layout: Any, compression: Any) -> Any:
    """A gradient capture with the run's compressors (uniform masks: no calibration pass)."""
    from dataclasses import replace

    from dropinf.capture import GradientCapture
    from dropinf.compress import build_compressor

    timing = replace(compression, mask="uniform")
    compressors = [build_compressor(spec, timing, i) for i, spec in enumerate(layout.specs)]
    return GradientCapture(model, layout, compressors)


def _seconds_per_example(capture: Any, bundle: data.DatasetBundle) -> float:
    """Seconds one example takes through the capture (second of two timed batches)."""
    import time

    from torch.utils.data import DataLoader

    from dropinf.losses import cross_entropy_per_sample

    batch = next(iter(DataLoader(bundle.train, batch_size=64)))
    capture.capture(cross_entropy_per_sample, batch)
    started = time.perf_counter()
    capture.capture(cross_entropy_per_sample, batch)
    return (time.perf_counter() - started) / len(batch[0])


@st.cache_resource
def _matmul_flops_per_s() -> float:
    """Dense float32 matmul throughput of this machine (one 1024² product, timed)."""
    import time

    import torch

    matrix = torch.randn(1024, 1024)
    torch.mm(matrix, matrix)
    started = time.perf_counter()
    torch.mm(matrix, matrix)
    return 2 * 1024**3 / max(time.perf_counter() - started, 1e-9)


def human_bytes(size: float) -> str:
    """A byte count in B / KB / MB / GB / TB."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TB"


def human_seconds(seconds: float) -> str:
    """A duration as ``42 s``, ``3 min 5 s`` or ``2 h 10 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 1 else "< 1 s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"


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
            f"#{index} · {class_name(bundle, label)} → predicted "
            f"{class_name(bundle, prediction)}{mark}"
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
    suspects = np.asarray(meta["label"]) != np.asarray(meta["prediction"])
    for index in [*load_decisions(store.run_dir), *flagged(store.run_dir)]:
        suspects[int(index)] = True
    return suspects


def score_html(score: float) -> str:
    """A signed score coloured as proponent (+) or opponent (-)."""
    css = "score-pos" if score >= 0 else "score-neg"
    return f'<span class="{css}">{score:+.3g}</span>'


def train_caption(bundle: data.DatasetBundle, item: Any, suspects: np.ndarray) -> str:
    """Caption of a training thumbnail from a ``top_influences`` row."""
    index = int(item.train_index)
    flag = ' <span class="flag" title="suspect label">⚑</span>' if suspects[index] else ""
    return caption_html(
        [
            f"#{index}{flag} · {score_html(float(item.score))}",
            f"given <b>{class_name(bundle, item.given_label)}</b>"
            f' <span class="muted">pred {class_name(bundle, item.predicted_label)}</span>',
        ]
    )


def train_caption_for(
    bundle: data.DatasetBundle, meta: dict[str, np.ndarray], index: int, suspects: np.ndarray
) -> str:
    """Caption of a training thumbnail without a score (galleries of selections)."""
    flag = ' <span class="flag" title="suspect label">⚑</span>' if suspects[index] else ""
    return caption_html(
        [
            f"#{index}{flag}",
            f"given <b>{class_name(bundle, meta['label'][index])}</b>"
            f' <span class="muted">pred {class_name(bundle, meta["prediction"][index])}</span>',
        ]
    )


def test_caption(
    bundle: data.DatasetBundle, meta: dict[str, np.ndarray], index: int, score: float
) -> str:
    """Caption of a test thumbnail with the score a training example has on it."""
    return caption_html(
        [
            f"test #{index} · {score_html(score)}",
            f"true <b>{class_name(bundle, meta['label'][index])}</b>"
            f' <span class="muted">pred {class_name(bundle, meta["prediction"][index])}</span>',
        ]
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


def review_queue(store: RunStore, bundle: data.DatasetBundle) -> pd.DataFrame:
    """Training examples ranked by the mislabel score, with their review status."""
    meta = store.train_metadata()
    return review.review_queue(
        store.self_influence(),
        meta["label"],
        meta["prediction"],
        load_decisions(store.run_dir),
        class_names=bundle.class_names,
    )


def mislabel_scores(store: RunStore) -> dict[str, np.ndarray]:
    """The suspicion scores the detection panel compares, by display name."""
    meta = store.train_metadata()
    self_influence = store.self_influence()
    return {
        "mislabel score (queue order)": review.suspicion(
            self_influence, meta["label"], meta["prediction"]
        ),
        "self-influence": np.asarray(self_influence),
    }


@st.cache_resource(show_spinner="Opening the run's influence engine…", max_entries=4)
def influence_engine(run_dir: str, context: Context) -> Any:
    """The complete run reopened for queries (nothing is recomputed)."""
    from dropinf.engine import InfluenceEngine
    from dropinf.losses import cross_entropy_per_sample

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
    row = training_example_scores(str(store.run_dir), context, index).copy()
    row[index] = -np.inf  # an example is trivially its own strongest proponent
    meta = store.train_metadata()
    return views.top_influences(row, k, labels=meta["label"], predictions=meta["prediction"])


def retrain_report_path(run_dir: Path) -> Path:
    """Where the retraining report of a run's decisions is written."""
    return Path(run_dir) / "retrain_report.json"


def read_retrain_report(run_dir: Path) -> dict[str, Any] | None:
    """The last retraining report of a run, if any."""
    path = retrain_report_path(run_dir)
    return json.loads(path.read_text()) if path.is_file() else None


def suggested_label(item: Any, proponents: pd.DataFrame) -> int:
    """The label to propose for a queue item.

    The model's prediction when it disagrees with the given label; otherwise the most common
    given label among the item's strongest proponents (ties: the stronger proponent's label).

    Args:
        item: A ``review_queue`` row (``given_label``, ``predicted_label``).
        proponents: Its ``proponents_table`` (``given_label`` column, strongest first).
    """
    if int(item["predicted_label"]) != int(item["given_label"]) or proponents.empty:
        return int(item["predicted_label"])
    return int(proponents["given_label"].mode().iloc[0])


def flagged(run_dir: Path) -> list[int]:
    """Training examples flagged for review in this session (from the gradient map)."""
    return st.session_state.get("flagged", {}).get(Path(run_dir).name, [])


def flag_for_review(ids: Sequence[int]) -> None:
    """Flag training examples of the current run: they lead its review queue (a callback)."""
    run_dir = current_run_dir()
    if run_dir is None:
        return
    by_run = st.session_state.setdefault("flagged", {})
    by_run[run_dir.name] = list(dict.fromkeys([*map(int, ids), *by_run.get(run_dir.name, [])]))
    st.toast(f"Flagged {len(ids):,} examples: they lead the Label-issues queue.", icon="🚩")


def flagged_first(queue: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """The queue with this session's flagged examples moved to the front (in flag order)."""
    ids = flagged(run_dir)
    if not ids:
        return queue
    position = {index: order for order, index in enumerate(ids)}
    keys = queue["train_index"].map(lambda i: position.get(int(i), len(ids)))
    return queue.iloc[np.argsort(keys.to_numpy(), kind="stable")]


def image_to_inputs(bundle: data.DatasetBundle, content: bytes) -> Any:
    """An uploaded picture as a one-example input batch in the dataset's format.

    Image datasets hold (C, H, W) float32 pixels in [0, 1] (the loaders divide uint8 by 255), so
    the picture is converted to grey or RGB, resized to (H, W) and scaled the same way.

    Raises:
        DatasetError: When the bytes are not a picture or the dataset is not made of images.
    """
    import io

    import torch
    from PIL import Image, UnidentifiedImageError

    from dropinf.errors import DatasetError

    if len(bundle.input_shape) != 3 or bundle.input_shape[0] not in (1, 3):
        raise DatasetError(f"expected an image dataset (C, H, W); found {bundle.input_shape}")
    channels, height, width = bundle.input_shape
    try:
        image = Image.open(io.BytesIO(content)).convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(f"expected a PNG / JPEG / BMP picture; {error}") from None
    pixels = np.asarray(image.resize((width, height)), dtype=np.float32) / 255.0
    pixels = pixels[None] if channels == 1 else np.moveaxis(pixels, -1, 0)  # (C, H, W)
    return torch.from_numpy(np.ascontiguousarray(pixels))[None]  # (1, C, H, W)


def predict(context: Context, inputs: Any) -> int:
    """The model's predicted class of a one-example batch."""
    import torch

    loaded, _ = load_context(context)
    with torch.no_grad():
        return int(loaded.model(inputs).argmax(dim=1)[0])


def query_scores(run_dir: str, context: Context, inputs: Any, label: int) -> np.ndarray:
    """(n_train,) influence of every training example on a new example (a run query)."""
    import torch

    batch = (inputs, torch.tensor([label], dtype=torch.int64))
    return influence_engine(run_dir, context).query(batch)[0].numpy()
