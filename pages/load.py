"""Load: the embedded demo, or a model checkpoint and a dataset of your own."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from dropinf import data, models, paths
from dropinf.errors import DropinfError
from pages import _cache as cache
from pages import _state as state
from pages import _widgets as ui


def demo_panel() -> None:
    """The one-click demo: digits with 10% flipped labels and its small CNN."""
    st.markdown(
        "The **embedded demo** is the scikit-learn digits (8×8 greyscale) with **10% of the "
        "training labels flipped** on purpose, and a small CNN trained on them. The flipped "
        "labels are known, so the Label-issues page can score how well influence finds them."
    )
    if st.button("Load the demo", type="primary", icon=":material/rocket_launch:", key="load_demo"):
        try:
            context = cache.ensure_demo()
        except DropinfError as error:
            ui.show_error(error)
            return
        ui.open_context(context)


def checkpoint_input() -> Path | None:
    """The checkpoint widgets (upload or server path); its path once given, else None."""
    source = st.radio(
        "Checkpoint", ["Upload", "Path on the server"], horizontal=True, key="ckpt_source"
    )
    if source == "Upload":
        upload = st.file_uploader(
            "Checkpoint (.safetensors or .pt)", type=["safetensors", "pt"], key="ckpt_upload"
        )
        return paths.save_upload(upload.getvalue(), upload.name) if upload is not None else None
    text = st.text_input(
        "Checkpoint path", help=f"Relative to the data root {paths.data_root()}", key="ckpt_path"
    )
    return paths.path_under_data_root(text) if text.strip() else None


def dataset_input() -> str:
    """The dataset spec widget: the builtin digits, or a path under the data root (+ options).

    Raises:
        DatasetError: A malformed spec.
        ConfigError: A path outside the data root, or missing.
    """
    text = st.text_input(
        "Dataset",
        value="digits",
        key="data_spec",
        help="A spec such as `digits:noise=0.1,seed=0`, or a path under the data root to an "
        ".npz file, an image folder or cifar-10-batches-py/.",
    )
    if not text.strip():
        return ""
    source, _ = data.parse_spec(text)
    if source == "digits":
        return text.strip()
    options = text.strip()[len(source) :]  # ":noise=0.1,..." or ""
    return f"{paths.path_under_data_root(source)}{options}"


def own_model_panel() -> None:
    """Architecture + checkpoint + dataset, loaded and checked together."""
    choices = ["(from the checkpoint's sidecar)", *models.architectures()]
    arch = st.selectbox("Architecture", choices, key="arch")
    arch_args = st.text_input("Architecture arguments (JSON)", value="{}", key="arch_args")
    try:
        checkpoint = checkpoint_input()
        spec = dataset_input()
        kwargs = json.loads(arch_args or "{}")
    except (DropinfError, json.JSONDecodeError) as error:
        ui.show_error(error)
        return
    if st.button(
        "Load model and data",
        type="primary",
        key="load_own",
        disabled=checkpoint is None or not spec,
    ):
        context = state.Context(
            checkpoint=str(checkpoint),
            data_spec=spec,
            arch=None if arch.startswith("(") else arch,
            arch_args=json.dumps(kwargs, sort_keys=True),
            title=Path(str(checkpoint)).name,
        )
        ui.open_context(context)


def summary(context: state.Context) -> None:
    """Parameters, capturable layers, accuracy and class balance of the loaded pair."""
    try:
        loaded, bundle = cache.load_context(context)
        facts = cache.model_facts(context)
    except DropinfError as error:
        ui.show_error(error)
        return
    st.subheader("Loaded")
    st.caption(
        f"`{loaded.arch}` from `{loaded.path}` · dataset `{bundle.spec}` with "
        f"{len(bundle.train):,} training and {len(bundle.test):,} test examples"
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
