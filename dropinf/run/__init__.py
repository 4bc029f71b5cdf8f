"""The run directory and what surrounds it: store, manifest, keys, jobs, estimates.

``store`` reads and writes every file of a run directory (published atomically through
``files``, gradient shards through ``shards``, compressors through ``compressors``, one writer at
a time); ``manifest`` owns the manifest's schema, the signature a run is reused by and the shard
size; ``keys`` names runs by content and lists them; ``jobs`` runs background processes;
``estimate`` says what a run will cost; ``ensemble`` lays out runs over several checkpoints
(one run per checkpoint, the combined scores at the top level) and checks their checkpoints.
May import ``dropinf.core``, ``dropinf.data`` and ``dropinf.models``; never the engine, review,
the dashboard or the CLI.
"""

from __future__ import annotations

from dropinf.run.ensemble import (
    CHECKPOINTS_JOB,
    ENSEMBLE_ARRAYS,
    EnsembleStore,
    check_one_model_family,
    checkpoint_epoch,
    checkpoint_files,
    checkpoint_learning_rate,
    ensemble_section,
    in_epoch_order,
    sub_run_name,
)
from dropinf.run.estimate import (
    KRONECKER_KINDS,
    RunEstimate,
    check_resources,
    estimate_run,
    resolve_curvature_kind,
    size_text,
)
from dropinf.run.files import atomic_write_json, exclusive_lock, now_iso
from dropinf.run.jobs import (
    JobRunner,
    JobStatus,
    SyncJobRunner,
    job_dir,
    job_log_path,
    job_progress_path,
    job_status,
)
from dropinf.run.keys import RunRequest, list_runs, run_dir_for, run_key
from dropinf.run.manifest import (
    FORMAT_VERSION,
    SIGNATURE_FIELDS,
    Manifest,
    check_format,
    check_same_layers,
    dtype_name,
    is_dropinf_manifest,
    layer_fields,
    mismatch_message,
    new_manifest,
    signature_differences,
)
from dropinf.run.shards import GradientWriter
from dropinf.run.store import DECISIONS_FILE, MAP_FILE, RETRAIN_REPORT_FILE, RunStore

__all__ = [
    "CHECKPOINTS_JOB",
    "DECISIONS_FILE",
    "ENSEMBLE_ARRAYS",
    "FORMAT_VERSION",
    "KRONECKER_KINDS",
    "MAP_FILE",
    "RETRAIN_REPORT_FILE",
    "SIGNATURE_FIELDS",
    "EnsembleStore",
    "GradientWriter",
    "JobRunner",
    "JobStatus",
    "Manifest",
    "RunEstimate",
    "RunRequest",
    "RunStore",
    "SyncJobRunner",
    "atomic_write_json",
    "check_format",
    "check_one_model_family",
    "check_resources",
    "check_same_layers",
    "checkpoint_epoch",
    "checkpoint_files",
    "checkpoint_learning_rate",
    "dtype_name",
    "ensemble_section",
    "estimate_run",
    "exclusive_lock",
    "in_epoch_order",
    "is_dropinf_manifest",
    "job_dir",
    "job_log_path",
    "job_progress_path",
    "job_status",
    "layer_fields",
    "list_runs",
    "mismatch_message",
    "new_manifest",
    "now_iso",
    "resolve_curvature_kind",
    "run_dir_for",
    "run_key",
    "signature_differences",
    "size_text",
    "sub_run_name",
]
