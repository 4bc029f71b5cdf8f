"""Safe reading of checkpoint files: tensors only, pickled code refused without running it.

A ``.safetensors`` file is read by safetensors (no code can be in it); a ``.pt`` / ``.pth`` /
``.bin`` file by ``torch.load(weights_only=True)``, whose unpickler resolves no global but
tensor types. A refused pickle is told apart from a truncated or garbage file, so the message
says which.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from dropinf.errors import CheckpointError, UnsafeCheckpointError
from dropinf.models.registry import first_sentence

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def checkpoint_kind(path: Path) -> str:
    """How a checkpoint file is read and written, by its suffix.

    Args:
        path: The checkpoint file.

    Returns:
        ``safetensors`` or ``torch``.

    Raises:
        CheckpointError: Any other suffix.
    """
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return "safetensors"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    raise CheckpointError(
        f"unsupported checkpoint file {path.name!r}: expected a suffix among "
        f"{', '.join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)}"
    )


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a checkpoint file, read without running any code it may carry.

    A ``state_dict`` or ``model_state_dict`` entry of a saved dict is unwrapped.

    Args:
        path: A ``.safetensors`` or ``.pt``/``.pth``/``.bin`` file.

    Returns:
        ``(state_dict, metadata)``; the metadata is the safetensors header's (empty for torch).

    Raises:
        CheckpointError: Unsupported suffix, a truncated or garbage file, or no dict of tensors.
        UnsafeCheckpointError: The file carries pickled objects other than tensors.
    """
    if checkpoint_kind(path) == "safetensors":
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
                f"{path.name}: not a readable PyTorch checkpoint ({first_sentence(error)}); "
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
            f"{first_sentence(error)}); the file may be truncated or corrupt"
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
