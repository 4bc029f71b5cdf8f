"""Model registry, safe checkpoints, and checks that a model fits its data.

Architectures are built by name with keyword arguments (:func:`build_model`): ``mlp``,
``small_cnn``, ``resnet9`` and torchvision's classifiers (``resnet18``, ...; never with pretrained
weights, never downloading). A checkpoint is a state_dict in ``.safetensors`` or ``.pt`` plus the
architecture name and arguments, in a JSON sidecar ``<checkpoint>.json`` (and, for safetensors,
also in the file's metadata). Checkpoints are read with safetensors or
``torch.load(weights_only=True)`` only: one carrying pickled code is refused without running it.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import pickle
import pickletools
import re
import tempfile
import typing
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from dropinf.data import DatasetBundle

CHECKPOINT_FORMAT = 1
SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
MAX_LISTED_NAMES = 8
METADATA_KEY = "dropinf"
MAX_PARAMETERS = 2**30  # about 4 GiB of float32 weights: anything larger is a typo, not a model
BUILD_ERRORS = (TypeError, ValueError, RuntimeError, AssertionError, OverflowError)


# ---------------------------------------------------------------- architectures


def mlp(input_dim: int, num_classes: int, hidden_sizes: Sequence[int] = (128,)) -> nn.Module:
    """A multilayer perceptron on flattened inputs.

    Args:
        input_dim: Number of input features after flattening (e.g. 64 for 1×8×8).
        num_classes: Width of the output logits.
        hidden_sizes: Widths of the hidden layers, each followed by ReLU.

    Returns:
        ``Flatten → (Linear → ReLU)* → Linear``.
    """
    layers: list[nn.Module] = [nn.Flatten()]
    width = input_dim
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def small_cnn(in_channels: int = 1, num_classes: int = 10, input_size: int = 8) -> nn.Module:
    """Two convolutions and two linear layers, no normalisation (for 8×8 and 28×28 inputs).

    Args:
        in_channels: Input channels.
        num_classes: Width of the output logits.
        input_size: Height (= width) of the square input images; the max-pool halves it.

    Returns:
        ``conv(C→32) → ReLU → conv(32→64) → ReLU → maxpool2 → flatten → linear(→128) → ReLU →
        linear(→classes)``.
    """
    pooled = input_size // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * pooled * pooled, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def _conv_bn(in_channels: int, out_channels: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    """``x + block(x)``."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the block's output to its input."""
        return x + self.block(x)


def resnet9(in_channels: int = 3, num_classes: int = 10, width: int = 64) -> nn.Module:
    """The ResNet-9 of the DAWNBench CIFAR-10 entries, with BatchNorm (for 32×32 inputs).

    Args:
        in_channels: Input channels.
        num_classes: Width of the output logits.
        width: Channels of the first layer; later stages use 2×, 4× and 8× that.

    Returns:
        prep → layer1 (+ residual) → layer2 → layer3 (+ residual) → global max-pool → linear.
    """
    w1, w2, w4, w8 = width, 2 * width, 4 * width, 8 * width
    return nn.Sequential(
        _conv_bn(in_channels, w1),
        _conv_bn(w1, w2, pool=True),
        _Residual(nn.Sequential(_conv_bn(w2, w2), _conv_bn(w2, w2))),
        _conv_bn(w2, w4, pool=True),
        _conv_bn(w4, w8, pool=True),
        _Residual(nn.Sequential(_conv_bn(w8, w8), _conv_bn(w8, w8))),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(w8, num_classes),
    )


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "small_cnn": small_cnn,
    "resnet9": resnet9,
}


def _torchvision_classifiers() -> list[str]:
    from torchvision import models

    return sorted(models.list_models(module=models))


def architectures() -> list[str]:
    """Names :func:`build_model` accepts: dropinf's own, then torchvision's classifiers."""
    return list(ARCHITECTURES) + _torchvision_classifiers()


def build_model(arch: str, **arch_args: Any) -> nn.Module:
    """Build an untrained model by architecture name.

    Args:
        arch: A name from :func:`architectures`.
        **arch_args: Keyword arguments of that architecture (torchvision: ``num_classes`` and the
            model's own options; ``weights`` is always None, nothing is downloaded).

    Returns:
        The model, in training mode.

    Raises:
        UnknownArchitectureError: The name is not in the registry.
        ConfigError: The arguments do not fit the architecture (unknown, missing, of the wrong
            type or sign), or the model would exceed :data:`MAX_PARAMETERS` (checked on the meta
            device, before any memory is allocated).
    """
    if not isinstance(arch, str):
        raise UnknownArchitectureError(f"expected an architecture name (a string); found {arch!r}")
    if arch in ARCHITECTURES:
        builder = ARCHITECTURES[arch]
        _check_arguments(arch, builder, arch_args)
        build = functools.partial(builder, **arch_args)
    elif arch in _torchvision_classifiers():
        build = _torchvision_builder(arch, arch_args)
    else:
        raise UnknownArchitectureError(
            f"unknown architecture {arch!r}: expected one of {', '.join(ARCHITECTURES)} "
            "or a torchvision classifier name such as resnet18"
        )
    _check_size(arch, arch_args, build)
    return build()


def _check_arguments(arch: str, builder: Callable[..., nn.Module], arch_args: Mapping) -> None:
    parameters = inspect.signature(builder).parameters
    unknown = sorted(set(arch_args) - set(parameters))
    missing = [
        name for name, p in parameters.items() if p.default is p.empty and name not in arch_args
    ]
    if unknown or missing:
        raise ConfigError(
            f"architecture {arch!r} takes arguments {list(parameters)}; "
            f"unknown: {unknown}, missing: {missing}"
        )
    hints = typing.get_type_hints(builder)
    for name, value in arch_args.items():
        _check_size_argument(arch, name, value, typing.get_origin(hints[name]) is Sequence)


def _check_size_argument(arch: str, name: str, value: Any, is_list: bool) -> None:
    """Refuse a width, count or list of widths that is not made of positive integers."""
    if is_list:
        valid = isinstance(value, list | tuple) and all(_is_positive_int(v) for v in value)
    else:
        valid = _is_positive_int(value)
    if not valid:
        expected = "a list of positive integers" if is_list else "a positive integer"
        raise ConfigError(f"architecture {arch!r}: {name} must be {expected}; found {value!r}")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _torchvision_builder(arch: str, arch_args: Mapping[str, Any]) -> Callable[[], nn.Module]:
    from torchvision import models

    if arch_args.get("weights") is not None:
        raise ConfigError(f"{arch}: pretrained weights are not supported (weights must be None)")
    if "num_classes" in arch_args:
        _check_size_argument(arch, "num_classes", arch_args["num_classes"], is_list=False)
    return functools.partial(models.get_model, arch, **{**arch_args, "weights": None})


def _check_size(arch: str, arch_args: Mapping[str, Any], build: Callable[[], nn.Module]) -> None:
    """Build the model on the meta device (no memory) and refuse it if it is absurdly large.

    Raises:
        ConfigError: The builder rejects the arguments, or the model would hold more than
            :data:`MAX_PARAMETERS` parameters.
    """
    try:
        with torch.device("meta"):
            skeleton = build()
    except BUILD_ERRORS as error:
        raise ConfigError(
            f"architecture {arch!r} cannot be built with arguments {dict(arch_args)}: "
            f"{_first_sentence(error)}"
        ) from None
    parameters = count_parameters(skeleton)
    if parameters > MAX_PARAMETERS:
        raise ConfigError(
            f"architecture {arch!r} with arguments {dict(arch_args)} would hold {parameters:,} "
            f"parameters (about {parameters * 4 / 2**30:,.0f} GiB as float32); expected at most "
            f"{MAX_PARAMETERS:,}: check the sizes in the arguments"
        )


def arch_args_for_data(arch: str, input_shape: Sequence[int], num_classes: int) -> dict[str, Any]:
    """The arguments that make an architecture fit a dataset's example shape and classes.

    Args:
        arch: Architecture name.
        input_shape: One example's shape, e.g. ``(1, 8, 8)``.
        num_classes: Number of classes.

    Returns:
        e.g. ``{"in_channels": 1, "input_size": 8, "num_classes": 10}`` for ``small_cnn``;
        torchvision classifiers get ``num_classes`` only.
    """
    if arch == "mlp":
        return {"input_dim": int(torch.Size(input_shape).numel()), "num_classes": num_classes}
    if arch == "small_cnn":
        return {
            "in_channels": input_shape[0],
            "input_size": input_shape[-1],
            "num_classes": num_classes,
        }
    if arch == "resnet9":
        return {"in_channels": input_shape[0], "num_classes": num_classes}
    return {"num_classes": num_classes}


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of a model (trainable or not, buffers excluded)."""
    return sum(parameter.numel() for parameter in model.parameters())


# ---------------------------------------------------------------- saving


def sidecar_path(checkpoint_path: str | Path) -> Path:
    """The JSON sidecar of a checkpoint: ``<checkpoint>.json`` (e.g. ``model.pt.json``)."""
    path = Path(checkpoint_path)
    return path.with_name(path.name + ".json")


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    arch: str,
    arch_args: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save a model's state_dict with its architecture, atomically.

    Writes ``path`` (``.safetensors``, or ``.pt``/``.pth``/``.bin`` via ``torch.save`` of the plain
    state_dict) and the sidecar ``<path>.json``. Each file is written to a temporary name and
    renamed; the checkpoint is renamed last, so a killed save never leaves a checkpoint that looks
    complete next to a missing sidecar.

    Args:
        path: Destination file.
        model: The model whose ``state_dict()`` is saved.
        arch: Architecture name (must build with ``arch_args``).
        arch_args: Architecture arguments (JSON-serialisable).
        extra: JSON-serialisable provenance (recipe, accuracies, data spec ...).

    Returns:
        The checkpoint path.

    Raises:
        CheckpointError: Unsupported suffix or non-serialisable arguments.
    """
    path = Path(path)
    description = _describe(arch, arch_args, extra)
    state_dict = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    suffix = _checkpoint_kind(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(
            sidecar_path(path), lambda tmp: tmp.write_text(json.dumps(description, indent=2))
        )
        _write_state_dict(path, suffix, state_dict, description)
    except OSError as error:
        raise CheckpointError(
            f"cannot write the checkpoint {path}: expected a file path in a writable folder; "
            f"{error.strerror or error}"
        ) from None
    return path


def _write_state_dict(
    path: Path, suffix: str, state_dict: dict[str, torch.Tensor], description: dict
) -> None:
    if suffix == "safetensors":
        from safetensors.torch import save_file

        metadata = {METADATA_KEY: json.dumps(description, sort_keys=True)}  # one key: stable bytes
        _atomic_write(path, lambda tmp: save_file(state_dict, str(tmp), metadata=metadata))
    else:
        _atomic_write(path, lambda tmp: torch.save(state_dict, tmp))


def _describe(arch: str, arch_args: Mapping[str, Any], extra: Mapping[str, Any] | None) -> dict:
    description = {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "arch_args": dict(arch_args),
        "extra": dict(extra or {}),
    }
    try:
        json.dumps(description)
    except TypeError as error:
        raise CheckpointError(f"checkpoint description is not JSON-serialisable: {error}") from None
    return description


def _atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _checkpoint_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return "safetensors"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    raise CheckpointError(
        f"unsupported checkpoint file {path.name!r}: expected a suffix among "
        f"{', '.join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)}"
    )


# ---------------------------------------------------------------- loading


@dataclass
class LoadedCheckpoint:
    """A model restored from a checkpoint, with where it came from.

    Attributes:
        model: The model with the checkpoint's weights, in eval mode, on the CPU.
        arch: Architecture name.
        arch_args: Architecture arguments.
        sha256: Hex digest of the checkpoint file's bytes.
        path: The checkpoint file.
        extra: Provenance saved with it (empty if none).
    """

    model: nn.Module
    arch: str
    arch_args: dict[str, Any]
    sha256: str
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)


def load_checkpoint(
    path: str | Path, arch: str | None = None, arch_args: Mapping[str, Any] | None = None
) -> LoadedCheckpoint:
    """Load a checkpoint safely and rebuild its model.

    The architecture comes from ``arch``/``arch_args`` if given, else the sidecar
    ``<path>.json``, else safetensors metadata.

    Args:
        path: A ``.safetensors`` or ``.pt``/``.pth``/``.bin`` file.
        arch: Architecture name, overriding the saved one.
        arch_args: Architecture arguments, overriding the saved ones.

    Returns:
        The loaded checkpoint.

    Raises:
        CheckpointError: Missing, truncated or garbage file, or no architecture known.
        UnsafeCheckpointError: The file carries pickled code (refused, never run).
        UnknownArchitectureError: The architecture name is not in the registry.
        CheckpointMismatchError: Missing, unexpected or wrongly shaped tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    state_dict, metadata = _read_state_dict(path)
    description = _read_description(path, metadata)
    arch = arch or description.get("arch")
    if not arch:
        raise CheckpointError(
            f"{path.name}: no architecture known; expected a sidecar {sidecar_path(path).name} "
            'with {"arch": ..., "arch_args": {...}}, or pass arch and arch_args'
        )
    arch_args = dict(arch_args if arch_args is not None else description.get("arch_args", {}))
    model = build_model(arch, **arch_args)
    load_state_dict_strict(model, state_dict, path.name)
    return LoadedCheckpoint(
        model=model.eval(),
        arch=arch,
        arch_args=arch_args,
        sha256=file_sha256(path),
        path=path,
        extra=dict(description.get("extra", {})),
    )


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if _checkpoint_kind(path) == "safetensors":
        return _read_safetensors(path)
    return _unwrap_state_dict(_torch_load_weights_only(path), path), {}


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as reader:
            metadata = reader.metadata() or {}
            return {key: reader.get_tensor(key) for key in reader.keys()}, metadata  # noqa: SIM118
    except Exception as error:
        raise CheckpointError(
            f"{path.name}: not a readable safetensors file ({type(error).__name__}: {error}); "
            "the file may be truncated or corrupt"
        ) from None


def _torch_load_weights_only(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's note on pickle protocols
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not _is_refused_pickle(path, error):
            raise CheckpointError(
                f"{path.name}: not a readable PyTorch checkpoint ({_first_sentence(error)}); "
                "the file may be truncated or corrupt"
            ) from None
        raise UnsafeCheckpointError(
            f"{path.name}: expected a state_dict of tensors (save with "
            "torch.save(model.state_dict()) or as .safetensors); found a pickled "
            f"{_pickled_type(error)} — refused without running it"
        ) from None
    except Exception as error:
        raise CheckpointError(
            f"{path.name}: not a readable PyTorch checkpoint ({type(error).__name__}: "
            f"{_first_sentence(error)}); the file may be truncated or corrupt"
        ) from None


def _is_refused_pickle(path: Path, error: Exception) -> bool:
    """Whether torch refused a well-formed pickle (unsafe) rather than failing on garbage."""
    if "GLOBAL" in str(error) or zipfile.is_zipfile(path):
        return True
    try:
        for _ in pickletools.genops(path.read_bytes()):
            pass
    except Exception:
        return False  # not even a pickle: corrupt, not malicious
    return True


def _first_sentence(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text.split(". ")[0][:160]


def _pickled_type(error: Exception) -> str:
    """What torch's weights-only unpickler refused: ``object of type pkg.Class`` if it says."""
    named = re.search(r"GLOBAL ([\w.]+)", str(error))
    if named:
        return f"object of type {named.group(1)}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.partition("WeightsUnpickler error:")[2].strip()
            reason = rest or (lines[index + 1] if index + 1 < len(lines) else line)
            return f"object that is not a tensor ({reason[:160]})"
    return "object that is not a tensor"


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(
            f"{path.name}: expected a state_dict (a dict of tensor names to tensors); "
            f"found {type(obj).__name__}"
        )
    return obj


def _read_description(path: Path, metadata: Mapping[str, str]) -> dict[str, Any]:
    sidecar = sidecar_path(path)
    source = sidecar.name if sidecar.is_file() else f"{path.name} metadata"
    try:
        if sidecar.is_file():
            description = json.loads(sidecar.read_text())
        elif METADATA_KEY in metadata:
            description = json.loads(metadata[METADATA_KEY])
        else:  # hand-written safetensors metadata: {"arch": "mlp", "arch_args": "{...}"}
            arch_args = json.loads(metadata.get("arch_args", "{}"))
            description = {"arch": metadata.get("arch"), "arch_args": arch_args}
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{source}: not valid JSON ({error})") from None
    if not _is_description(description):
        raise CheckpointError(
            f"{source}: expected {{'arch': str, 'arch_args': dict, 'extra': dict}}; "
            f"found {description!r:.300}"
        )
    return description


def _is_description(description: Any) -> bool:
    return (
        isinstance(description, dict)
        and isinstance(description.get("arch") or "", str)
        and isinstance(description.get("arch_args", {}), dict)
        and isinstance(description.get("extra", {}), dict)
    )


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Load weights, naming every missing, unexpected or mis-shaped tensor.

    A ``module.`` prefix on every key (from DataParallel) is stripped first.

    Args:
        model: The freshly built model.
        state_dict: Tensors by name.
        source: Name used in messages.

    Raises:
        CheckpointMismatchError: Any key or shape differs from the model's.
        CheckpointError: A tensor holds NaN or infinity.
    """
    state_dict = _strip_prefix(state_dict, "module.")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{source} does not fit {type(model).__name__}: missing keys {_short(missing)}, "
            f"unexpected keys {_short(unexpected)}"
        )
    _check_shapes(expected, state_dict, source)
    _check_finite_weights(state_dict, source)
    model.load_state_dict(state_dict, strict=True)


def _check_shapes(
    expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], source: str
) -> None:
    mismatches = [
        f"{name}: checkpoint {tuple(state_dict[name].shape)} vs model {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if state_dict[name].shape != tensor.shape
    ]
    if mismatches:
        raise CheckpointMismatchError(
            f"{source}: {len(mismatches)} tensors have the wrong shape: "
            + "; ".join(mismatches[:MAX_LISTED_NAMES])
        )


def _check_finite_weights(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{source}: tensor {name} holds NaN or infinity")


def _strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return dict(state_dict)


def _short(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED_NAMES])
    more = len(names) - MAX_LISTED_NAMES
    return f"[{shown}{f', … {more} more' if more > 0 else ''}]"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- fit to data


def check_model_fits_data(model: nn.Module, bundle: DatasetBundle) -> None:
    """Check that a model takes the dataset's inputs and outputs one logit per class.

    Runs the model (in eval mode, without gradients) on the first training example.

    Args:
        model: The classifier.
        bundle: The dataset.

    Raises:
        DataModelMismatchError: The forward pass fails on the input shape, or the output width
            differs from the dataset's class count.
    """
    example = bundle.train.inputs[:1].to(_device_of(model))  # (1, *input_shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(example)
    except (RuntimeError, ValueError) as error:
        raise DataModelMismatchError(
            f"the model cannot take inputs of shape {bundle.input_shape} from {bundle.name!r}: "
            f"{str(error).splitlines()[0]}"
        ) from None
    finally:
        model.train(was_training)
    _check_logits(logits, bundle)


def _check_logits(logits: torch.Tensor, bundle: DatasetBundle) -> None:
    if logits.ndim != 2:
        raise DataModelMismatchError(
            f"the model outputs shape {tuple(logits.shape)}; expected (batch, {bundle.num_classes})"
        )
    if logits.shape[1] != bundle.num_classes:
        raise DataModelMismatchError(
            f"the model outputs {logits.shape[1]} classes; dataset {bundle.name!r} has "
            f"{bundle.num_classes} classes"
        )


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
