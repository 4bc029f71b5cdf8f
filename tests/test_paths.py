"""Where dropinf keeps and reads files: the data root and uploads."""

from __future__ import annotations

from pathlib import Path

import pytest

from dropinf import paths
from dropinf.errors import ConfigError


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    (root / "sets").mkdir(parents=True)
    (root / "sets" / "a.npz").write_bytes(b"x")
    monkeypatch.setenv("DROPINF_DATA_ROOT", str(root))
    return root


def test_data_root_defaults_to_the_home(dropinf_home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("DROPINF_DATA_ROOT", raising=False)
    assert paths.data_root() == dropinf_home.resolve()


def test_paths_resolve_inside_the_data_root(data_root: Path):
    assert paths.path_under_data_root(" sets/a.npz ") == data_root / "sets" / "a.npz"
    assert paths.path_under_data_root(str(data_root / "sets")) == data_root / "sets"


@pytest.mark.parametrize("text", ["../outside", "/etc/passwd", "sets/../../data-other"])
def test_paths_outside_the_data_root_are_refused(data_root: Path, text: str):
    with pytest.raises(ConfigError, match="inside the data root"):
        paths.path_under_data_root(text)


def test_missing_paths_are_named(data_root: Path):
    with pytest.raises(ConfigError, match="none at"):
        paths.path_under_data_root("sets/b.npz")


def test_uploads_are_stored_once_by_content(dropinf_home: Path):
    first = paths.save_upload(b"weights", "../../model.pt")
    again = paths.save_upload(b"weights", "model.pt")
    other = paths.save_upload(b"other", "model.pt")
    assert first == again and first.parent == dropinf_home.resolve() / "uploads"
    assert first.name.endswith("-model.pt") and first.read_bytes() == b"weights"
    assert other != first
