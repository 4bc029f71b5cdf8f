"""The run directory and what surrounds it: store, keys, jobs, estimates.

The run directory and what surrounds it: the store (every file of a run, published
atomically, one writer at a time), run keys and listing, background jobs, cost estimates.

May import ``dropinf.core``, ``dropinf.data`` and ``dropinf.models``; never the engine, review or
the dashboard.
"""

from __future__ import annotations

from dropinf.run.jobs import (
    JobRunner,
    JobStatus,
    RunEstimate,
    RunRequest,
    SyncJobRunner,
    compute_command,
    estimate_run,
    job_dir,
    job_log_path,
    job_status,
    list_runs,
    run_dir_for,
    run_key,
)
from dropinf.run.store import (
    DECISIONS_FILE,
    FORMAT_VERSION,
    MAP_FILE,
    RETRAIN_REPORT_FILE,
    GradientWriter,
    RunStore,
    atomic_write_json,
    exclusive_lock,
    is_dropinf_manifest,
    now_iso,
)

__all__ = [
    "DECISIONS_FILE",
    "FORMAT_VERSION",
    "MAP_FILE",
    "RETRAIN_REPORT_FILE",
    "GradientWriter",
    "JobRunner",
    "JobStatus",
    "RunEstimate",
    "RunRequest",
    "RunStore",
    "SyncJobRunner",
    "atomic_write_json",
    "compute_command",
    "estimate_run",
    "exclusive_lock",
    "is_dropinf_manifest",
    "job_dir",
    "job_log_path",
    "job_status",
    "list_runs",
    "now_iso",
    "run_dir_for",
    "run_key",
]
