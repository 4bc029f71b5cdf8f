"""Content-addressed runs: what a run is asked for, its key and directory, and the listing.

A run is named by what determines its scores: the checkpoint's sha256, the data fingerprint and
the compression and curvature configs; a run over several checkpoints by every checkpoint's
sha256 in order and how their scores are combined. The same request therefore always maps to the
same run directory under ``paths.runs_dir()``, which is reused after a server restart and shared
by every browser session.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropinf import paths
from dropinf.core import CompressionConfig, CurvatureConfig
from dropinf.errors import ConfigError
from dropinf.run.jobs import COMPUTE_JOB, job_file, job_status, read_run_manifest


@dataclass(frozen=True)
class RunRequest:
    """What the user asked to compute: model, data and the two stage configs.

    Attributes:
        checkpoint: Path of the model checkpoint.
        data_spec: Dataset spec understood by ``dropinf.data.load_data``.
        compression: How per-sample gradients are compressed.
        curvature: How the compressed Fisher is formed and damped.
        device: Device of the compute job (does not change the run key).
        batch_size: Batch size of the compute job (does not change the run key).
        arch: Architecture the checkpoint is loaded with (``--arch``), or None for its sidecar's;
            part of the checkpoint's identity in the run key when given.
        arch_args: Its arguments (``--arch-args``), or None for the saved ones (or none).
        checkpoints: For a run over several checkpoints: all of them in training order, the
            last being ``checkpoint`` (the final model); empty for a run of one checkpoint.
        combination: How several checkpoints' scores are combined (``dropinf.engine``'s
            ``COMBINATIONS``); required with ``checkpoints``, None for one checkpoint.
    """

    checkpoint: Path
    data_spec: str
    compression: CompressionConfig
    curvature: CurvatureConfig
    device: str = "cpu"
    batch_size: int = 256
    arch: str | None = None
    arch_args: dict[str, Any] | None = None
    checkpoints: tuple[Path, ...] = ()
    combination: str | None = None

    @property
    def is_ensemble(self) -> bool:
        """True for a run over several checkpoints."""
        return len(self.checkpoints) > 1


def run_key(
    request: RunRequest, checkpoint_sha256: str | Sequence[str], data_fingerprint: str
) -> str:
    """The content address of a run: 16 hex digits of a sha256.

    Only what changes the scores enters the key: the checkpoint's identity, the data contents
    and the two configs. The checkpoint's identity is its sha256, plus the request's ``arch`` and
    ``arch_args`` when it names them (the same weights under another architecture are another
    model; a request relying on the sidecar keeps the key it always had). The checkpoint's
    path, the data spec's spelling, the device, the batch size and the number of processes do
    not enter it.

    A run over several checkpoints (``request.checkpoints``) is named by every checkpoint's
    sha256, in order, and the combination instead of the one sha256; a run of one checkpoint
    keeps the key it always had (given its sha256 alone or in a list of one).

    Args:
        request: The run request.
        checkpoint_sha256: sha256 of the checkpoint file; for a run over several checkpoints,
            the sha256 of each of ``request.checkpoints``, in their order.
        data_fingerprint: The dataset bundle's fingerprint.

    Returns:
        The run key.

    Raises:
        ConfigError: The sha256s do not match ``request.checkpoints`` one for one, or a run over
            several checkpoints names no combination.
    """
    identity: dict[str, Any] = {
        **_checkpoint_identity(request, checkpoint_sha256),
        "data_fingerprint": data_fingerprint,
        "compression": request.compression.to_dict(),
        "curvature": request.curvature.to_dict(),
    }
    if request.arch is not None:
        identity["architecture"] = {"arch": request.arch, "arch_args": request.arch_args or {}}
    encoded = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def _checkpoint_identity(
    request: RunRequest, checkpoint_sha256: str | Sequence[str]
) -> dict[str, Any]:
    """The key's checkpoint fields: one sha256, or all of them in order and the combination.

    Raises:
        ConfigError: See ``run_key``.
    """
    digests = [checkpoint_sha256] if isinstance(checkpoint_sha256, str) else list(checkpoint_sha256)
    expected = max(len(request.checkpoints), 1)
    if len(digests) != expected:
        raise ConfigError(
            f"checkpoint_sha256: expected one sha256 per checkpoint of the request ({expected}), "
            f"found {len(digests)}"
        )
    if not request.is_ensemble:
        return {"checkpoint_sha256": digests[0]}
    if not request.combination:
        raise ConfigError(
            "combination: expected how the scores of several checkpoints are combined, found none"
        )
    return {"checkpoints_sha256": digests, "combination": request.combination}


def run_dir_for(
    request: RunRequest, checkpoint_sha256: str | Sequence[str], data_fingerprint: str
) -> Path:
    """The run directory of a request: ``paths.runs_dir() / run_key(...)`` (not created)."""
    return paths.runs_dir() / run_key(request, checkpoint_sha256, data_fingerprint)


def list_runs(root: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per run directory under ``root``, newest first.

    Args:
        root: Folder of run directories; ``paths.runs_dir()`` when None.

    Returns:
        Dicts with ``key``, ``status``, ``method``, ``keep_ratio``, ``k``, ``n_train``,
        ``created``, ``arch``, ``data_spec`` and ``path``.
    """
    root = Path(root) if root is not None else paths.runs_dir()
    run_dirs = [path for path in sorted(root.iterdir()) if path.is_dir() and path.name[0] != "."]
    rows = [_run_row(run_dir) for run_dir in run_dirs]
    rows = [row for row in rows if row is not None]
    return sorted(rows, key=lambda row: row["created"] or "", reverse=True)


def _run_row(run_dir: Path) -> dict[str, Any] | None:
    manifest = read_run_manifest(run_dir) or None
    if manifest is None and not job_file(run_dir, COMPUTE_JOB, "lock").exists():
        return None
    manifest = manifest or {}
    compression = manifest.get("compression") or {}
    provenance = manifest.get("provenance") or {}
    return {
        "key": run_dir.name,
        "status": job_status(run_dir).state,
        "method": compression.get("method"),
        "keep_ratio": compression.get("keep_ratio"),
        "k": manifest.get("k"),
        "n_train": manifest.get("n_train"),
        "created": manifest.get("created"),
        "arch": provenance.get("arch"),
        "data_spec": provenance.get("data_spec"),
        "path": str(run_dir),
    }
