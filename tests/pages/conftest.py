"""Fixtures shared by the page tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh ``DROPINF_HOME`` per module, synchronous jobs, no data root (the home is it)."""
    home = tmp_path_factory.mktemp("dropinf-home")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("DROPINF_HOME", str(home))
    patcher.setenv("DROPINF_SYNC_JOBS", "1")
    patcher.delenv("DROPINF_DATA_ROOT", raising=False)
    yield home
    patcher.undo()
