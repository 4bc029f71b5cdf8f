"""Checks of what a caller hands the engine: the device, the batch size, the datasets, the team."""

from __future__ import annotations

import numbers

import torch
from torch.utils.data import Dataset

from dropinf.engine.distributed import Team
from dropinf.errors import ConfigError, DatasetError

DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The requested device, or CUDA when present, else the CPU.

    Raises:
        ConfigError: The name is not a device, or names CUDA where there is none.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device: expected cpu, cuda or cuda:N, found {device!r}") from None
    if resolved.type not in DEVICE_TYPES:
        raise ConfigError(f"device: expected cpu, cuda or cuda:N, found {device!r}")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device: expected cpu or an available GPU, found {device!r} but CUDA is not "
            f"available for it on this machine ({torch.cuda.device_count()} GPUs)"
        )
    return resolved


def check_fit_arguments(train: Dataset, batch_size: object, test: Dataset | None) -> None:
    """Refuse a batch size that is not a positive integer, and empty datasets.

    Raises:
        ConfigError: ``batch_size`` is not a positive integer.
        DatasetError: The training set (or a given test set) holds no example.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise ConfigError(f"batch_size: expected a positive integer, found {batch_size!r}")
    if batch_size <= 0:
        raise ConfigError(f"batch_size: expected a positive integer, found {batch_size!r}")
    for role, dataset in (("training", train), ("test", test)):
        if dataset is not None and len(dataset) == 0:
            raise DatasetError(f"{role} set: expected at least one example, found 0")


def check_team(team: Team, temporary_run_dir: bool) -> None:
    """Refuse a fit by several processes that have no run directory to share.

    Raises:
        ConfigError: No ``run_dir`` was given (each process would write its own temporary
            folder).
    """
    if team.distributed and temporary_run_dir:
        raise ConfigError(
            f"run_dir: expected a folder shared by the {team.size} processes of the job, "
            "found None (each process would write its own temporary folder)"
        )
