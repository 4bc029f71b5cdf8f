"""Own-code architectures behind the trust opt-in, sidecar-less checkpoints, write_sidecar."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

from dropinf.core import CompressionConfig, CurvatureConfig
from dropinf.errors import (
    CheckpointError,
    CheckpointMismatchError,
    ConfigError,
    UnknownArchitectureError,
)
from dropinf.models import (
    TRUST_CODE_ENV,
    build_architecture,
    build_model,
    load_checkpoint,
    save_checkpoint,
    sidecar_path,
    write_sidecar,
)
from dropinf.run import RunRequest, run_key

OWN = "tests.models.own_models"
PROBE = "tests.models.own_models_probe"
REFUSAL = (
    r"^expected a registry architecture \(mlp, small_cnn, resnet9 or a torchvision classifier "
    r"such as resnet18\); found code reference 'tests\.models\.own_models_probe:build' — "
    r"importing code runs it; pass --trust-code or set DROPINF_TRUST_CODE=1$"
)


@pytest.fixture(autouse=True)
def untrusted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRUST_CODE_ENV, raising=False)


def test_code_reference_is_refused_before_anything_is_imported(monkeypatch):
    monkeypatch.delitem(sys.modules, PROBE, raising=False)
    for arch_args in ({}, {"trust_code": True}):  # no argument can smuggle the opt-in
        with pytest.raises(UnknownArchitectureError, match=REFUSAL):
            build_architecture(f"{PROBE}:build", arch_args)
    with pytest.raises(UnknownArchitectureError, match=REFUSAL):
        build_model(f"{PROBE}:build")
    monkeypatch.setenv(TRUST_CODE_ENV, "yes")  # only "1" trusts
    with pytest.raises(UnknownArchitectureError, match=REFUSAL):
        build_architecture(f"{PROBE}:build", {}, trust_code=None)
    assert PROBE not in sys.modules


def test_trusted_code_builds_with_its_arguments(monkeypatch):
    model = build_architecture(f"{OWN}:conv1d_net", {"in_channels": 2, "num_classes": 3}, True)
    assert model(torch.zeros(4, 2, 10)).shape == (4, 3)
    monkeypatch.setenv(TRUST_CODE_ENV, "1")
    layer_norm_mlp = build_model(f"{OWN}:LayerNormMLP", input_dim=5, num_classes=2)
    assert layer_norm_mlp(torch.zeros(3, 5)).shape == (3, 2)
    with pytest.raises(UnknownArchitectureError, match="found code reference"):
        build_architecture(f"{OWN}:LayerNormMLP", {}, trust_code=False)  # False overrides env


@pytest.mark.parametrize(
    ("arch", "arch_args", "error", "message"),
    [
        ("tests.models.own_models:", {}, UnknownArchitectureError, "package.module:callable"),
        ("no_such_module_xyz:f", {}, UnknownArchitectureError, "cannot import 'no_such_mod"),
        (f"{OWN}:missing", {}, UnknownArchitectureError, "has no 'missing'"),
        (f"{OWN}:NOT_CALLABLE", {}, UnknownArchitectureError, "is a int, not callable"),
        (f"{OWN}:not_a_model", {}, ConfigError, "returned str; expected a torch.nn.Module"),
        (f"{OWN}:broken", {}, ConfigError, "RuntimeError: the analyst's builder broke"),
        (f"{OWN}:conv1d_net", {"depth": 3}, ConfigError, "unexpected keyword argument 'depth'"),
    ],
)
def test_bad_code_references_are_named(arch, arch_args, error, message):
    with pytest.raises(error, match=message):
        build_architecture(arch, arch_args, trust_code=True)


def _saved(tmp_path: Path, suffix: str = ".pt") -> tuple[Path, torch.nn.Module]:
    model = build_model("mlp", input_dim=4, num_classes=2, hidden_sizes=[3])
    path = save_checkpoint(tmp_path / f"m{suffix}", model, "mlp", {"input_dim": 4, "num_classes": 2,
                           "hidden_sizes": [3]})  # fmt: skip
    sidecar_path(path).unlink()
    return path, model


def test_checkpoint_without_sidecar_needs_an_architecture(tmp_path):
    path, model = _saved(tmp_path)
    with pytest.raises(
        CheckpointError,
        match=r"m\.pt: expected an architecture: pick one in the Load page or pass --arch; "
        r"found a checkpoint without a sidecar",
    ):
        load_checkpoint(path)
    args = {"input_dim": 4, "num_classes": 2, "hidden_sizes": [3]}
    loaded = load_checkpoint(path, "mlp", args)
    assert loaded.arch == "mlp" and loaded.arch_args == args
    assert torch.equal(loaded.model[1].weight, model[1].weight)


def test_write_sidecar_makes_the_checkpoint_loadable(tmp_path):
    path, _ = _saved(tmp_path, ".safetensors")
    path = path.rename(tmp_path / "upload.safetensors")  # no metadata under this name is wrong
    args = {"input_dim": 4, "num_classes": 2, "hidden_sizes": [3]}
    sidecar = write_sidecar(path, "mlp", args)
    assert sidecar == tmp_path / "upload.safetensors.json"
    assert json.loads(sidecar.read_text())["arch_args"] == args
    assert load_checkpoint(path).arch_args == args
    assert write_sidecar(path, "mlp", args) == sidecar  # the same description: kept
    with pytest.raises(CheckpointError, match=r"already names 'mlp'.*overwrite=True"):
        write_sidecar(path, "small_cnn", {})
    write_sidecar(path, f"{OWN}:conv1d_net", {"in_channels": 1}, overwrite=True)
    with pytest.raises(UnknownArchitectureError, match="found code reference"):
        load_checkpoint(path)  # the sidecar may name code; loading it still needs the opt-in


@pytest.mark.parametrize(
    ("arch", "arch_args", "message"),
    [
        ("", {}, "expected an architecture name"),
        (None, {}, "expected an architecture name"),
        ("mlp", [1, 2], "arch_args must be a JSON object"),
        ("mlp", {"f": object()}, "not JSON-serialisable"),
    ],
)
def test_write_sidecar_refuses_bad_descriptions(tmp_path, arch, arch_args, message):
    path, _ = _saved(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        write_sidecar(path, arch, arch_args)
    assert not sidecar_path(path).exists()


def test_write_sidecar_needs_the_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        write_sidecar(tmp_path / "absent.pt", "mlp", {})
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match="unsupported checkpoint file"):
        write_sidecar(tmp_path / "notes.txt", "mlp", {})


def test_an_explicit_other_arch_does_not_take_the_sidecars_arguments(tmp_path):
    model = build_model("mlp", input_dim=64, num_classes=10, hidden_sizes=[8])
    path = save_checkpoint(tmp_path / "m.pt", model, "mlp", {"input_dim": 64, "num_classes": 10,
                           "hidden_sizes": [8]})  # fmt: skip
    with pytest.raises(CheckpointMismatchError, match=r"does not fit Sequential: missing keys"):
        load_checkpoint(path, "small_cnn")  # built with its defaults, not mlp's input_dim
    assert load_checkpoint(path, "mlp").arch_args["hidden_sizes"] == [8]


def test_the_architecture_enters_the_run_key_only_when_named():
    base = RunRequest(Path("m.pt"), "digits", CompressionConfig(), CurvatureConfig())
    named = RunRequest(Path("other.pt"), "digits", CompressionConfig(), CurvatureConfig(),
                       arch="resnet18", arch_args={"num_classes": 10})  # fmt: skip
    other_args = RunRequest(Path("m.pt"), "digits", CompressionConfig(), CurvatureConfig(),
                            arch="resnet18", arch_args={"num_classes": 9})  # fmt: skip
    keys = [run_key(r, "a" * 64, "f" * 64) for r in (base, named, other_args)]
    assert len(set(keys)) == 3
    moved = RunRequest(Path("elsewhere/m2.pt"), "digits:seed=0", CompressionConfig(),
                       CurvatureConfig(), device="cuda", batch_size=8, arch="resnet18",
                       arch_args={"num_classes": 10})  # fmt: skip
    assert run_key(moved, "a" * 64, "f" * 64) == keys[1]  # same file + same arch
    identity = {"checkpoint_sha256": "a" * 64, "data_fingerprint": "f" * 64,
                "compression": CompressionConfig().to_dict(),
                "curvature": CurvatureConfig().to_dict()}  # fmt: skip
    encoded = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    assert keys[0] == hashlib.sha256(encoded).hexdigest()[:16]  # sidecar runs keep their key
