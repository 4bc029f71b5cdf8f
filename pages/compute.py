"""Compute: configure a run, start it in the background, follow it, cancel or resume it."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import torch

from dropinf import dashboard as views
from dropinf import run as runs
from dropinf.cli import compute_command
from dropinf.core import (
    COMPRESSION_METHODS,
    CURVATURE_KINDS,
    MASK_STRATEGIES,
    CompressionConfig,
    CurvatureConfig,
    default_damping_text,
)
from dropinf.engine import COMBINATIONS, DEFAULT_COMBINATION
from dropinf.errors import DropinfError
from pages import _cache as cache
from pages import _state as state
from pages import _widgets as ui


def compression_form() -> CompressionConfig:
    """Compressor, mask, keep ratio and seed widgets.

    Raises:
        ConfigError: When the values do not make a valid config.
    """
    left, right = st.columns(2)
    method = left.selectbox(
        "Compressor",
        COMPRESSION_METHODS,
        index=0,
        key="method",
        help="`dropout` is the method; the others are baselines.",
    )
    mask = right.radio(
        "Dropout mask",
        MASK_STRATEGIES,
        index=MASK_STRATEGIES.index(CompressionConfig().mask),
        horizontal=True,
        key="mask",
        disabled=method != "dropout",
        help="`uniform` draws the kept units at random (the default, best LDS); `energy` keeps "
        "the busiest units.",
    )
    keep_ratio = left.slider(
        "Keep ratio",
        0.05,
        1.0,
        0.25,
        0.05,
        key="keep_ratio",
        help="Share of each layer's input and output units kept.",
    )
    seed = right.number_input("Seed", 0, 2**31 - 1, 0, key="seed")
    return CompressionConfig(method=method, keep_ratio=keep_ratio, seed=int(seed), mask=mask)


def curvature_form() -> CurvatureConfig:
    """Curvature kind and damping widgets.

    Raises:
        ConfigError: When the values do not make a valid config.
    """
    left, right = st.columns(2)
    kind = left.selectbox(
        "Curvature",
        CURVATURE_KINDS,
        index=0,
        key="curvature",
        help="`auto`: one k×k Fisher when k is small, else per-layer blocks.",
    )
    auto = right.checkbox(
        "Automatic damping",
        value=True,
        key="auto_damping",
        help="λ = ratio · mean diagonal of the Fisher (kfac / ekfac: per layer, of its mean "
        f"eigenvalue), the ratio measured per kind: {default_damping_text()}.",
    )
    ratio = None if auto else right.number_input(
        "Damping ratio", min_value=1e-6, value=1.0, format="%g", key="damping_ratio",
        help="λ as a multiple of the mean diagonal: larger k usually wants a larger ratio "
        "(bench/RESULTS.md §6).",
    )  # fmt: skip
    return CurvatureConfig(kind=kind, damping_ratio=ratio)


def device_choice() -> str:
    """The compute device: cuda when available, else cpu."""
    devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    return st.selectbox("Device", devices, index=0, key="device")


def processes_choice(device: str) -> int:
    """How many processes compute the run (torchrun, one per GPU); offered only on several GPUs.

    On the CPU or one GPU the run is one process, and no widget is shown.
    """
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    if gpus <= 1:
        return 1
    return int(st.number_input(
        "Processes (one per GPU)", 1, gpus, gpus, key="processes",
        help="More than one starts the run with torchrun on this machine: each process "
        "captures its share of the training set on its own GPU (docs/scale.md).",
    ))  # fmt: skip


def combination_choice(trajectory: list) -> str | None:
    """For a training trajectory: what it is, and how its checkpoints' scores are combined.

    Returns:
        The combination, or None for a run of one checkpoint.
    """
    if not trajectory:
        return None
    when = views.epochs_text([runs.checkpoint_epoch(checkpoint) for checkpoint in trajectory])
    st.info(
        f"One run over the **{len(trajectory)} checkpoints** of a training trajectory"
        f"{f' ({when})' if when else ''}: one run per checkpoint with this configuration, then "
        "their scores combined. The Label-issues page ranks by the combination and shows when "
        "in training each suspect was learned.",
        icon=":material/timeline:",
    )
    return st.selectbox(
        "Combination", COMBINATIONS, index=COMBINATIONS.index(DEFAULT_COMBINATION),
        key="combination",
        help="`tracin`: the learning-rate-weighted mean of the scores (TracIn's sum over "
        "checkpoints); `rank`: the mean rank; `standardised`: the mean z-score.",
    )  # fmt: skip


def estimate_panel(
    context: state.Context,
    compression: CompressionConfig,
    curvature: CurvatureConfig,
    models_count: int = 1,
) -> None:
    """The resulting k, store size and a time estimate for the chosen config (all models)."""
    try:
        estimate = cache.run_estimate(context, compression, curvature)
    except DropinfError as error:
        ui.show_error(error)
        return
    each = f" ({models_count} checkpoints)" if models_count > 1 else ""
    cols = st.columns(3)
    cols[0].metric("Compressed dimension k", f"{estimate.k:,}")
    cols[1].metric("Gradient store" + each, views.human_bytes(estimate.store_bytes * models_count))
    cols[2].metric(
        "Estimated time" + each,
        f"≈ {views.human_seconds(estimate.seconds * models_count)}",
        help="The job's start-up, a timed capture batch, and the curvature algebra and "
        "scoring at this machine's measured speed (once per checkpoint); on a busy machine it "
        "takes longer.",
    )


STARTED_KEY = "compute_started"


def start(request: runs.RunRequest, run_dir: Path, processes: int = 1) -> None:
    """Start (or resume) the compute job of a request and make its run current."""
    try:
        command = compute_command(request, run_dir, processes=processes)
        cache.job_runner().start(command, run_dir)
    except DropinfError as error:
        ui.show_error(error)
        return
    st.session_state[STARTED_KEY] = run_dir.name
    ui.show_error(state.select_run(run_dir.name))


PHASES = {
    "calibrate": "Calibrating the energy masks",
    "gradients": "Capturing the training gradients",
    "curvature": "Fitting the curvature",
    "self_influence": "Computing self-influence",
    "test_scores": "Scoring the test set",
    "ensemble": "Combining the checkpoints' scores (ensemble)",
    "done": "Finishing",
}


def run_panel(request: runs.RunRequest, run_dir: Path, processes: int = 1) -> None:
    """What the run of this config is doing: finished (reuse), running, stopped, or absent."""
    status = cache.job_runner().status(run_dir)
    models = f"{len(request.checkpoints)} checkpoints" if request.is_ensemble else "model"
    combined = f" + {request.combination}" if request.is_ensemble else ""
    st.caption(f"Run key `{run_dir.name}` ({models} + data + config{combined}, content-addressed)")
    if status.state == "complete":
        complete_panel(run_dir)
    elif status.state in ("queued", "running"):
        ui.job_panel(run_dir, "Starting the job", phases=PHASES, cancel_key="cancel")
    elif status.state in ("failed", "cancelled"):
        st.warning(f"The run was {status.state}." + (f" {status.error}" if status.error else ""))
        if st.button("Resume", type="primary", icon=":material/play_arrow:", key="resume"):
            start(request, run_dir, processes)
            st.rerun()
    elif st.button("Start", type="primary", icon=":material/play_arrow:", key="start"):
        start(request, run_dir, processes)
        st.rerun()


def complete_panel(run_dir: Path) -> None:
    """A finished run: made current, its gradient map started, and where to go next.

    A run this session started says it finished; one found already on disk says it is reused.
    """
    if st.session_state.get(STARTED_KEY) == run_dir.name:
        st.success("The run finished: its scores are ready.", icon=":material/check_circle:")
        ui.start_map_job(run_dir)
    else:
        st.success(
            "This model, data and configuration already ran: its results are reused.",
            icon=":material/check_circle:",
        )
    if st.session_state.get(state.RUN_KEY) != run_dir.name:
        ui.show_error(state.select_run(run_dir.name))
    st.page_link("pages/explore.py", label="Explore influence", icon=":material/search:")


def runs_table() -> None:
    """All runs under the dropinf home."""
    rows = runs.list_runs()
    st.subheader("Runs")
    if not rows:
        st.caption("No runs yet.")
        return
    st.dataframe(views.runs_table(rows), hide_index=True)


st.title("Compute influence")
if (context := ui.require_context()) is not None:
    try:
        loaded, bundle = cache.load_context(context)
        trajectory = cache.trajectory(context)
        combination = combination_choice(trajectory)
        compression = compression_form()
        curvature = curvature_form()
        device = device_choice()
        processes = processes_choice(device)
        estimate_panel(context, compression, curvature, max(len(trajectory), 1))
        arch, arch_args = cache.job_architecture(context)
        request = runs.RunRequest(
            checkpoint=Path(context.checkpoint),
            data_spec=context.data_spec,
            compression=compression,
            curvature=curvature,
            device=device,
            arch=arch,
            arch_args=arch_args,
            checkpoints=tuple(Path(path) for path in context.checkpoints),
            combination=combination,
        )
        digests = [checkpoint.sha256 for checkpoint in trajectory] or loaded.sha256
        run_dir = runs.run_dir_for(request, digests, bundle.fingerprint)
    except DropinfError as error:
        ui.show_error(error)
    else:
        run_panel(request, run_dir, processes)
runs_table()
