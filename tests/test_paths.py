"""Where dropinf keeps and reads files: the data root and uploads."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    first = paths.save_upload(b"weights", "model.pt")
    again = paths.save_upload(b"weights", "model.pt")
    other = paths.save_upload(b"other", "model.pt")
    assert first == again and first.parent == dropinf_home.resolve() / "uploads"
    assert first.name.endswith("-model.pt") and first.read_bytes() == b"weights"
    assert other != first


@pytest.fixture
def runs(dropinf_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DROPINF_DATA_ROOT", raising=False)
    runs = paths.runs_dir()
    (runs / "abc123").mkdir()
    return runs


def test_a_run_key_names_a_folder_under_the_runs_folder(runs: Path):
    assert paths.run_dir_of("abc123") == runs / "abc123"


@pytest.mark.parametrize(
    "key",
    ["", " ", ".", "..", "../runs/abc123", "../../x/run", "/tmp/run", "a/b", "a\\b", ".hidden",
     "ab\x00c"],
)  # fmt: skip
def test_run_keys_that_are_not_plain_folder_names_are_refused(runs: Path, key: str):
    with pytest.raises(ConfigError, match="run key"):
        paths.run_dir_of(key)


def test_a_run_key_that_links_outside_the_runs_folder_is_refused(runs: Path, tmp_path: Path):
    (tmp_path / "elsewhere").mkdir()
    (runs / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="inside"):
        paths.run_dir_of("linked")


@pytest.mark.parametrize("name", ["../../model.pt", "a/model.pt", "a\\model.pt", ".model.pt", ""])
def test_upload_names_with_folders_or_hidden_are_refused(dropinf_home: Path, name: str):
    with pytest.raises(ConfigError, match="upload name"):
        paths.save_upload(b"weights", name)
    assert not list(paths.uploads_dir().iterdir())


def test_readable_paths_are_the_data_root_demo_and_uploads(data_root: Path, dropinf_home: Path):
    inside = [data_root / "sets" / "a.npz", paths.demo_dir() / "m.pt", paths.uploads_dir() / "u"]
    for path in inside:
        assert paths.confine(path) == path.resolve()
    for path in [data_root.parent / "other.pt", Path("/etc/passwd"), paths.runs_dir() / "x"]:
        with pytest.raises(ConfigError, match="inside"):
            paths.confine(path)


def test_data_specs_are_confined_unless_builtin(data_root: Path, dropinf_home: Path):
    assert paths.confine_data_spec("digits:noise=0.1,seed=0") == "digits:noise=0.1,seed=0"
    spec = f"{data_root / 'sets' / 'a.npz'}:noise=0.2"
    assert paths.confine_data_spec(spec) == spec
    for spec in ["/etc:noise=0.1", f"{data_root}/../x.npz", "../../x.npz"]:
        with pytest.raises(ConfigError, match="inside"):
            paths.confine_data_spec(spec)


@given(key=st.text(alphabet=st.sampled_from("./\\\x00~ab-_ "), max_size=12))
@settings(max_examples=300, deadline=None)
def test_any_run_key_is_refused_or_names_a_child_of_the_runs_folder(key: str):
    with tempfile.TemporaryDirectory() as home, pytest.MonkeyPatch.context() as patch:
        patch.setenv("DROPINF_HOME", home)
        runs = paths.runs_dir()
        try:
            run_dir = paths.run_dir_of(key)
        except ConfigError:
            return
        assert run_dir.parent == runs and not run_dir.name.startswith(".")
