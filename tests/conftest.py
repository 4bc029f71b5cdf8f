"""Shared pytest fixtures: seeded datasets and an isolated dropinf home."""

from __future__ import annotations

from pathlib import Path

import pytest

from dropinf.data import DEMO_DATA_SPEC, DatasetBundle, load_data


@pytest.fixture(scope="session")
def digits_bundle() -> DatasetBundle:
    """The clean embedded digits (1437 train / 360 test); treat as read-only."""
    return load_data("digits")


@pytest.fixture(scope="session")
def noisy_digits_bundle() -> DatasetBundle:
    """The demo data: digits with 10% symmetric label noise, seed 0; treat as read-only."""
    return load_data(DEMO_DATA_SPEC)


@pytest.fixture
def dropinf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``$DROPINF_HOME`` for one test."""
    home = tmp_path / "dropinf-home"
    monkeypatch.setenv("DROPINF_HOME", str(home))
    return home


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` where CUDA is absent."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
