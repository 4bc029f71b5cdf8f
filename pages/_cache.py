"""Cached loaders of the dashboard: what is loaded or computed once per server, and the jobs.

Datasets, checkpoints, reopened influence engines and queries are cached by their inputs (the
cache keys); a run's review object is cached per run and manifest version. Background jobs run in
one runner per server, or synchronously in tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
import torch

from dropinf import dashboard as views
from dropinf import data, models, paths
from dropinf import run as runs
from dropinf.core import CompressionConfig, CurvatureConfig
from dropinf.errors import DropinfError
from dropinf.models.demo import DEFAULT_DEMO, demo_preset
from dropinf.review import RunReview, suggest_labels
from dropinf.run import RunStore
from pages._state import SYNC_KEY, Context, trajectory_title


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

    For a training trajectory the model is its last checkpoint, and every checkpoint is checked
    (``trajectory``).

    Raises:
        ConfigError: When the checkpoint or the data lies outside the readable folders.
        DropinfError: When either cannot be loaded or they do not fit.
    """
    checkpoint = paths.confine(context.checkpoint)
    bundle = load_bundle(paths.confine_data_spec(context.data_spec))
    loaded = load_model(str(checkpoint), context.arch, context.arch_args)
    models.check_model_fits_data(loaded.model, bundle)
    trajectory(context)
    return loaded, bundle


def trajectory(context: Context) -> list[models.LoadedCheckpoint]:
    """The checkpoints of a context's training trajectory, in its order ([] for one checkpoint).

    Raises:
        ConfigError: A checkpoint lies outside the readable folders.
        CheckpointError: One cannot be loaded, or they are fewer than two.
        CheckpointMismatchError: They are not of one architecture, shape and training set.
    """
    if not context.checkpoints:
        return []
    loaded = [
        load_model(str(paths.confine(path)), context.arch, context.arch_args)
        for path in context.checkpoints
    ]
    views.ordered_trajectory(loaded)  # checks them; the context keeps the order it was given
    return loaded


def trajectory_paths(sources: list[Path], arch: str | None, arch_args: str) -> tuple[str, ...]:
    """A folder of checkpoints or several files, as checkpoint paths in training order.

    Raises:
        ConfigError: A path outside the readable folders.
        CheckpointError, CheckpointMismatchError: See ``trajectory``.
    """
    files = views.trajectory_files([paths.confine(source) for source in sources])
    loaded = [load_model(str(path), arch, arch_args) for path in files]
    return tuple(str(checkpoint.path) for checkpoint in views.ordered_trajectory(loaded))


def job_architecture(context: Context) -> tuple[str | None, dict | None]:
    """The ``--arch`` / ``--arch-args`` a background job needs for the context's checkpoint.

    None when the checkpoint itself names the same architecture (its sidecar or metadata): the
    job reads it there, and the run key stays the one of the checkpoint alone.

    Returns:
        The architecture and its arguments, or ``(None, None)``.
    """
    if context.arch is None:
        return None, None
    wanted = (context.arch, json.loads(context.arch_args))
    try:
        saved = load_model(str(paths.confine(context.checkpoint)), None, "{}")
    except DropinfError:
        return wanted
    return (None, None) if (saved.arch, saved.arch_args) == wanted else wanted


def ensure_demo(preset: str = DEFAULT_DEMO, whole_trajectory: bool = False) -> Context:
    """The context of an embedded demo, training and caching its checkpoint on first use.

    Args:
        preset: The demo's name.
        whole_trajectory: The checkpoints kept while it trained (``models.demo_checkpoints_dir``)
            instead of the final model alone.

    Raises:
        ConfigError: No such preset.
    """
    demo = demo_preset(preset)
    with st.spinner(f"Preparing the demo model (first use trains {demo.description})…"):
        checkpoint = models.ensure_demo_checkpoint(progress=False, preset=preset)
    title = "demo" if preset == DEFAULT_DEMO else f"demo ({preset})"
    if not whole_trajectory:
        return Context(checkpoint=str(checkpoint), data_spec=demo.data_spec, title=title)
    folder = models.demo_checkpoints_dir(preset)
    checkpoints = trajectory_paths([folder], None, "{}")
    return Context(
        checkpoint=checkpoints[-1], data_spec=demo.data_spec, checkpoints=checkpoints,
        title=trajectory_title([Path(path) for path in checkpoints]),
    )  # fmt: skip


def run_review(store: RunStore, bundle: data.DatasetBundle) -> RunReview:
    """The review of a complete run, with the dataset's class names (cached per run version)."""
    stamp = store.manifest_path.stat().st_mtime_ns
    return _run_review(str(store.run_dir), tuple(bundle.class_names), stamp)


@st.cache_resource(max_entries=8)
def _run_review(run_dir: str, class_names: tuple[str, ...], stamp: int) -> RunReview:
    """One ``RunReview`` per run, class names and manifest version (``stamp``)."""
    return RunReview(RunStore(run_dir), class_names)


@st.cache_data(show_spinner="Evaluating the model…", max_entries=16)
def model_facts(context: Context) -> dict[str, Any]:
    """Parameters, capturable layers, accuracies and class balance of a model + dataset pair.

    Args:
        context: The loaded context (the cache key).

    Returns:
        ``parameters`` (int), ``layers`` (DataFrame, ``views.layer_table``), ``train_accuracy``
        and ``test_accuracy`` (floats), ``class_balance`` (DataFrame, ``views.class_balance``).
    """
    loaded, bundle = load_context(context)
    train_accuracy, _ = models.evaluate(loaded.model, bundle.train)
    test_accuracy, _ = models.evaluate(loaded.model, bundle.test)
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


def proponents_table(review: RunReview, context: Context, index: int, k: int) -> pd.DataFrame:
    """The k strongest proponents of a training example among the others."""
    row = training_example_scores(str(review.run_dir), context, index)
    meta = review.metadata
    return views.top_influences(
        row, k, labels=meta["label"], predictions=meta["prediction"], exclude=[index]
    )


def queue_suggestions(review: RunReview, context: Context) -> dict[int, int]:
    """Training index -> suggested label for the top of a complete run's queue.

    The top ``views.SUGGESTED_ROWS`` by the queue's score get ``review.suggest_labels`` from
    their influence rows (their stored gradients scored against the run); the review grid
    suggests the prediction for the others. Cached per run and manifest version.

    Raises:
        DropinfError: The run cannot be reopened for queries.
    """
    stamp = review.store.manifest_path.stat().st_mtime_ns
    return _queue_suggestions(str(review.run_dir), context, stamp, review)


@st.cache_data(show_spinner="Suggesting labels from influence…", max_entries=8)
def _queue_suggestions(
    run_dir: str, context: Context, stamp: int, _review: RunReview
) -> dict[int, int]:
    """``queue_suggestions`` keyed by run, context and manifest version (``_review`` unhashed)."""
    meta = _review.metadata
    order = views.top_indices(_review.primary_score())
    rows = views.influence_rows(influence_engine(run_dir, context), order)
    labels = suggest_labels(rows, order, meta["label"], meta["prediction"])
    return dict(zip(order.tolist(), labels.tolist(), strict=True))


def predict(context: Context, inputs: torch.Tensor) -> int:
    """The model's predicted class of a one-example batch."""
    loaded, _ = load_context(context)
    with torch.no_grad():
        return int(loaded.model(inputs).argmax(dim=1)[0])


def query_scores(run_dir: str, context: Context, inputs: torch.Tensor, label: int) -> np.ndarray:
    """(n_train,) influence of every training example on a new example (a run query)."""
    batch = (inputs, torch.tensor([label], dtype=torch.int64))
    return influence_engine(run_dir, context).query(batch)[0].numpy()


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
