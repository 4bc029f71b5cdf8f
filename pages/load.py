"""Load: the embedded demo, or a model checkpoint and a dataset of your own."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import streamlit as st

from dropinf import dashboard as views
from dropinf import data, models, paths
from dropinf import run as runs
from dropinf.errors import ConfigError, DropinfError
from pages import _cache as cache
from pages import _state as state
from pages import _widgets as ui

T = TypeVar("T")


def demo_panel() -> None:
    """The one-click demos: the default (a small CNN) or the memorising MLP."""
    st.markdown(
        "The **embedded demos** use the scikit-learn digits (8×8 greyscale) with training "
        "labels **flipped on purpose**. The flipped labels are known, so the Label-issues page "
        "can score how well influence finds them."
    )
    preset = st.radio(
        "Demo", list(models.DEMO_PRESETS), key="demo_preset", horizontal=True,
        format_func=lambda name: DEMO_NAMES.get(name, name),
        captions=[DEMO_NOTES.get(name, models.DEMO_PRESETS[name].description)
                  for name in models.DEMO_PRESETS],
    )  # fmt: skip
    whole = st.toggle(
        "Its whole training trajectory", key="demo_trajectory",
        help="The checkpoints kept while the demo trained (epochs 1, 2, 4, 8, … and the last): "
        "one run over all of them combines their scores, which finds the flipped labels a "
        "model that memorised them hides, and shows when in training each one was learned.",
    )  # fmt: skip
    if st.button("Load the demo", type="primary", icon=":material/rocket_launch:", key="load_demo"):
        try:
            context = cache.ensure_demo(preset, whole_trajectory=whole)
        except DropinfError as error:
            ui.show_error(error)
            return
        ui.open_context(context)


DEMO_NAMES = {"default": "Default", "memorising": "Memorising"}
DEMO_NOTES = {
    "default": "A small CNN, 10% of the labels flipped (about 6 s to train on first use). "
    "The training loss finds the flips as well as influence does.",
    "memorising": "An MLP trained to memorise 20% flipped labels, no weight decay (about "
    "30 s on first use). It fits the wrong labels, so their loss is low: see the AUC gap "
    "between influence and the loss on the Label-issues page.",
}


DATA_ROOT_ENV = "DROPINF_DATA_ROOT"
PICK_PLACEHOLDER = "choose one found under the data root"


def data_root_note(finds: views.Finds) -> None:
    """Say where server-side paths are read from, how to change it, and what was found there."""
    root, value = paths.data_root(), os.environ.get(DATA_ROOT_ENV)
    setting = (
        f"`{DATA_ROOT_ENV}={value}`" if value else f"`{DATA_ROOT_ENV}` is not set: the dropinf home"
    )
    more = " (the search stopped early: type a deeper path below)" if finds.truncated else ""
    st.info(
        f"**Data root** `{root}` ({setting}). Server paths below are read inside it only. "
        f"To use another folder, restart the server with `{DATA_ROOT_ENV}=/path/to/data make run`. "
        f"Found {len(finds.datasets)} dataset(s) and {len(finds.checkpoints)} checkpoint(s)"
        f"{more}.",
        icon=":material/folder_open:",
    )


def picker(label: str, found: list[str], target: str, key: str) -> None:
    """A selectbox over paths found under the data root that fills the text field ``target``."""

    def fill() -> None:
        if st.session_state.get(key):
            st.session_state[target] = st.session_state[key]

    st.selectbox(
        label, found, index=None, key=key, on_change=fill, placeholder=PICK_PLACEHOLDER,
        disabled=not found,
    )  # fmt: skip


CHECKPOINT_SOURCES = ["Upload", "Path on the server", "Several: a training trajectory"]


def checkpoint_input(finds: views.Finds) -> tuple[list[Path], str]:
    """The checkpoint widgets (upload, a path on the server picked or typed, or several).

    Returns:
        The checkpoint paths once given (else []; several for a trajectory, in no particular
        order yet), and the name to show for one (an upload's original file name, not its
        stored, hash-prefixed one).

    Raises:
        ConfigError: A path outside the data root, a missing file, or a bad upload name.
        CheckpointError: A folder without checkpoints.
    """
    source = st.radio("Checkpoint", CHECKPOINT_SOURCES, horizontal=True, key="ckpt_source")
    if source == CHECKPOINT_SOURCES[2]:
        return trajectory_input(finds), ""
    checkpoint, name = single_checkpoint_input(finds, source)
    return ([checkpoint] if checkpoint is not None else []), name


def trajectory_input(finds: views.Finds) -> list[Path]:
    """A folder of checkpoints (picked or typed), or several checkpoint files picked.

    Raises:
        ConfigError: A path outside the data root, or missing.
        CheckpointError: A folder without checkpoints.
    """
    picker("Checkpoint folders found", finds.checkpoint_folders, "ckpts_folder", "ckpts_pick")
    folder = st.text_input(
        "Checkpoint folder", key="ckpts_folder",
        help="A folder of checkpoints of one model saved while it trained (`python -m dropinf "
        f"train … --save-checkpoints DIR`), relative to the data root {paths.data_root()}.",
    )  # fmt: skip
    files = st.multiselect(
        "…or several checkpoint files", finds.checkpoints, key="ckpts_files",
        disabled=bool(folder.strip()), placeholder=PICK_PLACEHOLDER,
    )  # fmt: skip
    sources = [folder] if folder.strip() else files
    if not sources:
        return []
    return views.trajectory_files([paths.path_under_data_root(text) for text in sources])


def single_checkpoint_input(finds: views.Finds, source: str) -> tuple[Path | None, str]:
    """One checkpoint: uploaded, or a path on the server picked or typed.

    Raises:
        ConfigError: A path outside the data root, a missing file, or a bad upload name.
    """
    if source == "Upload":
        upload = st.file_uploader(
            "Checkpoint (.safetensors, .pt or .pth)",
            type=["safetensors", "pt", "pth"],
            key="ckpt_upload",
        )
        if upload is None:
            return None, ""
        return paths.save_upload(upload.getvalue(), upload.name), upload.name
    picker("Checkpoints found", finds.checkpoints, "ckpt_path", "ckpt_pick")
    text = st.text_input(
        "Checkpoint path", help=f"Relative to the data root {paths.data_root()}", key="ckpt_path"
    )
    if not text.strip():
        return None, ""
    checkpoint = paths.path_under_data_root(text)
    return checkpoint, checkpoint.name


def dataset_input(finds: views.Finds) -> str:
    """The dataset spec widgets: the builtin digits, or a path under the data root (+ options).

    Raises:
        DatasetError: A malformed spec.
        ConfigError: A path outside the data root, or missing.
    """
    picker("Datasets found", finds.datasets, "data_spec", "data_pick")
    text = st.text_input(
        "Dataset",
        value="digits",
        key="data_spec",
        help="A spec such as `digits:noise=0.1,seed=0`, or a path under the data root to an "
        ".npz file, an image folder or cifar-10-batches-py/, optionally followed by "
        "`:noise=0.1,seed=0`.",
    )
    if not text.strip():
        return ""
    source, _ = data.parse_spec(text)
    if source == "digits":
        return text.strip()
    options = text.strip()[len(source) :]  # ":noise=0.1,..." or ""
    return f"{paths.path_under_data_root(source)}{options}"


def guarded(read: Callable[[], T], empty: T) -> tuple[T, bool]:
    """Call a widget group; on a dropinf error show it and return ``empty`` (the form stays)."""
    try:
        return read(), True
    except DropinfError as error:
        ui.show_error(error)
        return empty, False


def architecture_input() -> tuple[str | None, dict | None]:
    """The architecture picker and its JSON arguments; (None, None) for the sidecar's."""
    choices = ["(from the checkpoint's sidecar)", *models.architectures()]
    arch = st.selectbox("Architecture", choices, key="arch")
    text = st.text_input("Architecture arguments (JSON)", value="{}", key="arch_args")
    try:
        arch_args = json.loads(text or "{}")
    except json.JSONDecodeError as error:
        ui.show_error(ConfigError(f"expected the arguments as a JSON object; found {error}"))
        return None, None
    if not isinstance(arch_args, dict):
        ui.show_error(ConfigError(f"expected a JSON object of arguments; found {text!r}"))
        return None, None
    return (None if arch.startswith("(") else arch), arch_args


def own_model_panel() -> None:
    """Architecture + checkpoint + dataset, loaded and checked together.

    Each group shows its own error and the rest of the form stays, so a bad path never hides
    the Dataset field or the Load button. An uploaded checkpoint with an architecture picked
    here gets a sidecar written next to it, so the background jobs can rebuild the model.
    """
    finds = views.find_inputs(paths.data_root())
    data_root_note(finds)
    arch, arch_args = architecture_input()
    (checkpoints, name), checkpoint_ok = guarded(lambda: checkpoint_input(finds), ([], ""))
    spec, spec_ok = guarded(lambda: dataset_input(finds), "")
    ready = bool(checkpoints) and bool(spec) and checkpoint_ok and spec_ok
    if st.button("Load model and data", type="primary", key="load_own", disabled=not ready):
        if len(checkpoints) == 1:
            load_own(checkpoints[0], name, spec, arch, arch_args or {})
        else:
            load_trajectory(checkpoints, spec, arch, arch_args or {})


def load_own(checkpoint: Path, name: str, spec: str, arch: str | None, arch_args: dict) -> None:
    """Open the context of a checkpoint + dataset; an upload's UI architecture goes in a sidecar."""
    if arch is not None and checkpoint.parent == paths.uploads_dir():
        try:
            models.write_sidecar(checkpoint, arch, arch_args, overwrite=True)
        except DropinfError as error:
            ui.show_error(error)
            return
    context = state.Context(
        checkpoint=str(checkpoint),
        data_spec=spec,
        arch=arch,
        arch_args=json.dumps(arch_args, sort_keys=True),
        title=name,
    )
    ui.open_context(context)


def load_trajectory(files: list[Path], spec: str, arch: str | None, arch_args: dict) -> None:
    """Open the context of several checkpoints (in epoch order) + dataset, or say why not."""
    arguments = json.dumps(arch_args, sort_keys=True)
    try:
        checkpoints = cache.trajectory_paths(files, arch, arguments)
    except DropinfError as error:
        ui.show_error(error)
        return
    context = state.Context(
        checkpoint=checkpoints[-1], data_spec=spec, arch=arch, arch_args=arguments,
        title=state.trajectory_title([Path(path) for path in checkpoints]),
        checkpoints=checkpoints,
    )  # fmt: skip
    ui.open_context(context)


def trajectory_note(context: state.Context) -> None:
    """For a training trajectory: how many checkpoints, their epochs, and what the summary shows."""
    if not context.checkpoints:
        return
    epochs = [runs.checkpoint_epoch(checkpoint) for checkpoint in cache.trajectory(context)]
    when = views.epochs_text(epochs)
    st.info(
        f"A training trajectory of **{len(context.checkpoints)} checkpoints**"
        f"{f' ({when})' if when else ''}: Compute makes one run over all of them and combines "
        "their scores. The summary below is the last checkpoint's (the final model).",
        icon=":material/timeline:",
    )


def summary(context: state.Context) -> None:
    """Parameters, capturable layers, accuracy and class balance of the loaded pair."""
    try:
        loaded, bundle = cache.load_context(context)
        facts = cache.model_facts(context)
    except DropinfError as error:
        ui.show_error(error)
        return
    st.subheader("Loaded")
    trajectory_note(context)
    st.caption(
        f"`{loaded.arch}` from `{context.title or Path(loaded.path).name}` · dataset "
        f"`{bundle.spec}` with {len(bundle.train):,} training and {len(bundle.test):,} test "
        "examples"
    )
    cols = st.columns(5)
    cols[0].metric("Parameters", f"{facts['parameters']:,}")
    cols[1].metric("Capturable layers", len(facts["layers"]))
    cols[2].metric("Train accuracy", f"{facts['train_accuracy']:.1%}")
    cols[3].metric("Test accuracy", f"{facts['test_accuracy']:.1%}")
    cols[4].metric("Classes", bundle.num_classes)
    left, right = st.columns([3, 2])
    with left:
        st.markdown("**Class balance (training set, given labels)**")
        st.bar_chart(facts["class_balance"], x="class", y="examples", color="#4C5FD5", height=240)
    with right:
        st.markdown("**Capturable layers**")
        st.dataframe(facts["layers"], hide_index=True, height=240)
    st.page_link("pages/compute.py", label="Next: compute influence", icon=":material/bolt:")


st.title("Load a model and its data")
demo_tab, own_tab = st.tabs(["Embedded demo", "Bring a model"])
with demo_tab:
    demo_panel()
with own_tab:
    own_model_panel()
if (context := state.current_context()) is not None:
    summary(context)
