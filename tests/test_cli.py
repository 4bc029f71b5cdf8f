"""The command line, end to end: train → compute → a run directory the dashboard can open."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dropinf.cli import main
from dropinf.run import RunStore

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


def cli_failure(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of a command that must fail cleanly (no exception escapes)."""
    try:
        status = main(argv)
    except SystemExit as exit_info:  # argparse
        status = exit_info.code
    return status, capsys.readouterr().err


def compute_args(checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["compute", "--model", str(checkpoint), "--data", "digits", "--out", str(out), *extra]


@pytest.mark.parametrize("batch_size", ["0", "-3"])
@pytest.mark.parametrize("command", ["compute", "train"])
def test_non_positive_batch_size_is_an_error(
    checkpoint: Path, tmp_path: Path, capsys, batch_size: str, command: str
) -> None:
    argv = compute_args(checkpoint, tmp_path / "run")
    if command == "train":
        argv = ["train", *TINY_TRAIN, "--data", "digits", "--out", str(tmp_path / "m.safetensors")]
    status, stderr = cli_failure([*argv, "--batch-size", batch_size], capsys)
    assert status == 2 and "error:" in stderr
    assert f"expected a positive integer, found {batch_size}" in stderr


@pytest.mark.parametrize("device", ["bogus", "cuda:x", "cpu:0:1"])
def test_unknown_device_is_an_error(checkpoint: Path, tmp_path: Path, capsys, device) -> None:
    status, stderr = cli_failure(
        compute_args(checkpoint, tmp_path / "r", "--device", device), capsys
    )
    assert status == 2 and "error:" in stderr and repr(device) in stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_an_error(checkpoint: Path, tmp_path: Path, capsys) -> None:
    status, stderr = cli_failure(
        compute_args(checkpoint, tmp_path / "r", "--device", "cuda"), capsys
    )
    assert status == 2 and "CUDA is not available" in stderr


def test_out_that_is_a_file_or_below_a_file_is_an_error(
    checkpoint: Path, tmp_path: Path, capsys
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for out in (afile, afile / "run"):
        status, stderr = cli_failure(compute_args(checkpoint, out), capsys)
        assert status == 2 and stderr.startswith("error: ") and "found a file" in stderr
    assert afile.read_text() == "keep me"


def test_out_in_an_unwritable_folder_is_an_error(checkpoint: Path, capsys) -> None:
    out = Path("/sys/dropinf-run")  # sysfs refuses new folders, even to root
    status, stderr = cli_failure(compute_args(checkpoint, out), capsys)
    assert status == 2 and stderr.startswith("error: ") and "/sys/dropinf-run" in stderr


def test_corrupt_manifest_is_an_error_for_compute_and_map(
    checkpoint: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{not json")
    for argv in (compute_args(checkpoint, run, "--overwrite"), ["map", "--run", str(run)]):
        status, stderr = cli_failure(argv, capsys)
        assert status == 2 and stderr.startswith("error: ") and "manifest.json" in stderr
    assert (run / "manifest.json").read_text() == "{not json"


def test_retrain_with_missing_or_broken_decisions_is_an_error(
    checkpoint: Path, tmp_path: Path, capsys
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("[1, 2")
    shape = tmp_path / "shape.json"
    shape.write_text("[]")
    for decisions, message in ((tmp_path / "missing.json", "found no file"),
                               (broken, "not valid JSON"), (shape, "format 1")):  # fmt: skip
        argv = ["retrain", "--model", str(checkpoint), "--data", "digits", "--decisions",
                str(decisions), "--out", str(tmp_path / "report.json")]  # fmt: skip
        status, stderr = cli_failure(argv, capsys)
        assert status == 2 and stderr.startswith("error: ") and message in stderr
    assert not (tmp_path / "report.json").exists()
