"""Session state of the dashboard: the current model + dataset, the current run, the URL.

Which model, dataset and run a session works on lives in ``st.session_state`` under the keys
named here, and the run is mirrored in the URL (``?run=KEY``) so a link reopens the same view.
This module also hands a page that Streamlit ran on its own back to the router (``app.py``).
It draws nothing: refusals are returned for the caller to show.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from dropinf import data, models, paths
from dropinf.errors import DropinfError
from dropinf.run import RunStore

CONTEXT_KEY = "dropinf_context"
RUN_KEY = "dropinf_run"
SYNC_KEY = "dropinf_sync_jobs"
DETAIL_KEY = "train_detail"


@dataclass(frozen=True)
class Context:
    """The model and dataset the analyst is working with.

    Attributes:
        checkpoint: Path of the checkpoint on the server.
        data_spec: Dataset spec understood by ``dropinf.data.load_data``.
        arch: Architecture name, or None to read it from the checkpoint's sidecar.
        arch_args: Architecture arguments as a JSON string (hashable for caching).
        title: A short human name shown in the sidebar.
        checkpoints: A training trajectory: every checkpoint in training order, the last being
            ``checkpoint`` (the final model, used for queries and retraining); empty for one.
    """

    checkpoint: str
    data_spec: str
    arch: str | None = None
    arch_args: str = "{}"
    title: str = ""
    checkpoints: tuple[str, ...] = ()


def route_through_router() -> None:
    """Hand a page file that Streamlit ran on its own back to the router (``app.py``).

    Until ``st.navigation`` is first called, a fresh server treats the ``pages/`` folder as a
    multipage app of the first version: a deep link such as ``/explore?run=KEY`` runs
    ``pages/explore.py`` without the router (no run synced from the URL, ``app`` and the helper
    modules listed as pages). This switches that mode off and reruns the same URL, now through the
    router. It is called once, when this module is first imported, which is always within the
    first script run of a server (every page and the router import it).
    """
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


route_through_router()


def sync_run_with_url() -> DropinfError | None:
    """Keep the selected run in ``st.query_params`` so a URL reopens the same view.

    A run named in the URL wins (a shared link) when it is a run folder under the runs directory;
    any other key is dropped. Otherwise the session's run is written back to the URL (navigation
    between pages drops query parameters).

    Returns:
        Why the run in the URL was refused, or None.
    """
    from_url = st.query_params.get("run")
    if from_url and from_url != st.session_state.get(RUN_KEY):
        return select_run(from_url)
    if not from_url and st.session_state.get(RUN_KEY):
        st.query_params["run"] = st.session_state[RUN_KEY]
    return None


def select_run(key: str | None) -> DropinfError | None:
    """Make a run current (session and URL) and adopt its model and data.

    A key that is not a run folder under the runs directory, or a run whose model or data lies
    outside the readable folders (``paths.confine``), is refused and clears the run.

    Args:
        key: The run key (its folder name under the runs directory), or None to clear.

    Returns:
        Why the run was refused, or None.
    """
    refusal = None
    try:
        run_dir = paths.run_dir_of(key) if key else None
        context = context_from_run(run_dir) if run_dir and run_dir.is_dir() else None
    except DropinfError as error:
        refusal, run_dir = error, None
    if run_dir is None or not run_dir.is_dir():
        st.session_state.pop(RUN_KEY, None)
        st.query_params.pop("run", None)
        return refusal
    st.session_state[RUN_KEY] = run_dir.name
    st.query_params["run"] = run_dir.name
    if context is not None and current_context() != context:
        st.session_state[CONTEXT_KEY] = context
    return None


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
    listed = provenance.get("checkpoints")
    trajectory = [paths.confine(str(path)) for path in listed] if isinstance(listed, list) else []
    several = len(trajectory) > 1
    return Context(
        checkpoint=str(checkpoint),
        data_spec=paths.confine_data_spec(str(provenance["data_spec"])),
        arch=provenance.get("arch"),
        arch_args=json.dumps(provenance.get("arch_args") or {}, sort_keys=True),
        title=trajectory_title(trajectory) if several else checkpoint_title(checkpoint),
        checkpoints=tuple(str(path) for path in trajectory) if several else (),
    )


def trajectory_title(checkpoints: list[Path]) -> str:
    """The name to show for a training trajectory: its folder and how many checkpoints."""
    folders = {path.parent for path in checkpoints}
    where = f"{checkpoints[-1].parent.name}: " if len(folders) == 1 else ""
    return f"{where}{len(checkpoints)} checkpoints"


def checkpoint_title(checkpoint: Path) -> str:
    """The name to show for a checkpoint: an upload's original name, any other file's own.

    An upload is stored under its content hash and its original name (``paths.save_upload``);
    the hash prefix means nothing to the analyst and is left out.
    """
    prefix, _, original = checkpoint.name.partition("-")
    uploaded = checkpoint.parent == paths.uploads_dir() and len(prefix) == 16 and original
    return original if uploaded else checkpoint.name


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


def current_run_dir() -> Path | None:
    """The directory of the selected run (confined to the runs directory), or None."""
    key = st.session_state.get(RUN_KEY)
    try:
        run_dir = paths.run_dir_of(key) if key else None
    except DropinfError:
        return None
    return run_dir if run_dir is not None and run_dir.is_dir() else None


def is_run_key(key: str) -> bool:
    """True when ``key`` names a run folder inside the runs directory (``paths.run_dir_of``)."""
    try:
        paths.run_dir_of(key)
    except DropinfError:
        return False
    return True


def adopt_prepared_demo() -> None:
    """Open a new session on the demo when its checkpoint is already prepared.

    ``make run`` prepares it before the server starts, so the dashboard opens ready to use; an
    explicit choice (a loaded model, a run in the URL) always wins.
    """
    checkpoint = models.demo_checkpoint_path()
    prepared = checkpoint.is_file() and models.sidecar_path(checkpoint).is_file()
    if current_context() is None and prepared:
        demo = Context(checkpoint=str(checkpoint), data_spec=data.DEMO_DATA_SPEC, title="demo")
        st.session_state[CONTEXT_KEY] = demo


def url_int(name: str, default: int) -> int:
    """An integer query parameter, or ``default`` when absent or malformed."""
    try:
        return int(st.query_params.get(name, default))
    except (TypeError, ValueError):
        return default


def open_train_detail(index: int | None) -> None:
    """Open (or, with None, close) the detail of a training example (a button callback)."""
    st.session_state[DETAIL_KEY] = index
