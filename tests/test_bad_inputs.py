"""The bad-input catalogue (issue 9): every bad input ends in a named error, never a traceback.

From the command line: ``error: <what was expected, what was found>`` on stderr and exit status
2 (never 0, never 1, never a traceback). From the API: a named error of :mod:`dropinf.errors`
(a ``ValueError`` where the input is at fault). Hand-listed cases sit beside ``hypothesis``
strategies for data specs, configs, recipes and checkpoint sidecars; every case the strategies
found is kept as an explicit ``@example``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from dropinf import paths
from dropinf.cli import main
from dropinf.core import CompressionConfig, CurvatureConfig, cross_entropy_per_sample
from dropinf.data import SPEC_OPTIONS, load_data, parse_spec, safe_unpickle
from dropinf.engine import InfluenceEngine
from dropinf.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    DropinfError,
    IncompleteRunError,
    LossShapeError,
    NoCapturableLayerError,
    NonFiniteError,
    RunNotFoundError,
    UnknownArchitectureError,
    UnsafeCheckpointError,
)
from dropinf.models import (
    TrainRecipe,
    build_model,
    load_checkpoint,
    retrain_with_fixes,
    save_checkpoint,
    sidecar_path,
    train_model,
)
from dropinf.review import decide, export_json

MLP_ARGS = {"input_dim": 64, "num_classes": 10, "hidden_sizes": [8]}
HUGE = 2**44
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ERROR_LINE = re.compile(r"^(python -m dropinf[\w ]*: )?error: \S.*", re.MULTILINE)


# ---------------------------------------------------------------------------- helpers


def assert_bad_input_output(status: int, err: str) -> None:
    """Exit 2, an ``error:`` line on stderr, and no traceback."""
    assert "Traceback" not in err, err
    assert status == 2, f"exit {status}, stderr: {err[-2000:]}"
    assert ERROR_LINE.search(err), err


def run_main(argv: list[str]) -> tuple[int, str]:
    """``dropinf.cli.main(argv)`` in-process; argparse's SystemExit counts as the status."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else 1
    return status, err.getvalue()


def run_subprocess(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dropinf", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"DROPINF_HOME": str(cwd / "home"), "PATH": "/usr/bin:/bin"},
    )


def assert_named_error(error: BaseException, input_at_fault: bool = True) -> None:
    assert isinstance(error, DropinfError), f"{type(error).__name__}: {error}"
    if input_at_fault:
        assert isinstance(error, ValueError), f"{type(error).__name__} is not a ValueError"
    assert str(error).strip(), "the message is empty"


def raises_named(call, *args: Any, input_at_fault: bool = True, **kwargs: Any) -> BaseException:
    try:
        call(*args, **kwargs)
    except Exception as error:
        assert_named_error(error, input_at_fault)
        return error
    raise AssertionError(f"{call.__name__}{args} {kwargs} raised nothing")


class CreatesFileWhenUnpickled:
    """A pickle payload that would create ``target`` if it were ever run."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class WholeModel(nn.Module):
    """A model saved whole (``torch.save(model)``), not as a state_dict."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


# ---------------------------------------------------------------------------- fixtures


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", **MLP_ARGS)


def _checkpoint_with_sidecar(folder: Path, name: str, sidecar: Any) -> Path:
    path = save_checkpoint(folder / f"{name}.safetensors", _mlp(), "mlp", MLP_ARGS)
    text = sidecar if isinstance(sidecar, str) else json.dumps(sidecar)
    sidecar_path(path).write_text(text)
    path.write_bytes(_plain_safetensors(path))
    return path


def _plain_safetensors(path: Path) -> bytes:
    """The checkpoint rewritten without metadata, so only the sidecar describes it."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    tmp = path.with_suffix(".plain")
    save_file(tensors, str(tmp))
    data = tmp.read_bytes()
    tmp.unlink()
    return data


SIDECARS: dict[str, Any] = {
    "ck_width": {"arch": "mlp", "arch_args": {**MLP_ARGS, "hidden_sizes": [HUGE]}},
    "ck_neg": {"arch": "mlp", "arch_args": {**MLP_ARGS, "hidden_sizes": [-8]}},
    "ck_zero_classes": {"arch": "mlp", "arch_args": {**MLP_ARGS, "num_classes": 0}},
    "ck_type": {"arch": "mlp", "arch_args": {**MLP_ARGS, "hidden_sizes": "eight"}},
    "ck_str_int": {"arch": "mlp", "arch_args": {**MLP_ARGS, "num_classes": "10"}},
    "ck_float": {"arch": "mlp", "arch_args": {**MLP_ARGS, "input_dim": 64.5}},
    "ck_bool": {"arch": "mlp", "arch_args": {**MLP_ARGS, "num_classes": True}},
    "ck_null": {"arch": "mlp", "arch_args": {**MLP_ARGS, "input_dim": None}},
    "ck_missing": {"arch": "mlp", "arch_args": {"num_classes": 10, "hidden_sizes": [8]}},
    "ck_extra": {"arch": "mlp", "arch_args": {**MLP_ARGS, "dropout": 0.5}},
    "ck_arch_num": {"arch": 5, "arch_args": MLP_ARGS},
    "ck_arch_list": {"arch": ["mlp"], "arch_args": MLP_ARGS},
    "ck_args_list": {"arch": "mlp", "arch_args": [64, 10]},
    "ck_sidecar_list": ["mlp", MLP_ARGS],
    "ck_sidecar_json": "{not json",
    "ck_no_arch": {"arch_args": MLP_ARGS},
    "ck_extra_type": {"arch": "mlp", "arch_args": MLP_ARGS, "extra": 5},
    "ck_unknown_arch": {"arch": "vgg_tiny_custom", "arch_args": {}},
    "ck_shape": {"arch": "mlp", "arch_args": {**MLP_ARGS, "hidden_sizes": [16]}},
    "ck_tv_neg": {"arch": "resnet18", "arch_args": {"num_classes": -3}},
    "ck_tv_huge": {"arch": "resnet18", "arch_args": {"num_classes": HUGE}},
    "ck_tv_type": {"arch": "resnet18", "arch_args": {"num_classes": "ten"}},
    "ck_tv_kwarg": {"arch": "resnet18", "arch_args": {"num_classes": 10, "bogus": 1}},
    "ck_cnn_huge": {"arch": "small_cnn", "arch_args": {"in_channels": 1, "input_size": 2**20}},
    "ck_resnet9_huge": {"arch": "resnet9", "arch_args": {"width": HUGE}},
    "ck_resnet9_neg": {"arch": "resnet9", "arch_args": {"width": -64}},
}


def _make_checkpoints(folder: Path, files: dict[str, Path]) -> None:
    files["ckpt"] = save_checkpoint(folder / "mlp.safetensors", _mlp(), "mlp", MLP_ARGS)
    files["ckpt_pt"] = save_checkpoint(folder / "mlp.pt", _mlp(), "mlp", MLP_ARGS)
    for name, sidecar in SIDECARS.items():
        files[name] = _checkpoint_with_sidecar(folder, name, sidecar)
    files["ck_nosidecar"] = folder / "nosidecar.pt"
    torch.save(_mlp().state_dict(), files["ck_nosidecar"])
    nan_model = _mlp()
    with torch.no_grad():
        nan_model[1].weight[0, 0] = float("nan")
    files["ck_nan"] = save_checkpoint(folder / "nan.safetensors", nan_model, "mlp", MLP_ARGS)
    data = files["ckpt"].read_bytes()
    for name, payload in {
        "corrupt_st": b"this is not a checkpoint" * 10,
        "truncated_st": data[: len(data) // 2],
        "empty_st": b"",
        "header_st": (2**40).to_bytes(8, "little") + b"{}",
    }.items():
        files[name] = folder / f"{name}.safetensors"
        files[name].write_bytes(payload)
        sidecar_path(files[name]).write_text(json.dumps({"arch": "mlp", "arch_args": MLP_ARGS}))
    pt = files["ckpt_pt"].read_bytes()
    for name, payload in {
        "garbage_pt": b"garbage" * 50,
        "truncated_pt": pt[: len(pt) // 2],
    }.items():
        files[name] = folder / f"{name}.pt"
        files[name].write_bytes(payload)
    files["list_pt"] = folder / "list.pt"
    torch.save([torch.zeros(2)], files["list_pt"])
    files["whole_pt"] = folder / "whole.pt"
    torch.save(WholeModel(), files["whole_pt"])
    files["evil_pt"] = folder / "evil.pt"
    marker = folder / "pwned"
    torch.save(
        {"1.weight": torch.zeros(1), "x": CreatesFileWhenUnpickled(marker)}, files["evil_pt"]
    )
    files["evil_raw_pt"] = folder / "evil_raw.pt"
    files["evil_raw_pt"].write_bytes(pickle.dumps(CreatesFileWhenUnpickled(marker), protocol=2))
    files["marker"] = marker
    for name in ("whole_pt", "evil_pt", "evil_raw_pt", "list_pt", "garbage_pt", "truncated_pt"):
        sidecar_path(files[name]).write_text(json.dumps({"arch": "mlp", "arch_args": MLP_ARGS}))
    files["pkl"] = folder / "model.pkl"
    files["pkl"].write_bytes(b"x")
    files["dir_st"] = folder / "dir.safetensors"
    files["dir_st"].mkdir()


def _npz(folder: Path, name: str, **arrays: Any) -> Path:
    path = folder / f"{name}.npz"
    np.savez(path, **arrays)
    return path


def _make_npz_files(folder: Path, files: dict[str, Path]) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((60, 1, 8, 8), dtype=np.float32)
    y = np.arange(60) % 10
    nan_x = x.copy()
    nan_x[7, 0, 3, 3] = np.nan
    inf_x = x.copy()
    inf_x[2, 0, 0, 0] = np.inf
    specs: dict[str, dict[str, Any]] = {
        "nan_npz": {"x": nan_x, "y": y},
        "inf_npz": {"x": inf_x, "y": y},
        "noy_npz": {"x": x},
        "nox_npz": {"y": y},
        "xtest_only_npz": {"x": x, "y": y, "x_test": x},
        "yfloat_npz": {"x": x, "y": y.astype(np.float32)},
        "y2d_npz": {"x": x, "y": y[:, None]},
        "ylen_npz": {"x": x, "y": y[:50]},
        "x5d_npz": {"x": x[:, None], "y": y},
        "x1d_npz": {"x": y.astype(np.float32), "y": y},
        "xstr_npz": {"x": np.array(["a"] * 60), "y": y},
        "xcomplex_npz": {"x": x.astype(np.complex64), "y": y},
        "obj_npz": {"x": np.array([object()] * 60, dtype=object), "y": y},
        "neg_label_npz": {"x": x, "y": y - 1},
        "label_range_npz": {"x": x, "y": y, "class_names": np.array(["a", "b", "c"])},
        "one_class_npz": {"x": x, "y": np.zeros(60, dtype=np.int64)},
        "one_name_npz": {"x": x, "y": y * 0, "class_names": np.array(["only"])},
        "names_0d_npz": {"x": x, "y": y, "class_names": np.array("digits")},
        "empty_npz": {"x": x[:0], "y": y[:0]},
        "zero_feature_npz": {"x": np.zeros((60, 0), dtype=np.float32), "y": y},
        "test_shape_npz": {"x": x, "y": y, "x_test": x[:, :, :4], "y_test": y},
        "huge_label_npz": {"x": x, "y": np.where(y == 9, 2**40, y)},
        "tiny_split_npz": {"x": x[:2], "y": np.array([0, 1])},
        "wide_npz": {"x": rng.random((40, 3, 32, 32), dtype=np.float32), "y": np.arange(40) % 10},
        "classes3_npz": {"x": x, "y": y % 3},
        "good_npz": {"x": x, "y": y},
    }
    for name, arrays in specs.items():
        files[name] = _npz(folder, name, **arrays)
    files["notzip_npz"] = folder / "notzip.npz"
    files["notzip_npz"].write_bytes(b"PK not really a zip")
    files["txt_data"] = folder / "data.txt"
    files["txt_data"].write_text("1,2,3\n")


def _png(path: Path, size: tuple[int, int] = (8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, color=128).save(path)


def _make_folders(folder: Path, files: dict[str, Path]) -> None:
    files["empty_dir"] = folder / "empty_dir"
    files["empty_dir"].mkdir()
    files["noimages_dir"] = folder / "noimages"
    (files["noimages_dir"] / "cat").mkdir(parents=True)
    (files["noimages_dir"] / "dog").mkdir(parents=True)
    files["nonimage_dir"] = folder / "nonimage"
    _png(files["nonimage_dir"] / "cat" / "a.png")
    _png(files["nonimage_dir"] / "dog" / "b.png")
    (files["nonimage_dir"] / "dog" / "notes.txt").write_text("hi")
    files["corrupt_png_dir"] = folder / "corrupt_png"
    _png(files["corrupt_png_dir"] / "cat" / "a.png")
    _png(files["corrupt_png_dir"] / "dog" / "b.png")
    (files["corrupt_png_dir"] / "dog" / "b.png").write_bytes(b"\x89PNG broken")
    files["sizes_dir"] = folder / "sizes"
    _png(files["sizes_dir"] / "cat" / "a.png", (8, 8))
    _png(files["sizes_dir"] / "dog" / "b.png", (9, 7))
    files["test_class_dir"] = folder / "test_class"
    for split, classes in (("train", ("cat", "dog")), ("test", ("cat", "emu"))):
        for name in classes:
            _png(files["test_class_dir"] / split / name / "a.png")
    files["cifar_evil_dir"] = folder / "cifar_evil"
    files["cifar_evil_dir"].mkdir()
    for name in ("data_batch_1", "test_batch"):
        payload = pickle.dumps(CreatesFileWhenUnpickled(files["marker"]), protocol=2)
        (files["cifar_evil_dir"] / name).write_bytes(payload)
    files["cifar_missing_dir"] = folder / "cifar_missing"
    files["cifar_missing_dir"].mkdir()
    (files["cifar_missing_dir"] / "data_batch_1").write_bytes(b"")


def _make_runs(folder: Path, files: dict[str, Path]) -> None:
    for name, text in {
        "garbage_manifest": "\x00\x01 not json {",
        "list_manifest": "[]",
        "partial_manifest": json.dumps({"status": "complete"}),
        "empty_manifest": "",
    }.items():
        files[name] = folder / name
        files[name].mkdir()
        (files[name] / "manifest.json").write_text(text)
    files["norun_dir"] = folder / "norun"
    files["norun_dir"].mkdir()
    files["a_file"] = folder / "a_file"
    files["a_file"].write_text("user data\n")
    files["decisions"] = folder / "decisions.json"
    files["decisions"].write_bytes(export_json({0: decide("remove")}))
    files["bad_decisions"] = folder / "bad_decisions.json"
    files["bad_decisions"].write_text("{not json")
    files["wrong_decisions"] = folder / "wrong_decisions.json"
    files["wrong_decisions"].write_text(json.dumps({"format": 1, "decisions": {"-4": "x"}}))


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every bad file of the catalogue (and a few good ones), by name."""
    folder = tmp_path_factory.mktemp("bad")
    files: dict[str, Path] = {}
    _make_checkpoints(folder, files)
    _make_npz_files(folder, files)
    _make_folders(folder, files)
    _make_runs(folder, files)
    files["tmp"] = folder
    return files


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROPINF_HOME", str(tmp_path / "home"))


def _argv(template: str, bad: dict[str, Path], tmp_path: Path) -> list[str]:
    fields = {name: str(path) for name, path in bad.items()}
    return [part.format(**fields, out=tmp_path / "out") for part in template.split()]


# ---------------------------------------------------------------------------- CLI: train

TRAIN = "train --arch mlp --epochs 1 --data digits --out {out}.safetensors"
TRAIN_CASES = {
    "no-data": "train --out {out}.safetensors",
    "no-out": "train --data digits",
    "unknown-arch": "train --arch nope --data digits --out {out}.safetensors",
    "arch-args-not-json": TRAIN + " --arch-args {{",
    "arch-args-list": TRAIN + " --arch-args [1]",
    "arch-args-string": TRAIN + ' --arch-args "x"',
    "hidden-sizes-string": TRAIN + ' --arch-args {{"hidden_sizes":"abc"}}',
    "hidden-sizes-negative": TRAIN + ' --arch-args {{"hidden_sizes":[-3]}}',
    "hidden-sizes-2**44": TRAIN + ' --arch-args {{"hidden_sizes":[17592186044416]}}',
    "num-classes-zero": TRAIN + ' --arch-args {{"num_classes":0}}',
    "arch-args-unknown-key": TRAIN + ' --arch-args {{"bogus":1}}',
    "epochs-zero": TRAIN + " --epochs 0",
    "epochs-negative": TRAIN + " --epochs -1",
    "epochs-text": TRAIN + " --epochs x",
    "lr-zero": TRAIN + " --lr 0",
    "lr-nan": TRAIN + " --lr nan",
    "lr-inf": TRAIN + " --lr inf",
    "lr-negative": TRAIN + " --lr -1",
    "batch-size-zero": TRAIN + " --batch-size 0",
    "batch-size-negative": TRAIN + " --batch-size -5",
    "weight-decay-negative": TRAIN + " --weight-decay -1",
    "seed-negative": TRAIN + " --seed -1",
    "device-bogus": TRAIN + " --device bogus",
    "noise-above-one": "train --arch mlp --epochs 1 --data digits:noise=2 --out {out}.pt",
    "spec-unknown-option": "train --arch mlp --epochs 1 --data digits:bogus=1 --out {out}.pt",
    "data-missing": "train --arch mlp --epochs 1 --data {tmp}/missing.npz --out {out}.pt",
    "data-nan": "train --arch mlp --epochs 1 --data {nan_npz} --out {out}.pt",
    "out-suffix": "train --arch mlp --epochs 1 --data digits --out {out}.txt",
    "out-below-a-file": "train --arch mlp --epochs 1 --data digits --out {a_file}/m.pt",
    "out-a-directory": "train --arch mlp --epochs 1 --data digits --out {dir_st}",
}


@pytest.mark.parametrize("template", TRAIN_CASES.values(), ids=TRAIN_CASES.keys())
def test_cli_train_refuses(template: str, bad: dict[str, Path], tmp_path: Path) -> None:
    assert_bad_input_output(*run_main(_argv(template, bad, tmp_path)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is absent")
def test_cli_train_device_cuda_without_cuda(bad: dict[str, Path], tmp_path: Path) -> None:
    assert_bad_input_output(*run_main(_argv(TRAIN + " --device cuda", bad, tmp_path)))


# -------------------------------------------------------------------------- CLI: compute

COMPUTE = "compute --model {ckpt} --data digits --out {out} --device cpu"
MODEL_CASES = [
    "ckpt_pt_missing",
    *SIDECARS,
    "ck_nosidecar",
    "ck_nan",
    "corrupt_st",
    "truncated_st",
    "empty_st",
    "header_st",
    "garbage_pt",
    "truncated_pt",
    "list_pt",
    "whole_pt",
    "evil_pt",
    "evil_raw_pt",
    "pkl",
    "dir_st",
]


@pytest.mark.parametrize("name", MODEL_CASES)
def test_cli_compute_refuses_checkpoint(name: str, bad: dict[str, Path], tmp_path: Path) -> None:
    model = bad.get(name, tmp_path / "missing.pt")
    argv = ["compute", "--model", str(model), "--data", "digits", "--out", str(tmp_path / "r")]
    assert_bad_input_output(*run_main(argv))
    assert not bad["marker"].exists()
    assert not (tmp_path / "r" / "manifest.json").exists()


DATA_CASES = [
    "",
    " ",
    ":",
    "digits:",
    "digits:noise",
    "digits:noise=",
    "digits:noise=abc",
    "digits:noise=-0.1",
    "digits:noise=1.5",
    "digits:noise=nan",
    "digits:noise=inf",
    "digits:noise=0.1,noise=0.2",
    "digits:noise=0.1,kind=weird",
    "digits:noise=0.1,kind=class_conditional,pairs=1-1",
    "digits:noise=0.1,kind=class_conditional,pairs=1-2-3",
    "digits:noise=0.1,kind=class_conditional,pairs=1-99",
    "digits:noise=0.1,kind=class_conditional,pairs=1-2/2-3",
    "digits:noise=0.1,kind=class_conditional,pairs=",
    "digits:noise=0.1,seed=-1",
    "digits:noise=0.1,seed=nan",
    "digits:noise=0.1,seed=inf",
    "digits:noise=0.1,seed=1.5",
    "digits:noise=0.1,seed=x",
    "digits:bogus=1",
    "digits:noise=0.1,,seed=0",
    "mnist",
    "{tmp}/missing.npz",
    "{txt_data}",
    "{nan_npz}",
    "{inf_npz}",
    "{noy_npz}",
    "{nox_npz}",
    "{xtest_only_npz}",
    "{yfloat_npz}",
    "{y2d_npz}",
    "{ylen_npz}",
    "{x5d_npz}",
    "{x1d_npz}",
    "{xstr_npz}",
    "{xcomplex_npz}",
    "{obj_npz}",
    "{neg_label_npz}",
    "{label_range_npz}",
    "{one_class_npz}",
    "{one_name_npz}",
    "{names_0d_npz}",
    "{empty_npz}",
    "{zero_feature_npz}",
    "{test_shape_npz}",
    "{huge_label_npz}",
    "{notzip_npz}",
    "{tiny_split_npz}",
    "{good_npz}:test_fraction=0",
    "{good_npz}:test_fraction=1.5",
    "{good_npz}:test_fraction=nan",
    "{good_npz}:split_seed=-1",
    "{good_npz}:split_seed=x",
    "{wide_npz}",
    "{classes3_npz}",
    "{empty_dir}",
    "{noimages_dir}",
    "{nonimage_dir}",
    "{corrupt_png_dir}",
    "{sizes_dir}",
    "{test_class_dir}",
    "{cifar_evil_dir}",
    "{cifar_missing_dir}",
]


@pytest.mark.parametrize("spec", DATA_CASES)
def test_cli_compute_refuses_data(spec: str, bad: dict[str, Path], tmp_path: Path) -> None:
    data = spec.format(**{name: str(path) for name, path in bad.items()})
    argv = ["compute", "--model", str(bad["ckpt"]), "--data", data, "--out", str(tmp_path / "r")]
    assert_bad_input_output(*run_main(argv))
    assert not bad["marker"].exists()


OPTION_CASES = {
    "keep-ratio-zero": "--keep-ratio 0",
    "keep-ratio-negative": "--keep-ratio -1",
    "keep-ratio-two": "--keep-ratio 2",
    "keep-ratio-nan": "--keep-ratio nan",
    "keep-ratio-inf": "--keep-ratio inf",
    "keep-ratio-text": "--keep-ratio half",
    "method-unknown": "--method bogus",
    "mask-unknown": "--mask bogus",
    "curvature-unknown": "--curvature bogus",
    "damping-zero": "--damping 0",
    "damping-negative": "--damping -1",
    "damping-nan": "--damping nan",
    "damping-inf": "--damping inf",
    "damping-ratio-zero": "--damping-ratio 0",
    "damping-ratio-negative": "--damping-ratio -1",
    "damping-ratio-nan": "--damping-ratio nan",
    "damping-ratio-text": "--damping-ratio ten",
    "seed-negative": "--seed -1",
    "batch-size-zero": "--batch-size 0",
    "batch-size-negative": "--batch-size -4",
    "device-bogus": "--device bogus",
    "out-a-file": "--out {a_file}",
    "out-below-a-file": "--out {a_file}/run",
    "no-model": "--model",
}


@pytest.mark.parametrize("option", OPTION_CASES.values(), ids=OPTION_CASES.keys())
def test_cli_compute_refuses_option(option: str, bad: dict[str, Path], tmp_path: Path) -> None:
    assert_bad_input_output(*run_main(_argv(f"{COMPUTE} {option}", bad, tmp_path)))
    assert bad["a_file"].read_text() == "user data\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is absent")
def test_cli_compute_device_cuda_without_cuda(bad: dict[str, Path], tmp_path: Path) -> None:
    argv = _argv(COMPUTE.replace("--device cpu", "--device cuda"), bad, tmp_path)
    assert_bad_input_output(*run_main(argv))


def test_cli_compute_refuses_a_folder_of_user_files(bad: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    argv = _argv(f"{COMPUTE} --keep-ratio 0.5 --no-test-scores", bad, tmp_path)
    argv[argv.index("--out") + 1] = str(folder)
    assert_bad_input_output(*run_main(argv))
    assert (folder / "thesis.tex").read_text() == "years of work"


def test_cli_compute_refuses_a_run_of_other_data(bad: dict[str, Path], tmp_path: Path) -> None:
    base = f"{COMPUTE} --keep-ratio 0.5 --no-test-scores".replace("--data digits ", "")
    first = _argv(base + " --data digits:noise=0.1,seed=0", bad, tmp_path)
    assert run_main(first)[0] == 0
    assert_bad_input_output(
        *run_main(_argv(base + " --data digits:noise=0.3,seed=7", bad, tmp_path))
    )


# ------------------------------------------------------------------- CLI: map, retrain

MAP_CASES = ["missing", "norun_dir", "garbage_manifest", "list_manifest", "partial_manifest",
             "empty_manifest", "a_file"]  # fmt: skip


@pytest.mark.parametrize("name", MAP_CASES)
def test_cli_map_refuses_run(name: str, bad: dict[str, Path], tmp_path: Path) -> None:
    run = bad.get(name, tmp_path / "missing")
    assert_bad_input_output(*run_main(["map", "--run", str(run)]))


@pytest.mark.parametrize("name", ["garbage_manifest", "list_manifest", "partial_manifest"])
def test_cli_compute_refuses_a_corrupt_manifest(
    name: str, bad: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_bytes((bad[name] / "manifest.json").read_bytes())
    argv = _argv(COMPUTE, bad, tmp_path)
    argv[argv.index("--out") + 1] = str(run)
    assert_bad_input_output(*run_main(argv))


RETRAIN = "retrain --model {ckpt} --data digits --out {out}.json --epochs 1 --seeds 1"
RETRAIN_CASES = {
    "decisions-missing": RETRAIN + " --decisions {tmp}/nope.json",
    "decisions-not-json": RETRAIN + " --decisions {bad_decisions}",
    "decisions-wrong": RETRAIN + " --decisions {wrong_decisions}",
    "decisions-a-folder": RETRAIN + " --decisions {empty_dir}",
    "seeds-zero": RETRAIN.replace("--seeds 1", "--seeds 0") + " --decisions {decisions}",
    "model-missing": RETRAIN.replace("{ckpt}", "{tmp}/no.pt") + " --decisions {decisions}",
    "model-evil": RETRAIN.replace("{ckpt}", "{evil_pt}") + " --decisions {decisions}",
    "batch-size-zero": RETRAIN + " --batch-size 0 --decisions {decisions}",
}


@pytest.mark.parametrize("template", RETRAIN_CASES.values(), ids=RETRAIN_CASES.keys())
def test_cli_retrain_refuses(template: str, bad: dict[str, Path], tmp_path: Path) -> None:
    assert_bad_input_output(*run_main(_argv(template, bad, tmp_path)))
    assert not bad["marker"].exists()


SUBPROCESS_CASES = {
    "sidecar-width-2**44": "compute --model {ck_width} --data digits --out {out}",
    "sidecar-negative": "compute --model {ck_neg} --data digits --out {out}",
    "sidecar-wrong-type": "compute --model {ck_type} --data digits --out {out}",
    "nan-npz": "compute --model {ckpt} --data {nan_npz} --out {out}",
    "bad-spec": "compute --model {ckpt} --data digits:noise=0.1,seed=-1 --out {out}",
    "pickled-code": "compute --model {evil_pt} --data digits --out {out}",
    "corrupt-manifest": "map --run {garbage_manifest}",
    "device-bogus": COMPUTE.replace("--device cpu", "--device bogus"),
    "batch-size-zero": COMPUTE + " --batch-size 0",
}


@pytest.mark.parametrize("template", SUBPROCESS_CASES.values(), ids=SUBPROCESS_CASES.keys())
def test_cli_subprocess_exits_2_without_traceback(
    template: str, bad: dict[str, Path], tmp_path: Path
) -> None:
    result = run_subprocess(_argv(template, bad, tmp_path), cwd=tmp_path)
    assert_bad_input_output(result.returncode, result.stderr)
    assert not bad["marker"].exists()


# ------------------------------------------------------------------- checkpoints (API)


def test_absurd_width_is_refused_before_allocating(bad: dict[str, Path]) -> None:
    started = time.perf_counter()
    error = raises_named(load_checkpoint, bad["ck_width"])
    assert time.perf_counter() - started < 5
    assert "parameters" in str(error) and "17592186044416" in str(error)


@pytest.mark.parametrize("name", ["evil_pt", "evil_raw_pt"])
def test_pickled_code_is_refused_without_running(name: str, bad: dict[str, Path]) -> None:
    with pytest.raises(UnsafeCheckpointError, match="refused without running it"):
        load_checkpoint(bad[name])
    assert not bad["marker"].exists()


def test_whole_pickled_model_gets_an_actionable_message(bad: dict[str, Path]) -> None:
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_checkpoint(bad["whole_pt"])
    message = str(caught.value)
    assert "expected a state_dict of tensors" in message
    assert "torch.save(model.state_dict())" in message and "safetensors" in message
    assert "WholeModel" in message and "refused without running it" in message
    assert "add_safe_globals" not in message


@pytest.mark.parametrize("name", [*SIDECARS, "ck_nosidecar", "ck_nan", "corrupt_st", "list_pt"])
def test_load_checkpoint_names_the_error(name: str, bad: dict[str, Path]) -> None:
    raises_named(load_checkpoint, bad[name])


def test_unknown_architecture_is_named(bad: dict[str, Path]) -> None:
    with pytest.raises(UnknownArchitectureError, match="vgg_tiny_custom"):
        load_checkpoint(bad["ck_unknown_arch"])


BAD_INTS = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=2**40, max_value=2**62),
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.none(),
    st.lists(st.integers(1, 4), max_size=2),
)
BAD_SIZES = st.one_of(
    BAD_INTS.filter(lambda v: not isinstance(v, list)),
    st.lists(BAD_INTS, min_size=1, max_size=3),
)


@st.composite
def bad_mlp_sidecars(draw: st.DrawFn) -> dict[str, Any]:
    """An mlp sidecar with at least one wrong argument (type, sign, size, missing or extra)."""
    arch_args: dict[str, Any] = dict(MLP_ARGS)
    flaw = draw(st.sampled_from(["input_dim", "num_classes", "hidden_sizes", "missing", "extra"]))
    if flaw == "hidden_sizes":
        arch_args[flaw] = draw(BAD_SIZES)
    elif flaw == "missing":
        del arch_args[draw(st.sampled_from(["input_dim", "num_classes"]))]
    elif flaw == "extra":
        arch_args[draw(st.text(min_size=1).filter(lambda k: k not in MLP_ARGS))] = draw(BAD_INTS)
    else:
        arch_args[flaw] = draw(BAD_INTS)
    return {"arch": "mlp", "arch_args": arch_args}


@FAST
@given(sidecar=bad_mlp_sidecars())
@example(sidecar={"arch": "mlp", "arch_args": {**MLP_ARGS, "hidden_sizes": [HUGE]}})
@example(sidecar={"arch": "mlp", "arch_args": {**MLP_ARGS, "hidden_sizes": [0]}})
@example(sidecar={"arch": "mlp", "arch_args": {**MLP_ARGS, "hidden_sizes": 8}})
@example(sidecar={"arch": "mlp", "arch_args": {**MLP_ARGS, "hidden_sizes": [[1]]}})
@example(sidecar={"arch": "mlp", "arch_args": {**MLP_ARGS, "input_dim": 2**62}})
@example(sidecar={"arch": "mlp", "arch_args": {**MLP_ARGS, "num_classes": -1}})
@example(sidecar={"arch": "mlp", "arch_args": {**MLP_ARGS, "num_classes": float("nan")}})
@example(sidecar={"arch": "mlp", "arch_args": {**MLP_ARGS, "0": None}})
def test_bad_sidecars_are_named_errors(sidecar: dict[str, Any], bad: dict[str, Path]) -> None:
    folder = bad["tmp"] / "hypothesis"
    folder.mkdir(exist_ok=True)
    path = folder / "m.safetensors"
    if not path.exists():
        _checkpoint_with_sidecar(folder, "m", MLP_ARGS)
    sidecar_path(path).write_text(json.dumps(sidecar))
    raises_named(load_checkpoint, path)


@FAST
@given(
    arch=st.one_of(
        st.integers(), st.lists(st.text(max_size=3), max_size=2), st.none(), st.text(max_size=8)
    ).filter(lambda a: a not in ("mlp", None, ""))
)
@example(arch=5)
@example(arch=["mlp"])
@example(arch="MLP")
def test_bad_architecture_names_are_named_errors(arch: Any, bad: dict[str, Path]) -> None:
    folder = bad["tmp"] / "hypothesis-arch"
    folder.mkdir(exist_ok=True)
    path = folder / "m.safetensors"
    if not path.exists():
        _checkpoint_with_sidecar(folder, "m", MLP_ARGS)
    sidecar_path(path).write_text(json.dumps({"arch": arch, "arch_args": MLP_ARGS}))
    raises_named(load_checkpoint, path)


BUILD_CASES = {
    "mlp-2**44": ("mlp", {"input_dim": 64, "num_classes": 10, "hidden_sizes": [HUGE]}),
    "mlp-two-huge-layers": (
        "mlp",
        {"input_dim": 64, "num_classes": 10, "hidden_sizes": [2**20] * 3},
    ),
    "mlp-negative": ("mlp", {"input_dim": -64, "num_classes": 10}),
    "mlp-float": ("mlp", {"input_dim": 64.0, "num_classes": 10}),
    "mlp-sizes-none": ("mlp", {"input_dim": 64, "num_classes": 10, "hidden_sizes": None}),
    "small-cnn-zero-channels": ("small_cnn", {"in_channels": 0}),
    "small-cnn-huge-input": ("small_cnn", {"input_size": 2**30}),
    "resnet9-huge-width": ("resnet9", {"width": HUGE}),
    "resnet9-string-width": ("resnet9", {"width": "64"}),
    "resnet18-negative-classes": ("resnet18", {"num_classes": -1}),
    "resnet18-huge-classes": ("resnet18", {"num_classes": HUGE}),
    "resnet18-weights": ("resnet18", {"weights": "DEFAULT"}),
    "resnet18-unknown-kwarg": ("resnet18", {"bogus": 1}),
    "unknown-arch": ("no_such_net", {}),
    "arch-not-a-string": (["mlp"], {}),
}


@pytest.mark.parametrize("case", BUILD_CASES.values(), ids=BUILD_CASES.keys())
def test_build_model_refuses(case: tuple[Any, dict[str, Any]]) -> None:
    arch, arch_args = case
    started = time.perf_counter()
    raises_named(build_model, arch, **arch_args)
    assert time.perf_counter() - started < 10


def test_save_checkpoint_refuses_bad_destinations(bad: dict[str, Path]) -> None:
    for path in (bad["a_file"] / "m.pt", bad["dir_st"], bad["tmp"] / "m.txt"):
        raises_named(save_checkpoint, path, _mlp(), "mlp", MLP_ARGS)
    raises_named(save_checkpoint, bad["tmp"] / "m2.pt", _mlp(), "mlp", {"x": object()})
    assert bad["a_file"].read_text() == "user data\n"


# --------------------------------------------------------------------- data (API)


GOOD_OPTIONS = {"noise": "0.1", "seed": "3", "kind": "symmetric"}


def _bad_option_values() -> st.SearchStrategy[tuple[str, str]]:
    def not_float(text: str) -> bool:
        try:
            float(text)
        except ValueError:
            return True
        return False

    def in_unit(value: float) -> bool:
        return 0.0 <= value <= 1.0

    floats_out = st.floats().filter(lambda v: not in_unit(v)).map(repr)
    bad_seeds = st.one_of(st.integers(max_value=-1).map(str), st.sampled_from(["1.5", "nan", "x"]))
    return st.one_of(
        st.tuples(st.just("noise"), st.one_of(floats_out, st.text().filter(not_float))),
        st.tuples(st.sampled_from(["seed", "split_seed"]), bad_seeds),
        st.tuples(st.just("kind"), st.text().filter(lambda t: t.strip() not in GOOD_OPTIONS)),
        st.tuples(st.text(min_size=1).filter(lambda k: k.strip() not in SPEC_OPTIONS), st.text()),
    )


@st.composite
def bad_specs(draw: st.DrawFn) -> str:
    """``digits:...`` with good options and at least one bad one, in any order."""
    options = [f"{k}={v}" for k, v in GOOD_OPTIONS.items() if draw(st.booleans())]
    key, value = draw(_bad_option_values())
    options = [o for o in options if not o.startswith(f"{key}=")]
    options.insert(draw(st.integers(0, len(options))), f"{key}={value}")
    if key == "kind" and not any(o.startswith("noise=") for o in options):
        options.append("noise=0.1")
    return "digits:" + ",".join(options)


@FAST
@given(spec=bad_specs())
@example(spec="digits:noise=0.1,seed=-1")
@example(spec="digits:noise=0.1,seed=nan")
@example(spec="digits:noise=0.1,seed=inf")
@example(spec="digits:seed=3,split_seed=-1")
@example(spec="digits:noise=nan")
@example(spec="digits:kind=x,noise=0.1")
@example(spec="digits:noise=0.1,0=")
def test_bad_specs_are_named_errors(spec: str) -> None:
    raises_named(load_data, spec)


@pytest.mark.parametrize(
    "spec",
    ["", "digits:noise=0.1,noise=0.2", "digits:noise=0.1,,seed=1", "digits:=1", "digits:seed"],
)
def test_parse_spec_refuses(spec: str) -> None:
    if spec == "digits:seed":
        raises_named(load_data, spec)
    else:
        raises_named(parse_spec, spec)


def test_bundle_methods_refuse_bad_arguments(digits_bundle) -> None:
    raises_named(digits_bundle.split, "validation")
    raises_named(digits_bundle.thumbnail, "dev", 0)
    raises_named(digits_bundle.with_fixes, [len(digits_bundle.train)], {})
    raises_named(digits_bundle.with_fixes, [], {0: 10})
    raises_named(digits_bundle.with_fixes, [0], {0: 1})
    raises_named(digits_bundle.with_fixes, [-1], {})
    raises_named(digits_bundle.inputs_from_image, b"not a picture")
    raises_named(digits_bundle.inputs_from_image, b"")


def test_cifar_pickles_are_never_run(bad: dict[str, Path]) -> None:
    raises_named(safe_unpickle, pickle.dumps(CreatesFileWhenUnpickled(bad["marker"])))
    raises_named(safe_unpickle, b"\x80\x04garbage")
    raises_named(load_data, str(bad["cifar_evil_dir"]))
    assert not bad["marker"].exists()


def test_data_that_does_not_fit_the_model(bad: dict[str, Path]) -> None:
    from dropinf.models import check_model_fits_data

    model = load_checkpoint(bad["ckpt"]).model
    for name in ("wide_npz", "classes3_npz"):
        raises_named(check_model_fits_data, model, load_data(str(bad[name])))


# -------------------------------------------------------------------- configs (API)

NOT_A_RATIO = st.one_of(
    st.floats().filter(lambda v: not 0.0 < v <= 1.0),
    st.text(max_size=4),
    st.none(),
    st.lists(st.floats(0.1, 1.0), max_size=2),
)
NOT_A_SEED = st.one_of(st.integers(max_value=-1), st.floats(), st.text(max_size=4), st.none())
NOT_A_COUNT = st.one_of(st.integers(max_value=0), st.text(max_size=4), st.none(), st.floats())


@st.composite
def bad_compression_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    field, value = draw(
        st.one_of(
            st.tuples(st.just("keep_ratio"), NOT_A_RATIO),
            st.tuples(st.just("seed"), NOT_A_SEED),
            st.tuples(st.just("method"), st.text().filter(lambda t: t not in ("dropout",))),
            st.tuples(st.just("mask"), st.text().filter(lambda t: t not in ("uniform", "energy"))),
            st.tuples(st.just("calibration_batches"), NOT_A_COUNT),
            st.tuples(
                st.just("layer_keep_ratios"), st.dictionaries(st.text(), NOT_A_RATIO, min_size=1)
            ),
        )
    )
    return {field: value}


@FAST
@given(kwargs=bad_compression_kwargs())
@example(kwargs={"keep_ratio": 0.0})
@example(kwargs={"keep_ratio": float("nan")})
@example(kwargs={"keep_ratio": "0.5"})
@example(kwargs={"seed": -1})
@example(kwargs={"seed": 1.5})
@example(kwargs={"calibration_batches": "x"})
@example(kwargs={"calibration_batches": None})
@example(kwargs={"layer_keep_ratios": {"0": 2.0}})
@example(kwargs={"layer_keep_ratios": {"0": "half"}})
@example(kwargs={"method": "Dropout"})
def test_bad_compression_configs_are_named_errors(kwargs: dict[str, Any]) -> None:
    raises_named(CompressionConfig, **kwargs)


@st.composite
def bad_curvature_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    not_positive = st.one_of(
        st.floats().filter(lambda v: not (math.isfinite(v) and v > 0)), st.text(max_size=4)
    )
    field, value = draw(
        st.one_of(
            st.tuples(st.just("kind"), st.text().filter(lambda t: t not in ("auto", "full"))),
            st.tuples(st.just("damping"), not_positive),
            st.tuples(st.just("damping_ratio"), not_positive),  # None: the kind's default
            st.tuples(st.just("max_full_dim"), NOT_A_COUNT),
        )
    )
    return {field: value}


@FAST
@given(kwargs=bad_curvature_kwargs())
@example(kwargs={"damping": 0.0})
@example(kwargs={"damping": -1.0})
@example(kwargs={"damping": float("inf")})
@example(kwargs={"damping": "x"})
@example(kwargs={"damping_ratio": 0})
@example(kwargs={"max_full_dim": "x"})
@example(kwargs={"max_full_dim": None})
@example(kwargs={"kind": "Full"})
def test_bad_curvature_configs_are_named_errors(kwargs: dict[str, Any]) -> None:
    raises_named(CurvatureConfig, **kwargs)


@pytest.mark.parametrize("config", [CompressionConfig, CurvatureConfig])
def test_config_from_dict_refuses_unknown_keys(config: type) -> None:
    raises_named(config.from_dict, {"bogus": 1})


@st.composite
def bad_recipes(draw: st.DrawFn) -> dict[str, Any]:
    not_positive = st.one_of(st.floats().filter(lambda v: not (math.isfinite(v) and v > 0)),
                             st.text(max_size=3), st.none())  # fmt: skip
    field, value = draw(
        st.one_of(
            st.tuples(st.sampled_from(["epochs", "batch_size"]), NOT_A_COUNT),
            st.tuples(st.just("seed"), NOT_A_SEED),
            st.tuples(st.just("lr"), not_positive),
            st.tuples(st.just("weight_decay"), st.one_of(st.floats(max_value=-1e-9), st.text())),
            st.tuples(st.just("arch"), st.one_of(st.integers(), st.none(), st.lists(st.text()))),
            st.tuples(st.just("arch_args"), st.one_of(st.lists(st.integers()), st.text())),
            st.tuples(
                st.text(min_size=1).filter(lambda k: k not in TrainRecipe.__dataclass_fields__),
                st.integers(),
            ),
        )
    )
    return {field: value}


@FAST
@given(values=bad_recipes())
@example(values={"epochs": True})
@example(values={"lr": "0.1"})
@example(values={"lr": None})
@example(values={"weight_decay": "x"})
@example(values={"batch_size": 2.5})
@example(values={"arch_args": [1]})
@example(values={"arch": 5})
@example(values={"bogus": 1})
def test_bad_recipes_are_named_errors(values: dict[str, Any]) -> None:
    raises_named(TrainRecipe.from_dict, values)


def test_training_refuses_bad_devices_and_seeds(digits_bundle) -> None:
    recipe = TrainRecipe(arch="mlp", arch_args={"hidden_sizes": [4]}, epochs=1)
    raises_named(train_model, recipe, digits_bundle, device="bogus", progress=False)
    if not torch.cuda.is_available():
        raises_named(train_model, recipe, digits_bundle, device="cuda", progress=False)
    raises_named(retrain_with_fixes, recipe, digits_bundle, [], {}, seeds=0)
    raises_named(retrain_with_fixes, recipe, digits_bundle, [], {}, seeds=[-1])
    raises_named(retrain_with_fixes, recipe, digits_bundle, [10**6], {}, seeds=1)


# --------------------------------------------------------------------- engine (API)


def _tiny_split(n: int = 8, nan: bool = False):
    from dropinf.data import Split

    inputs = torch.rand(n, 1, 8, 8)
    if nan:
        inputs[3, 0, 0, 0] = float("nan")
    return Split(inputs, torch.arange(n) % 10)


def test_engine_refuses_a_model_without_capturable_layers() -> None:
    with pytest.raises(NoCapturableLayerError):
        InfluenceEngine(nn.Sequential(nn.Flatten(), nn.ReLU()), cross_entropy_per_sample)


def test_engine_names_non_finite_inputs_and_bad_losses() -> None:
    engine = InfluenceEngine(_mlp(), cross_entropy_per_sample, device="cpu")
    with pytest.raises(NonFiniteError):
        engine.fit(_tiny_split(nan=True), batch_size=4)
    summed = InfluenceEngine(_mlp(), lambda model, batch: model(batch[0]).sum(), device="cpu")
    with pytest.raises(LossShapeError):
        summed.fit(_tiny_split(), batch_size=4)


def test_engine_refuses_scoring_before_fit() -> None:
    engine = InfluenceEngine(_mlp(), cross_entropy_per_sample, device="cpu")
    with pytest.raises(IncompleteRunError):
        engine.self_influence()


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, "8"])
def test_engine_fit_refuses_bad_batch_sizes(batch_size: Any, tmp_path: Path) -> None:
    engine = InfluenceEngine(_mlp(), cross_entropy_per_sample, run_dir=tmp_path / "r", device="cpu")
    raises_named(engine.fit, _tiny_split(), batch_size=batch_size)


def test_engine_refuses_bad_devices_and_run_dirs(bad: dict[str, Path]) -> None:
    raises_named(InfluenceEngine, _mlp(), cross_entropy_per_sample, device="bogus")
    for run_dir in (bad["a_file"], bad["a_file"] / "run"):
        raises_named(
            lambda d: InfluenceEngine(
                _mlp(), cross_entropy_per_sample, run_dir=d, device="cpu"
            ).fit(_tiny_split(), batch_size=4),
            run_dir,
        )
    assert bad["a_file"].read_text() == "user data\n"


@pytest.mark.parametrize("name", ["missing", "norun_dir", "garbage_manifest", "list_manifest",
                                  "partial_manifest", "empty_manifest"])  # fmt: skip
def test_engine_load_names_missing_or_corrupt_runs(name: str, bad: dict[str, Path]) -> None:
    run = bad.get(name, bad["tmp"] / "missing")
    error = raises_named(
        InfluenceEngine.load, run, _mlp(), cross_entropy_per_sample, input_at_fault=False
    )
    if name in ("missing", "norun_dir"):
        assert isinstance(error, RunNotFoundError)


# ------------------------------------------------------------- dashboard path helpers


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "link_out").symlink_to(tmp_path / "outside")
    monkeypatch.setenv("DROPINF_DATA_ROOT", str(root))
    return root


@pytest.mark.parametrize(
    "text",
    ["../outside", "/etc", "/", "inside/../../outside", "link_out", "link_out/", "missing",
     "inside/missing.npz", "~", "inside\x00", "..", "//etc"],
)  # fmt: skip
def test_path_under_data_root_refuses(text: str, data_root: Path) -> None:
    with pytest.raises(ConfigError):
        paths.path_under_data_root(text)


@pytest.mark.parametrize("name", ["../../escape.npz", "/etc/passwd", "..", "a/../../b", ""])
def test_save_upload_stays_in_the_uploads_folder(name: str, dropinf_home: Path) -> None:
    try:
        stored = paths.save_upload(b"bytes", name)
    except ConfigError:
        assert list(paths.uploads_dir().iterdir()) == []
        return
    assert stored.resolve().parent == paths.uploads_dir().resolve()
    assert stored.read_bytes() == b"bytes"


def test_spec_errors_are_dataset_or_config_errors() -> None:
    for spec in ("digits:noise=2", "digits:bogus=1"):
        with pytest.raises((DatasetError, ConfigError)):
            load_data(spec)
    with pytest.raises(CheckpointError):
        load_checkpoint("missing.safetensors")


@pytest.mark.parametrize(
    "key", ["", "..", "../x", "/abs", "a/b", "a\\b", ".hidden", " padded", "x\x00", "link"]
)
def test_run_keys_from_urls_are_confined(key: str, dropinf_home: Path) -> None:
    (paths.runs_dir() / "link").symlink_to(dropinf_home.parent)
    with pytest.raises(ConfigError):
        paths.run_dir_of(key)


@pytest.mark.parametrize(
    "spec", ["/etc/passwd.npz", "../outside", "link_out", "/tmp:noise=0.1", "~/x.npz"]
)
def test_data_specs_from_the_dashboard_are_confined(spec: str, data_root: Path) -> None:
    with pytest.raises(ConfigError):
        paths.confine_data_spec(spec)
    with pytest.raises(ConfigError):
        paths.confine(spec.partition(":")[0])
