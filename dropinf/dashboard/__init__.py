"""What the pages show, as pure functions without Streamlit.

Figure builders (``figures``: histogram, detection curves, before / after; ``map_figure``: the
gradient map scatter and its selections), ``tables`` (data frames the pages show), ``captions``
(escaped HTML), ``images`` (thumbnails), ``humanize`` (sizes and durations), ``style`` (colours,
escaped plotly text), ``review_text`` (the review pages' metric cells and sentences),
``suggestions`` (the queue's suggested labels from influence rows), ``trajectory`` (runs over
several checkpoints: the files loaded, the job's progress per checkpoint, and when in training
an example was learned) and ``gradient_map`` (the UMAP of a run's stored gradients, run as a
background job). Never imports streamlit; plotly is
imported here only, and umap only inside the background job. May import the layers below it
(engine, run, models, data, metrics, core), never ``review``, its independent sibling (the pages
compose the two); ``import dropinf`` does not import this package.
"""

from __future__ import annotations

from dropinf.dashboard.captions import (
    influence_sections,
    sidebar_card_html,
    test_caption_html,
    train_caption_html,
)
from dropinf.dashboard.figures import (
    MAX_CURVE_POINTS,
    before_after_figure,
    detection_curve,
    detection_curve_figure,
    influence_histogram,
)
from dropinf.dashboard.finds import Finds, find_inputs
from dropinf.dashboard.gradient_map import (
    MAP_JOB,
    MAP_PHASES,
    PCA_DIM,
    PROJECTED_DIM,
    compute_gradient_map,
    gradient_map_info,
    gradient_map_path,
    load_gradient_map,
    reduced_gradients,
)
from dropinf.dashboard.humanize import human_bytes, human_seconds
from dropinf.dashboard.images import (
    thumbnail_data_uri,
    thumbnail_png,
    upscale_nearest,
    with_thumbnails,
)
from dropinf.dashboard.map_figure import gradient_map_figure, selected_ids
from dropinf.dashboard.review_figures import clicked_confusion, flip_matrix_figure
from dropinf.dashboard.review_text import (
    auc_gap_sentence,
    comparison_cells,
    retrain_cells,
    run_name,
    score_aucs,
)
from dropinf.dashboard.style import OPPONENT_COLOR, PROPONENT_COLOR, REVIEW_STATUS_COLORS
from dropinf.dashboard.suggestions import SUGGESTED_ROWS, influence_rows, top_indices
from dropinf.dashboard.tables import (
    class_balance,
    detection_table,
    example_indices,
    influence_highlights,
    layer_table,
    module_path,
    runs_table,
    top_influences,
)
from dropinf.dashboard.trajectory import (
    checkpoint_epochs,
    ensemble_progress_text,
    epochs_text,
    learned_sentence,
    ordered_trajectory,
    trajectory_figure,
    trajectory_files,
)

__all__ = [
    "MAP_JOB",
    "MAP_PHASES",
    "MAX_CURVE_POINTS",
    "OPPONENT_COLOR",
    "PCA_DIM",
    "PROJECTED_DIM",
    "PROPONENT_COLOR",
    "REVIEW_STATUS_COLORS",
    "SUGGESTED_ROWS",
    "Finds",
    "auc_gap_sentence",
    "before_after_figure",
    "checkpoint_epochs",
    "class_balance",
    "clicked_confusion",
    "comparison_cells",
    "compute_gradient_map",
    "detection_curve",
    "detection_curve_figure",
    "detection_table",
    "ensemble_progress_text",
    "epochs_text",
    "example_indices",
    "find_inputs",
    "flip_matrix_figure",
    "gradient_map_figure",
    "gradient_map_info",
    "gradient_map_path",
    "human_bytes",
    "human_seconds",
    "influence_highlights",
    "influence_histogram",
    "influence_rows",
    "influence_sections",
    "layer_table",
    "learned_sentence",
    "load_gradient_map",
    "module_path",
    "ordered_trajectory",
    "reduced_gradients",
    "retrain_cells",
    "run_name",
    "runs_table",
    "score_aucs",
    "selected_ids",
    "sidebar_card_html",
    "test_caption_html",
    "thumbnail_data_uri",
    "thumbnail_png",
    "top_indices",
    "top_influences",
    "train_caption_html",
    "trajectory_figure",
    "trajectory_files",
    "upscale_nearest",
    "with_thumbnails",
]
