"""Model registry, safe checkpoints (incl. a real malicious pickle), and named mismatch errors."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from dropinf.errors import (
    CheckpointError,
    CheckpointMismatchError,
    ConfigError,
    DataModelMismatchError,
    UnknownArchitectureError,
    UnsafeCheckpointError,
)
from dropinf.models import (
    arch_args_for_data,
    architectures,
    build_model,
    check_model_fits_data,
    count_parameters,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
    sidecar_path,
    small_cnn,
)

DIGITS_CNN_ARGS = {"in_channels": 1, "input_size": 8, "num_classes": 10}


def _digits_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("small_cnn", **DIGITS_CNN_ARGS)


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("arch", "arch_args", "input_shape", "parameters"),
    [
        ("mlp", {"input_dim": 64, "num_classes": 10, "hidden_sizes": [32, 16]}, (1, 8, 8), 2_778),
        ("small_cnn", DIGITS_CNN_ARGS, (1, 8, 8), 151_306),
        ("small_cnn", {"in_channels": 1, "input_size": 28, "num_classes": 10}, (1, 28, 28), None),
        ("resnet9", {"in_channels": 3, "num_classes": 10, "width": 8}, (3, 32, 32), None),
        ("resnet18", {"num_classes": 7}, (3, 32, 32), None),
    ],
)
def test_build_model_outputs_one_logit_per_class(arch, arch_args, input_shape, parameters):
    model = build_model(arch, **arch_args).eval()
    logits = model(torch.zeros(2, *input_shape))
    assert logits.shape == (2, arch_args["num_classes"])
    if parameters is not None:
        assert count_parameters(model) == parameters


def test_resnet9_has_batchnorm_small_cnn_does_not():
    resnet = build_model("resnet9", num_classes=10, width=8)
    assert any(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in _digits_cnn().modules())


def test_registry_names_and_errors():
    names = architectures()
    assert names[:3] == ["mlp", "small_cnn", "resnet9"] and "resnet18" in names
    with pytest.raises(UnknownArchitectureError, match="unknown architecture 'transformer9000'"):
        build_model("transformer9000")
    with pytest.raises(ConfigError, match=r"unknown: \['depth'\], missing: \['num_classes'\]"):
        build_model("mlp", input_dim=4, depth=3)
    with pytest.raises(ConfigError, match="pretrained weights are not supported"):
        build_model("resnet18", weights="IMAGENET1K_V1")


def test_arch_args_for_data():
    assert arch_args_for_data("small_cnn", (1, 8, 8), 10) == DIGITS_CNN_ARGS
    assert arch_args_for_data("mlp", (1, 8, 8), 10) == {"input_dim": 64, "num_classes": 10}
    assert arch_args_for_data("resnet9", (3, 32, 32), 5) == {"in_channels": 3, "num_classes": 5}
    assert arch_args_for_data("resnet18", (3, 32, 32), 5) == {"num_classes": 5}


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_round_trip(tmp_path, suffix):
    model = _digits_cnn(seed=3)
    path = save_checkpoint(tmp_path / f"m{suffix}", model, "small_cnn", DIGITS_CNN_ARGS, {"k": 1})
    assert sidecar_path(path).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no leftovers
    loaded = load_checkpoint(path)
    assert (loaded.arch, loaded.arch_args, loaded.extra) == ("small_cnn", DIGITS_CNN_ARGS, {"k": 1})
    assert not loaded.model.training and len(loaded.sha256) == 64
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)


def test_safetensors_metadata_suffices_without_sidecar(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _digits_cnn(), "small_cnn", DIGITS_CNN_ARGS)
    sidecar_path(path).unlink()
    assert load_checkpoint(path).arch_args == DIGITS_CNN_ARGS


def test_hand_written_safetensors_metadata(tmp_path):
    from safetensors.torch import save_file

    model = _digits_cnn(seed=4)
    path = tmp_path / "own.safetensors"
    metadata = {"arch": "small_cnn", "arch_args": json.dumps(DIGITS_CNN_ARGS)}
    save_file(model.state_dict(), str(path), metadata=metadata)
    loaded = load_checkpoint(path)
    assert loaded.arch_args == DIGITS_CNN_ARGS
    assert torch.equal(loaded.model.state_dict()["6.weight"], model.state_dict()["6.weight"])


def test_same_model_saves_byte_identical_files(tmp_path):
    model = _digits_cnn()
    first = save_checkpoint(
        tmp_path / "a.safetensors", model, "small_cnn", DIGITS_CNN_ARGS, {"x": 1, "y": 2}
    )
    again = save_checkpoint(
        tmp_path / "b.safetensors", model, "small_cnn", DIGITS_CNN_ARGS, {"x": 1, "y": 2}
    )
    assert first.read_bytes() == again.read_bytes()


def test_resnet9_batchnorm_buffers_round_trip(tmp_path):
    model = build_model("resnet9", num_classes=10, width=4)
    model(torch.randn(4, 3, 32, 32))  # updates running statistics
    path = save_checkpoint(
        tmp_path / "r.safetensors", model, "resnet9", {"num_classes": 10, "width": 4}
    )
    restored = load_checkpoint(path).model
    assert torch.equal(
        restored.state_dict()["0.1.running_mean"], model.state_dict()["0.1.running_mean"]
    )


def test_bare_state_dict_with_explicit_architecture(tmp_path):
    model = _digits_cnn()
    path = tmp_path / "bare.pt"
    torch.save(
        {"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path
    )
    with pytest.raises(
        CheckpointError, match=r"architecture: .* without a sidecar \(bare\.pt\.json\)"
    ):
        load_checkpoint(path)
    loaded = load_checkpoint(path, arch="small_cnn", arch_args=DIGITS_CNN_ARGS)
    assert torch.equal(loaded.model.state_dict()["0.weight"], model.state_dict()["0.weight"])


# ---------------------------------------------------------------- refusals and corrupt files


class _CreatesFileWhenUnpickled:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("container", ["torch_save", "raw_pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path, container):
    marker = tmp_path / "pwned"
    payload = {"0.weight": torch.zeros(1), "payload": _CreatesFileWhenUnpickled(marker)}
    path = tmp_path / "evil.pt"
    if container == "torch_save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    sidecar_path(path).write_text(json.dumps({"arch": "small_cnn", "arch_args": DIGITS_CNN_ARGS}))
    with pytest.raises(UnsafeCheckpointError, match="refused without running it"):
        load_checkpoint(path)
    assert not marker.exists()


def test_corrupt_checkpoints(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _digits_cnn(), "small_cnn", DIGITS_CNN_ARGS)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    path.write_bytes(b"garbage" * 50)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(path)
    safe = save_checkpoint(tmp_path / "m.safetensors", _digits_cnn(), "small_cnn", DIGITS_CNN_ARGS)
    safe.write_bytes(safe.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(safe)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"expected a suffix among \.safetensors"):
        save_checkpoint(tmp_path / "m.pkl", _digits_cnn(), "small_cnn", DIGITS_CNN_ARGS)


def test_non_state_dict_and_bad_sidecar(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match=r"expected a state_dict .* found list"):
        load_checkpoint(path, arch="small_cnn")
    good = save_checkpoint(tmp_path / "g.pt", _digits_cnn(), "small_cnn", DIGITS_CNN_ARGS)
    sidecar_path(good).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"g\.pt\.json: not valid JSON"):
        load_checkpoint(good)


# ---------------------------------------------------------------- mismatches


def test_unknown_architecture_in_sidecar(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _digits_cnn(), "small_cnn", DIGITS_CNN_ARGS)
    sidecar_path(path).write_text(json.dumps({"arch": "vgg_tiny_custom", "arch_args": {}}))
    with pytest.raises(UnknownArchitectureError, match="unknown architecture 'vgg_tiny_custom'"):
        load_checkpoint(path)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _digits_cnn(), "small_cnn", DIGITS_CNN_ARGS)
    with pytest.raises(CheckpointMismatchError) as caught:
        load_checkpoint(path, arch="mlp", arch_args={"input_dim": 64, "num_classes": 10})
    message = str(caught.value)
    assert "missing keys [1.bias, 1.weight, 3.bias, 3.weight]" in message
    assert "unexpected keys [0.bias, 0.weight, 2.bias, 2.weight, 6.bias" in message


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _digits_cnn(), "small_cnn", DIGITS_CNN_ARGS)
    with pytest.raises(CheckpointMismatchError) as caught:
        load_checkpoint(path, arch="small_cnn", arch_args={**DIGITS_CNN_ARGS, "num_classes": 3})
    message = str(caught.value)
    assert "8.weight: checkpoint (10, 128) vs model (3, 128)" in message
    assert "8.bias: checkpoint (10,) vs model (3,)" in message


def test_non_finite_weights_refused(tmp_path):
    model = _digits_cnn()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    path = save_checkpoint(tmp_path / "nan.pt", model, "small_cnn", DIGITS_CNN_ARGS)
    with pytest.raises(CheckpointError, match=r"tensor 0\.weight holds NaN or infinity"):
        load_checkpoint(path)


def test_check_model_fits_data(digits_bundle):
    check_model_fits_data(_digits_cnn(), digits_bundle)  # fits: no error
    wrong_classes = build_model("small_cnn", in_channels=1, input_size=8, num_classes=4)
    with pytest.raises(DataModelMismatchError, match="outputs 4 classes; dataset 'digits' has 10"):
        check_model_fits_data(wrong_classes, digits_bundle)
    wrong_channels = build_model("small_cnn", in_channels=3, input_size=8, num_classes=10)
    with pytest.raises(DataModelMismatchError, match=r"cannot take inputs of shape \(1, 8, 8\)"):
        check_model_fits_data(wrong_channels, digits_bundle)
    wrong_size = build_model("small_cnn", in_channels=1, input_size=28, num_classes=10)
    with pytest.raises(DataModelMismatchError, match="cannot take inputs"):
        check_model_fits_data(wrong_size, digits_bundle)
    wrong_dim = build_model("mlp", input_dim=784, num_classes=10)
    with pytest.raises(DataModelMismatchError, match="cannot take inputs"):
        check_model_fits_data(wrong_dim, digits_bundle)
    assert wrong_dim.training  # the check restores the training flag


def test_file_sha256_is_the_digest_of_the_bytes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert file_sha256(path) == expected


# ---------------------------------------------------------------- absurd sizes


def test_absurd_sizes_are_refused_with_an_estimate_before_allocating():
    with pytest.raises(ConfigError, match=r"would hold 1,319,413,953,331,210 parameters"):
        build_model("mlp", input_dim=64, num_classes=10, hidden_sizes=[2**44])
    with pytest.raises(ConfigError, match=r"cannot be built"):
        build_model("resnet9", width=2**44)
    with pytest.raises(ConfigError, match=r"hidden_sizes must be a list of positive integers"):
        build_model("mlp", input_dim=64, num_classes=10, hidden_sizes=[-8])
    with pytest.raises(ConfigError, match=r"num_classes must be a positive integer; found '10'"):
        build_model("resnet18", num_classes="10")


def test_the_size_check_leaves_the_seeded_initialisation_unchanged():
    torch.manual_seed(3)
    built = build_model("small_cnn", **DIGITS_CNN_ARGS)
    torch.manual_seed(3)
    direct = small_cnn(**DIGITS_CNN_ARGS)
    for name, tensor in direct.state_dict().items():
        assert torch.equal(built.state_dict()[name], tensor), name
