"""Safe checkpoints: save and load a state_dict with its architecture, and check it fits the data.

A checkpoint is a state_dict in ``.safetensors`` or ``.pt`` plus the architecture name and
arguments, in a JSON sidecar ``<checkpoint>.json`` (and, for safetensors, also in the file's
metadata). Checkpoints are read with safetensors or ``torch.load(weights_only=True)`` only: one
carrying pickled code is refused without running it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dropinf.errors import CheckpointError, CheckpointMismatchError, DataModelMismatchError
from dropinf.models.registry import build_architecture
from dropinf.models.safe_read import checkpoint_kind, read_state_dict

if TYPE_CHECKING:
    from dropinf.data import DatasetBundle

CHECKPOINT_FORMAT = 1
MAX_LISTED_NAMES = 8
METADATA_KEY = "dropinf"


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
    suffix = checkpoint_kind(path)
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
    path: str | Path,
    arch: str | None = None,
    arch_args: Mapping[str, Any] | None = None,
    trust_code: bool | None = None,
) -> LoadedCheckpoint:
    """Load a checkpoint safely and rebuild its model.

    The architecture comes from ``arch``/``arch_args`` if given, else the sidecar
    ``<path>.json``, else safetensors metadata. A given ``arch`` with no ``arch_args`` takes the
    saved arguments only when it is the saved architecture (else none).

    Args:
        path: A ``.safetensors`` or ``.pt``/``.pth``/``.bin`` file.
        arch: Architecture name or ``package.module:callable``, overriding the saved one.
        arch_args: Architecture arguments, overriding the saved ones.
        trust_code: The opt-in to import an own-code architecture (None: ``DROPINF_TRUST_CODE``).

    Returns:
        The loaded checkpoint.

    Raises:
        CheckpointError: Missing, truncated or garbage file, or no architecture known.
        UnsafeCheckpointError: The file carries pickled code (refused, never run).
        UnknownArchitectureError: The architecture name is not in the registry, or names code
            that is not trusted (refused before importing it).
        CheckpointMismatchError: Missing, unexpected or wrongly shaped tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    state_dict, metadata = read_state_dict(path)
    description = _read_description(path, metadata)
    arch, arch_args = _chosen_architecture(path, description, arch, arch_args)
    model = build_architecture(arch, arch_args, trust_code)
    load_state_dict_strict(model, state_dict, path.name)
    return LoadedCheckpoint(
        model=model.eval(),
        arch=arch,
        arch_args=arch_args,
        sha256=file_sha256(path),
        path=path,
        extra=dict(description.get("extra", {})),
    )


def _chosen_architecture(
    path: Path,
    description: Mapping[str, Any],
    arch: str | None,
    arch_args: Mapping[str, Any] | None,
) -> tuple[str, dict[str, Any]]:
    saved_arch = description.get("arch")
    if not (arch or saved_arch):
        raise CheckpointError(
            f"{path.name}: expected an architecture: pick one in the Load page or pass --arch; "
            f"found a checkpoint without a sidecar ({sidecar_path(path).name}) or architecture "
            "metadata"
        )
    if arch_args is None:
        same = not arch or arch == saved_arch
        arch_args = description.get("arch_args", {}) if same else {}
    if not isinstance(arch_args, Mapping):
        raise CheckpointError(f"arch_args must be a JSON object of arguments; found {arch_args!r}")
    return arch or saved_arch, dict(arch_args)


def write_sidecar(
    checkpoint_path: str | Path,
    arch: str,
    arch_args: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write the JSON sidecar naming a checkpoint's architecture (e.g. after an upload).

    Nothing is imported or built: :func:`load_checkpoint` checks the architecture (and asks for
    the opt-in of an own-code one) when the checkpoint is loaded.

    Args:
        checkpoint_path: The checkpoint file (it must exist).
        arch: A registry name or ``package.module:callable``.
        arch_args: The architecture's keyword arguments (JSON-serialisable; default none).
        overwrite: Replace a sidecar holding another description (an equal one is kept as is).

    Returns:
        The sidecar path, ``<checkpoint>.json``.

    Raises:
        CheckpointError: No such checkpoint file, an empty arch, arguments that are not a
            JSON object, or a different sidecar already there without ``overwrite``.
    """
    path = Path(checkpoint_path)
    checkpoint_kind(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; expected the file to describe")
    if not isinstance(arch, str) or not arch.strip():
        raise CheckpointError(f"expected an architecture name; found {arch!r}")
    if not isinstance(arch_args or {}, Mapping):
        raise CheckpointError(f"arch_args must be a JSON object of arguments; found {arch_args!r}")
    description = _describe(arch.strip(), arch_args or {}, None)
    sidecar = sidecar_path(path)
    if sidecar.is_file() and not overwrite:
        saved = _read_description(path, {})
        if (saved.get("arch"), saved.get("arch_args", {})) != (arch.strip(), dict(arch_args or {})):
            raise CheckpointError(
                f"{sidecar.name} already names {saved.get('arch')!r} "
                f"{saved.get('arch_args', {})}; expected {arch!r}: pass overwrite=True to "
                "replace it"
            )
        return sidecar
    _atomic_write(sidecar, lambda tmp: tmp.write_text(json.dumps(description, indent=2)))
    return sidecar


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
