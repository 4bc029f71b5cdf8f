"""Named errors of dropinf.

Every error the user can cause is one of these types, with a message that says what was expected
and what was found. Errors about bad input subclass ``ValueError`` so callers that only know the
standard library still catch them. Pages show ``str(error)`` with ``st.error``; the CLI prints
it and exits non-zero.
"""

from __future__ import annotations


class DropinfError(Exception):
    """Base class of every error raised on purpose by dropinf."""


class ConfigError(DropinfError, ValueError):
    """A configuration value is out of range or names an unknown option."""


class NoCapturableLayerError(DropinfError, ValueError):
    """The model has no layer whose per-sample gradients dropinf can capture."""


class NonFiniteError(DropinfError, ValueError):
    """A loss, gradient or input holds NaN or infinity."""


class LossShapeError(DropinfError, ValueError):
    """A loss function returned something other than one loss per example."""


class RunError(DropinfError):
    """Base class for problems with a run directory."""


class RunConfigMismatchError(RunError, ValueError):
    """A run directory already holds a run made with a different configuration."""


class RunNotFoundError(RunError, FileNotFoundError):
    """A run directory does not exist or holds no manifest."""


class IncompleteRunError(RunError):
    """A run was asked for results it has not computed yet."""


class RunDirectoryError(RunError, ValueError):
    """A run directory path is a file, lies below one, cannot be created, or holds other files."""


class CorruptRunError(RunError, ValueError):
    """A run's manifest is not valid JSON or not a dropinf manifest."""


class RunLockedError(RunError):
    """Another process is writing the run directory (it holds the run's lock)."""


class MissingFileError(DropinfError, FileNotFoundError):
    """A file the user named does not exist."""


class CheckpointError(DropinfError, ValueError):
    """A checkpoint cannot be read or does not fit its architecture."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint carries pickled code and was refused without running it."""


class UnknownArchitectureError(CheckpointError):
    """An architecture name is not in the model registry."""


class CheckpointMismatchError(CheckpointError):
    """A state_dict has missing, unexpected or wrongly shaped tensors for its architecture."""


class DatasetError(DropinfError, ValueError):
    """A dataset cannot be read, or its contents are malformed."""


class DataModelMismatchError(DatasetError):
    """A dataset does not fit the model (input shape or class count)."""


class JobError(DropinfError):
    """A background job failed, or could not be started or cancelled."""
