"""Compare runs: do two runs of the same model and data flag the same suspects?"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dropinf import dashboard as views
from dropinf import paths
from dropinf import run as runs
from dropinf.data import DatasetBundle
from dropinf.errors import DropinfError
from dropinf.review import RunReview, compare_runs, proponent_overlap, suspect_ranks
from dropinf.run import RunStore
from pages import _cache as cache
from pages import _widgets as ui

PROPONENTS_SHOWN = 8
RANKS_SHOWN = 50


def complete_runs() -> dict[str, dict]:
    """Run key -> its row (``runs.list_runs``) for every complete run, newest first."""
    rows = runs.list_runs()
    return {row["key"]: row for row in rows if row.get("status") == "complete"}


def pick_other_run(current: str, rows: dict[str, dict]) -> str:
    """Run A is the current run; pick run B, by default another run of the same data."""
    others = [key for key in rows if key != current]
    same_data = [key for key in others if rows[key]["data_spec"] == rows[current]["data_spec"]]
    default = (same_data or others)[0]
    left, right = st.columns(2)
    left.markdown(f"**Run A** (the current run; change it in the sidebar)  \n"
                  f"`{views.run_name(rows[current])}`")  # fmt: skip
    names = {key: views.run_name(row) for key, row in rows.items()}
    return right.selectbox("Run B", others, others.index(default), format_func=names.get,
                           key="compare_b")  # fmt: skip


def agreement(review_a: RunReview, review_b: RunReview, bundle: DatasetBundle) -> None:
    """Top-k overlap and rank correlations, then the suspects of either with both ranks."""
    n_train = len(bundle.train)
    k = st.slider("Top-k suspects compared", 1, n_train, min(100, n_train), key="compare_k")
    comparison = compare_runs(review_a, review_b, k)
    for column, (label, value) in zip(st.columns(3), views.comparison_cells(comparison),
                                      strict=True):  # fmt: skip
        column.metric(label, value)
    if not comparison.same_model:
        st.caption("The runs were computed on different model weights.")
    table = suspect_ranks(review_a.primary_score(), review_b.primary_score(), k)
    labels = review_a.metadata["label"][table["train_index"]]
    table.insert(1, "given", [bundle.class_name(int(label)) for label in labels])
    st.dataframe(table.head(RANKS_SHOWN), hide_index=True, height=260, key="compare_ranks")


def side_by_side(review_a: RunReview, review_b: RunReview, bundle: DatasetBundle) -> None:
    """The strongest proponents of one test example in each run, side by side."""
    st.subheader("Proponents of a test example")
    if not (review_a.store.test_scores_exist() and review_b.store.test_scores_exist()):
        st.info("A run was computed without test scores (`--no-test-scores`).")
        return
    meta = review_a.store.test_metadata()
    describe = ui.example_describer(bundle, meta)
    index = st.selectbox("Test example", range(len(meta["label"])), format_func=describe,
                         key="compare_test")  # fmt: skip
    row_a = np.asarray(review_a.store.test_scores()[index])  # (n_train,)
    row_b = np.asarray(review_b.store.test_scores()[index])  # (n_train,)
    shared = proponent_overlap(row_a, row_b, PROPONENTS_SHOWN)
    st.metric(f"Top-{PROPONENTS_SHOWN} proponents shared", f"{shared} / {PROPONENTS_SHOWN}")
    for column, review, row, name in zip(st.columns(2, gap="large"), (review_a, review_b),
                                         (row_a, row_b), "AB", strict=True):  # fmt: skip
        with column:
            st.markdown(f"**Run {name}**")
            proponents_gallery(review, bundle, row, f"compare_{name}")


def proponents_gallery(review: RunReview, bundle: DatasetBundle, row: np.ndarray, key: str) -> None:
    """One run's strongest proponents of a test example as thumbnails."""
    meta = review.metadata
    table: pd.DataFrame = views.top_influences(
        row, PROPONENTS_SHOWN, labels=meta["label"], predictions=meta["prediction"]
    )
    suspects = review.suspects()
    captions = [ui.train_caption(bundle, item, suspects) for item in table.itertuples()]
    ui.gallery(bundle, "train", table["train_index"].tolist(), captions, columns=4, key=key)


def main() -> None:
    """The page: two runs picked, their agreement on suspects, their proponents side by side."""
    st.title("Compare runs")
    if (store := ui.require_complete_run()) is None or (context := ui.require_context()) is None:
        return
    rows = complete_runs()
    if len(rows) < 2 or store.run_dir.name not in rows:
        st.info("Compute a second run of this model and data (another compressor or keep "
                "ratio) to compare the two.")  # fmt: skip
        st.page_link("pages/compute.py", label="Go to Compute", icon=":material/bolt:")
        return
    other = pick_other_run(store.run_dir.name, rows)
    try:
        _, bundle = cache.load_context(context)
        reviews = [cache.run_review(store, bundle),
                   cache.run_review(RunStore(paths.run_dir_of(other)), bundle)]  # fmt: skip
        agreement(*reviews, bundle)
    except DropinfError as error:
        ui.show_error(error)
        return
    side_by_side(*reviews, bundle)


main()
