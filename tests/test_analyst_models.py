"""An analyst's models through the CLI, computed end to end.

Covers --arch without a sidecar, own code behind --trust-code, and BatchNorm / LayerNorm /
Dropout / frozen layers / Conv1d / torchvision models.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dropinf.cli import build_parser, compute_command, compute_request, main
from dropinf.core import CompressionConfig, CurvatureConfig
from dropinf.models import TRUST_CODE_ENV, build_architecture, save_checkpoint, sidecar_path
from dropinf.run import RunRequest, RunStore

ROOT = Path(__file__).resolve().parents[1]
OWN = "tests.models.own_models"
REFUSAL = (
    "error: expected a registry architecture (mlp, small_cnn, resnet9 or a torchvision "
    f"classifier such as resnet18); found code reference '{OWN}:LayerNormMLP' — importing code "
    "runs it; pass --trust-code or set DROPINF_TRUST_CODE=1\n"
)
LAYER_NORM_ARGS = {"input_dim": 6, "num_classes": 2}


@pytest.fixture(autouse=True)
def untrusted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRUST_CODE_ENV, raising=False)


def _npz(path: Path, shape: tuple[int, ...], n: int = 24, **extra: np.ndarray) -> str:
    rng = np.random.default_rng(0)
    x = rng.random((n, *shape)).astype(np.float32)
    np.savez(path, x=x, y=np.arange(n) % 2, ids=np.array([f"ex-{i}" for i in range(n)]), **extra)
    return f"{path}:test_fraction=0.25"


def _checkpoint(folder: Path, arch: str, arch_args: dict, suffix: str = ".safetensors") -> Path:
    torch.manual_seed(0)
    model = build_architecture(arch, arch_args, trust_code=True)
    return save_checkpoint(folder / f"model{suffix}", model.eval(), arch, arch_args)


def _compute(model: Path, data: str, out: Path, *extra: str) -> int:
    argv = ["compute", "--model", str(model), "--data", data, "--out", str(out)]
    return main([*argv, "--keep-ratio", "0.5", "--batch-size", "8", "--device", "cpu", *extra])


def _assert_complete(out: Path, n_train: int, n_test: int) -> dict:
    store = RunStore(out)
    manifest = store.read_manifest()
    assert manifest["status"] == "complete" and manifest["n_train"] == n_train
    assert store.test_scores().shape == (n_test, n_train)
    assert np.isfinite(store.test_scores()).all() and np.isfinite(store.self_influence()).all()
    return manifest


def _layers(manifest: dict) -> dict[str, str]:
    return {layer["name"]: layer["kind"] for layer in manifest["layers"]}


def test_sidecar_less_checkpoint_computes_with_arch(tmp_path, capsys):
    data = _npz(tmp_path / "v.npz", (6,))
    args = {"input_dim": 6, "num_classes": 2, "hidden_sizes": [4]}
    model = _checkpoint(tmp_path, "mlp", args, ".pt")
    sidecar_path(model).unlink()
    assert _compute(model, data, tmp_path / "no-arch") == 2
    assert capsys.readouterr().err == (
        "error: model.pt: expected an architecture: pick one in the Load page or pass --arch; "
        "found a checkpoint without a sidecar (model.pt.json) or architecture metadata\n"
    )
    assert not (tmp_path / "no-arch").exists()
    assert _compute(model, data, tmp_path / "run", "--arch", "mlp", "--arch-args",
                    json.dumps(args)) == 0  # fmt: skip
    manifest = _assert_complete(tmp_path / "run", 18, 6)
    assert manifest["provenance"]["arch"] == "mlp" and manifest["provenance"]["arch_args"] == args


def test_own_code_is_refused_without_the_opt_in(tmp_path, capsys, monkeypatch):
    data = _npz(tmp_path / "v.npz", (6,))
    model = _checkpoint(tmp_path, f"{OWN}:LayerNormMLP", LAYER_NORM_ARGS)
    monkeypatch.delitem(sys.modules, OWN)  # imported to save the checkpoint: forget it
    assert _compute(model, data, tmp_path / "run") == 2
    assert capsys.readouterr().err == REFUSAL
    assert OWN not in sys.modules and not (tmp_path / "run").exists()
    monkeypatch.setenv(TRUST_CODE_ENV, "1")
    assert _compute(model, data, tmp_path / "run") == 0


def test_layer_norm_dropout_and_frozen_layers_compute_with_trust_code(tmp_path):
    data = _npz(tmp_path / "v.npz", (6,))
    model = _checkpoint(tmp_path, f"{OWN}:LayerNormMLP", LAYER_NORM_ARGS)
    assert _compute(model, data, tmp_path / "run", "--trust-code") == 0
    manifest = _assert_complete(tmp_path / "run", 18, 6)
    # LayerNorm's affine parameters go through the flat fallback; the frozen layer is left out.
    assert _layers(manifest) == {"body.3": "linear", "body.0.weight": "flat", "body.0.bias": "flat"}


@pytest.mark.parametrize(
    "argv",
    [
        ["--arch-args", "[1, 2]"],
        ["--arch-args", "{not json"],
        ["--arch", "mlp", "--arch-args", '{"depth": 3}'],
        ["--arch", "transformer9000"],
        ["--arch", f"{OWN}:missing", "--trust-code"],
        ["--arch", f"{OWN}:broken", "--trust-code"],
    ],
)
def test_bad_architecture_arguments_exit_2(tmp_path, capsys, argv):
    model = _checkpoint(tmp_path, "mlp", {"input_dim": 6, "num_classes": 2})
    data = _npz(tmp_path / "v.npz", (6,))
    try:
        status = _compute(model, data, tmp_path / "run", *argv)
    except SystemExit as exit_:  # argparse refuses a malformed option value
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2 and "error:" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_compute_command_passes_the_architecture_on():
    arch_args = {"in_channels": 2, "num_classes": 3}
    request = RunRequest(Path("up.pt"), "digits", CompressionConfig(), CurvatureConfig(),
                         arch=f"{OWN}:conv1d_net", arch_args=arch_args)  # fmt: skip
    command = compute_command(request, "/runs/x")
    assert command[command.index("--arch") + 1] == f"{OWN}:conv1d_net"
    assert json.loads(command[command.index("--arch-args") + 1]) == request.arch_args
    assert compute_request(build_parser().parse_args(command[3:])) == request
    plain = RunRequest(Path("up.pt"), "digits", CompressionConfig(), CurvatureConfig())
    assert "--arch" not in compute_command(plain, "/runs/x")


@pytest.mark.slow
def test_conv1d_on_signals_in_a_job_process(tmp_path):
    data = _npz(tmp_path / "s.npz", (2, 16), layout=np.array("signals"))
    arch_args = {"in_channels": 2, "num_classes": 2}
    model = _checkpoint(tmp_path, f"{OWN}:conv1d_net", arch_args, ".pt")
    sidecar_path(model).unlink()  # as uploaded: the architecture comes with the job's command
    request = RunRequest(model, data, CompressionConfig(keep_ratio=0.5), CurvatureConfig(),
                         batch_size=8, arch=f"{OWN}:conv1d_net", arch_args=arch_args)  # fmt: skip
    command = compute_command(request, tmp_path / "run")
    env = {"PATH": "/usr/bin:/bin", "DROPINF_HOME": str(tmp_path / "home")}
    refused = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "pass --trust-code" in refused.stderr
    trusted = {**env, TRUST_CODE_ENV: "1"}  # the dashboard's jobs inherit the server's opt-in
    done = subprocess.run(command, cwd=ROOT, env=trusted, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    layers = _layers(_assert_complete(tmp_path / "run", 18, 6))
    assert layers["1.weight"] == layers["1.bias"] == "flat"  # BatchNorm1d's affine parameters
    assert layers["0"] == layers["3"] == "conv1d" and layers["7"] == "linear"  # factored


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "arch_args", "norm"),
    [
        ("resnet18", {"num_classes": 2}, "bn1"),
        ("resnet9", {"in_channels": 3, "num_classes": 2, "width": 4}, "0.1"),
    ],
)
def test_batchnorm_image_models_compute_end_to_end(tmp_path, arch, arch_args, norm):
    data = _npz(tmp_path / "img.npz", (3, 32, 32), n=16)
    model = _checkpoint(tmp_path, arch, arch_args)
    assert _compute(model, data, tmp_path / "run") == 0
    manifest = _assert_complete(tmp_path / "run", 12, 4)
    layers = _layers(manifest)
    assert layers[f"{norm}.weight"] == layers[f"{norm}.bias"] == "flat"
    assert not any("running_" in name or "num_batches" in name for name in layers)
    assert manifest["provenance"]["arch"] == arch
