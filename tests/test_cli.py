"""The command line, end to end: train → compute → a run directory the dashboard can open."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dropinf.cli import (
    build_parser,
    compute_command,
    compute_request,
    main,
    map_command,
    retrain_command,
)
from dropinf.core import (
    COMPRESSION_METHODS,
    CURVATURE_KINDS,
    DEFAULT_DAMPING_RATIOS,
    MASK_STRATEGIES,
    CompressionConfig,
    CurvatureConfig,
)
from dropinf.errors import ConfigError
from dropinf.run import RunRequest, RunStore

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


# ------------------------------------------------------------- command lines for background jobs


def parse(command: list[str]):
    """The parsed arguments of a built command (after ``python -m dropinf``)."""
    assert command[:3] == [sys.executable, "-m", "dropinf"]
    return build_parser().parse_args(command[3:])


def test_compute_command_spells_the_request():
    request = RunRequest(
        Path("m.pt"), "digits", CompressionConfig(keep_ratio=0.5, seed=3, mask="uniform"),
        CurvatureConfig(kind="block", damping=0.01), device="cuda", batch_size=64,
    )  # fmt: skip
    command = compute_command(request, Path("/runs/x"))
    assert command[:4] == [sys.executable, "-m", "dropinf", "compute"]
    options = dict(zip(command[4::2], command[5::2], strict=True))
    assert options == {
        "--model": "m.pt", "--data": "digits", "--method": "dropout", "--keep-ratio": "0.5",
        "--mask": "uniform", "--seed": "3", "--max-kept-units": "64", "--curvature": "block",
        "--batch-size": "64", "--device": "cuda", "--out": "/runs/x", "--damping": "0.01",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("compression", "curvature", "field"),
    [
        (CompressionConfig(calibration_batches=8), CurvatureConfig(), "calibration_batches"),
        (CompressionConfig(layer_keep_ratios={"fc": 0.5}), CurvatureConfig(), "layer_keep_ratios"),
        (CompressionConfig(), CurvatureConfig(max_full_dim=16), "max_full_dim"),
    ],
)
def test_compute_command_refuses_options_the_cli_cannot_pass(compression, curvature, field):
    request = RunRequest(Path("m.pt"), "digits", compression, curvature)
    with pytest.raises(ConfigError, match=field):
        compute_command(request, Path("/runs/x"))


def test_damping_ratio_option_sets_the_ratio_and_its_help_names_each_kinds_default():
    args = build_parser().parse_args(
        ["compute", "--model", "m.pt", "--data", "d", "--out", "o", "--damping-ratio", "3"]
    )
    assert compute_request(args).curvature == CurvatureConfig(damping_ratio=3.0)
    compute_parser = build_parser()._subparsers._group_actions[0].choices["compute"]
    help_text = " ".join(compute_parser.format_help().split())
    for kind in ("full", "block", "kfac", "ekfac"):
        assert f"{kind} {DEFAULT_DAMPING_RATIOS[kind]:g}" in help_text


def test_parser_defaults_are_the_configs_defaults():
    args = build_parser().parse_args(["compute", "--model", "m.pt", "--data", "d", "--out", "o"])
    request = compute_request(args)
    assert request.compression == CompressionConfig()
    assert request.curvature == CurvatureConfig()
    assert request.batch_size == RunRequest.batch_size


# Text a user may type for a path or a data spec: anything argv can carry (no NUL, no surrogate).
ARGV_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
COMPRESSIONS = st.builds(
    CompressionConfig,
    method=st.sampled_from(COMPRESSION_METHODS),
    keep_ratio=st.floats(0, 1, exclude_min=True),
    seed=st.integers(0, 2**63),
    mask=st.sampled_from(MASK_STRATEGIES),
    max_kept_units=st.none() | st.integers(1, 10**6),
)
CURVATURES = st.builds(
    CurvatureConfig,
    kind=st.sampled_from(CURVATURE_KINDS),
    damping=st.none() | st.floats(min_value=1e-30, max_value=1e30),
    damping_ratio=st.none() | st.floats(min_value=1e-30, max_value=1e30),
)


@settings(max_examples=200, deadline=None)
@given(
    checkpoint=ARGV_TEXT.filter(bool),
    data_spec=ARGV_TEXT,
    compression=COMPRESSIONS,
    curvature=CURVATURES,
    batch_size=st.integers(1, 10**6),
    run_dir=ARGV_TEXT.filter(bool),
)
@example("-m.pt", "-digits", CompressionConfig(max_kept_units=None), CurvatureConfig("ekfac"), 1,
         "--out")  # fmt: skip
@example("m.pt", "digits", CompressionConfig(max_kept_units=3), CurvatureConfig("kfac"), 8, "r")
@example("m.pt", "d", CompressionConfig(), CurvatureConfig("block", damping_ratio=3.0), 8, "r")
def test_compute_command_parses_back_to_its_request(
    checkpoint, data_spec, compression, curvature, batch_size, run_dir
):
    request = RunRequest(Path(checkpoint), data_spec, compression, curvature, "cpu", batch_size)
    args = parse(compute_command(request, run_dir))
    assert args.command == "compute" and args.out == Path(run_dir)
    assert compute_request(args) == request


@settings(max_examples=100, deadline=None)
@given(run_dir=ARGV_TEXT.filter(bool), whiten=st.booleans(), seed=st.integers(-(2**63), 2**63))
@example(run_dir="-run", whiten=False, seed=-1)
def test_map_command_parses_back(run_dir, whiten, seed):
    args = parse(map_command(run_dir, whiten=whiten, seed=seed))
    assert (args.command, args.run, not args.no_whiten, args.seed) == (
        "map", Path(run_dir), whiten, seed,
    )  # fmt: skip


def test_map_command():
    command = map_command("/runs/x", whiten=False, seed=2)
    assert command == [sys.executable, "-m", "dropinf", "map", "--run", "/runs/x", "--seed", "2",
                       "--no-whiten"]  # fmt: skip
    assert map_command("/runs/x")[-2:] == ["--seed", "0"]


@settings(max_examples=100, deadline=None)
@given(
    checkpoint=ARGV_TEXT.filter(bool),
    data_spec=ARGV_TEXT,
    run_dir=ARGV_TEXT.filter(bool),
    seeds=st.integers(1, 10**6),
)
@example(checkpoint="-m.pt", data_spec="-d", run_dir="-r", seeds=1)
def test_retrain_command_parses_back(checkpoint, data_spec, run_dir, seeds):
    args = parse(retrain_command(checkpoint, data_spec, run_dir, seeds))
    assert (args.command, args.model, args.data, args.seeds) == (
        "retrain", Path(checkpoint), data_spec, seeds,
    )  # fmt: skip
    assert args.decisions == Path(run_dir) / "decisions.json"
    assert args.out == Path(run_dir) / "retrain_report.json"


def test_retrain_command_spells_the_decisions_and_report_paths(tmp_path):
    command = retrain_command("model.pt", "digits", tmp_path, seeds=3)
    assert command[:4] == [sys.executable, "-m", "dropinf", "retrain"]
    assert command[command.index("--decisions") + 1] == str(tmp_path / "decisions.json")
    assert command[command.index("--out") + 1] == str(tmp_path / "retrain_report.json")
    assert command[command.index("--seeds") + 1] == "3"


def test_max_kept_units_reaches_the_run(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = compute_args(checkpoint, out, "--max-kept-units", "4", "--no-test-scores")
    assert main([*argv, "--device", "cpu"]) == 0
    manifest = RunStore(out).read_manifest()
    assert manifest["compression"]["max_kept_units"] == 4
    assert all(layer["k"] <= 4 * 4 + 4 for layer in manifest["layers"])


@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5"])
def test_bad_max_kept_units_is_an_error(checkpoint: Path, tmp_path: Path, capsys, value) -> None:
    status, stderr = cli_failure(
        compute_args(checkpoint, tmp_path / "r", "--max-kept-units", value), capsys
    )
    assert status == 2 and "expected a positive integer or none" in stderr


# ----------------------------------------------------------- several processes, several checkpoints
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]


@pytest.mark.parametrize("processes", [2, 8])
def test_compute_command_with_processes_starts_torchrun_on_the_same_compute(processes: int):
    request = RunRequest(Path("m.pt"), "digits", CompressionConfig(), CurvatureConfig(), "cuda")
    one = compute_command(request, "/runs/x")
    several = compute_command(request, "/runs/x", processes=processes)
    assert several[:6] == [sys.executable, *TORCHRUN, str(processes)]
    assert several[6:] == one[1:], "torchrun runs `-m dropinf compute` with the same options"
    assert compute_command(request, "/runs/x", processes=1) == one


@pytest.mark.parametrize("processes", [0, -1, 1.5, True, "2"])
def test_compute_command_refuses_a_process_count_that_is_not_a_positive_integer(processes):
    request = RunRequest(Path("m.pt"), "digits", CompressionConfig(), CurvatureConfig())
    with pytest.raises(ConfigError, match="processes: expected a positive integer"):
        compute_command(request, "/runs/x", processes=processes)


def test_compute_command_of_a_trajectory_request_names_every_checkpoint_in_order():
    paths = (Path("ckpts/epoch-1.pt"), Path("ckpts/epoch-4.pt"), Path("ckpts/epoch-12.pt"))
    request = RunRequest(paths[-1], "digits", CompressionConfig(), CurvatureConfig(),
                         checkpoints=paths, combination="rank")  # fmt: skip
    command = compute_command(request, "/runs/x", processes=2)
    args = build_parser().parse_args(command[8:])  # after torchrun's options and `-m dropinf`
    assert command[5:8] == ["2", "-m", "dropinf"]
    assert args.model == list(paths) and args.combination == "rank"
    assert compute_request(args) == RunRequest(paths[-1], "digits", CompressionConfig(),
                                               CurvatureConfig())  # fmt: skip
    explicit = compute_command(request, "/runs/x", [paths[0], paths[-1]], "standardised")
    assert parse(explicit).model == [paths[0], paths[-1]]  # given arguments win
    assert parse(explicit).combination == "standardised"
