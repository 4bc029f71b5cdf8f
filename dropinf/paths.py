"""Where dropinf keeps its files: the demo checkpoint, runs and caches."""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    """The dropinf home: ``$DROPINF_HOME``, else ``.dropinf`` in the working directory."""
    home = Path(os.environ.get("DROPINF_HOME", ".dropinf")).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def runs_dir() -> Path:
    """The folder holding content-addressed run directories."""
    path = home_dir() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def demo_dir() -> Path:
    """The folder holding the demo checkpoint, created on first use."""
    path = home_dir() / "demo"
    path.mkdir(parents=True, exist_ok=True)
    return path
