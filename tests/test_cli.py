"""The command line, end to end: train → compute → a run directory the dashboard can open."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dropinf.cli import main
from dropinf.store import RunStore

TINY_TRAIN = ["--arch", "mlp", "--arch-args", '{"hidden_sizes": [16]}', "--epochs", "2"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dropinf", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"DROPINF_HOME": str(cwd / "home"), "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    path = folder / "mlp.safetensors"
    assert main(["train", *TINY_TRAIN, "--data", "digits", "--out", str(path)]) == 0
    return path


def test_compute_writes_a_complete_run_with_test_scores(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    status = main(
        [
            "compute",
            "--model",
            str(checkpoint),
            "--data",
            "digits:noise=0.1,seed=0",
            "--keep-ratio",
            "0.5",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert status == 0
    store = RunStore(out)
    manifest = store.read_manifest()
    assert manifest["status"] == "complete"
    assert manifest["provenance"]["data_spec"] == "digits:noise=0.1,seed=0"
    assert len(manifest["provenance"]["checkpoint_sha256"]) == 64
    assert store.test_scores().shape == (360, manifest["n_train"])
    assert np.isfinite(store.self_influence()).all()
    assert set(store.train_metadata()["prediction"]) <= set(range(10))


def test_compute_refuses_a_corrupt_checkpoint_without_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"this is not a checkpoint")
    result = run_cli(
        "compute",
        "--model",
        str(broken),
        "--data",
        "digits",
        "--out",
        str(tmp_path / "run"),
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


def test_compute_refuses_data_that_does_not_fit_the_model(checkpoint: Path, tmp_path: Path) -> None:
    data = tmp_path / "wide.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((40, 3, 32, 32), dtype=np.float32), y=rng.integers(0, 10, 40))
    result = run_cli(
        "compute",
        "--model",
        str(checkpoint),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


def test_bad_keep_ratio_is_a_clear_error(checkpoint: Path, tmp_path: Path) -> None:
    status = main(
        [
            "compute",
            "--model",
            str(checkpoint),
            "--data",
            "digits",
            "--keep-ratio",
            "2",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert status == 2


@pytest.mark.parametrize("command", ["train", "compute", "map", "retrain"])
def test_every_subcommand_has_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: python -m dropinf " + command in capsys.readouterr().out


def test_train_prints_metrics(checkpoint: Path) -> None:
    sidecar = json.loads(Path(str(checkpoint) + ".json").read_text())
    assert sidecar["arch"] == "mlp"
    assert sidecar["extra"]["data_spec"] == "digits"
