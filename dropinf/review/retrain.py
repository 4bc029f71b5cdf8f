"""Verifying the fixes: the job retraining with a run's decisions applied, and its report.

The job (named ``RETRAIN_JOB`` among a run's jobs) runs ``python -m dropinf retrain`` and writes
``RUN_DIR/retrain_report.json`` (``FixReport.to_dict()``: test accuracy before and after the fixes
over several seeds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dropinf.errors import RunError
from dropinf.run import RETRAIN_REPORT_FILE

RETRAIN_JOB = "retrain"


def retrain_report_path(run_dir: str | Path) -> Path:
    """Where the retraining report of a run's decisions is written."""
    return Path(run_dir) / RETRAIN_REPORT_FILE


def load_retrain_report(run_dir: str | Path) -> dict[str, Any] | None:
    """The last retraining report of a run (``FixReport.to_dict()``), or None.

    Raises:
        RunError: The report is not valid JSON.
    """
    path = retrain_report_path(run_dir)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise RunError(f"{path} is not valid JSON: {error}") from error
