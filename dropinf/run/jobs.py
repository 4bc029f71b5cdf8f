"""Content-addressed runs and the background jobs that compute them.

A run is named by what determines its scores: the checkpoint's sha256, the data fingerprint and
the compression and curvature configs. The same request therefore always maps to the same run
directory under ``paths.runs_dir()``, which is reused after a server restart and shared by every
browser session.

A job is a child process (normally ``python -m dropinf compute ...``) started in its own process
group, so it survives Streamlit reruns and can be cancelled as a whole. At most one job runs per
run directory and job name: the lock file ``<name>.lock`` holds the child's pid, and a lock whose
process is gone is stale and taken over. Around the check-and-start, an ``flock`` on
``<name>.mutex`` makes two runners (two sessions, two server processes) racing on one run start
exactly one process. The job's output goes to ``<name>.log``; a small shell wrapper writes its exit
code to ``<name>.exit``; ``cancel`` leaves ``<name>.cancelled``. The engine reports progress in
``manifest.json`` and ``progress.json``.

The job files live next to the run directory, in ``<parent>/.jobs/<run name>/`` (see
``job_dir``), not inside it: the engine empties the run directory when it starts a fresh run,
and a lock deleted under a live job would let a second job start.

Before a run is started, ``estimate_run`` says what it will cost: its compressed dimension k
(exact: the run's own compressors, calibrated like the engine's), the size of its gradient store
and its time on this machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dropinf import paths
from dropinf.core import (
    CompressionConfig,
    CurvatureConfig,
    GradientCapture,
    LayerCompressor,
    LossFn,
    batch_to,
    build_run_compressors,
    cross_entropy_per_sample,
    curvature_flops,
    discover_layers,
)
from dropinf.data import DatasetBundle
from dropinf.errors import ConfigError, CorruptRunError, JobError
from dropinf.run.store import RunStore, atomic_write_json, exclusive_lock, now_iso

COMPUTE_JOB = "job"
ACTIVE_STATES = ("queued", "running")
# A run whose manifest says "running" with no job of ours is taken as alive while its files
# changed this recently (a `python -m dropinf compute` started from a terminal).
EXTERNAL_RUN_STALE_S = 120.0
_LOG_TAIL_LINES = 5
STORE_BYTES_PER_VALUE = 2  # the gradient store holds float16
TIMING_BATCH = 64
_EXIT_WRAPPER = 'exit_file="$1"; shift; "$@"; code=$?; echo "$code" > "$exit_file"; exit "$code"'


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
    """

    checkpoint: Path
    data_spec: str
    compression: CompressionConfig
    curvature: CurvatureConfig
    device: str = "cpu"
    batch_size: int = 256


@dataclass
class JobStatus:
    """Where a run's job stands, as the dashboard shows it.

    Attributes:
        state: ``absent``, ``queued``, ``running``, ``complete``, ``failed`` or ``cancelled``.
        done: Units of the current phase done (training rows for ``gradients``).
        total: Units of the current phase in all.
        phase: The engine's phase (``calibrate``, ``gradients``, ...) or ``""``.
        examples_per_s: Throughput of the current phase, if reported.
        eta_s: Seconds left in the current phase, if known.
        error: Why the job failed, for ``failed``; else None.
        pid: Process id of the live job, for ``queued`` / ``running``.
    """

    state: str
    done: int = 0
    total: int = 0
    phase: str = ""
    examples_per_s: float | None = None
    eta_s: float | None = None
    error: str | None = None
    pid: int | None = None

    @property
    def is_active(self) -> bool:
        """True while a job is queued or running."""
        return self.state in ACTIVE_STATES

    @property
    def fraction(self) -> float:
        """Share of the current phase done, in [0, 1] (0 when the total is unknown)."""
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0


def run_key(request: RunRequest, checkpoint_sha256: str, data_fingerprint: str) -> str:
    """The content address of a run: 16 hex digits of a sha256.

    Only what changes the scores enters the key: the checkpoint contents, the data contents and
    the two configs. The checkpoint's path, the data spec's spelling, the device and the batch
    size do not.

    Args:
        request: The run request.
        checkpoint_sha256: sha256 of the checkpoint file.
        data_fingerprint: The dataset bundle's fingerprint.

    Returns:
        The run key.
    """
    identity = {
        "checkpoint_sha256": checkpoint_sha256,
        "data_fingerprint": data_fingerprint,
        "compression": request.compression.to_dict(),
        "curvature": request.curvature.to_dict(),
    }
    encoded = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def run_dir_for(request: RunRequest, checkpoint_sha256: str, data_fingerprint: str) -> Path:
    """The run directory of a request: ``paths.runs_dir() / run_key(...)`` (not created)."""
    return paths.runs_dir() / run_key(request, checkpoint_sha256, data_fingerprint)


def compute_command(request: RunRequest, run_dir: str | Path) -> list[str]:
    """The CLI command that computes (or resumes) a request's run.

    Args:
        request: The run request.
        run_dir: Where the run is written.

    Returns:
        An argv list starting with ``sys.executable -m dropinf compute``.

    Raises:
        ConfigError: The request sets an option the CLI cannot pass on (the job would compute
            a different run than its key names).
    """
    compression, curvature = request.compression, request.curvature
    _check_expressible(compression, curvature)
    command = [
        sys.executable,
        "-m",
        "dropinf",
        "compute",
        "--model",
        str(request.checkpoint),
        "--data",
        request.data_spec,
        "--method",
        compression.method,
        "--keep-ratio",
        repr(compression.keep_ratio),
        "--mask",
        compression.mask,
        "--seed",
        str(compression.seed),
        "--curvature",
        curvature.kind,
        "--batch-size",
        str(request.batch_size),
        "--device",
        request.device,
        "--out",
        str(run_dir),
    ]
    if curvature.damping is not None:
        command += ["--damping", repr(curvature.damping)]
    return command


def _check_expressible(compression: CompressionConfig, curvature: CurvatureConfig) -> None:
    defaults = {"layer_keep_ratios": {}, "calibration_batches": 4}
    curvature_defaults = {"damping_ratio": 0.1, "max_full_dim": 8192}
    for config, expected in ((compression, defaults), (curvature, curvature_defaults)):
        for name, default in expected.items():
            if getattr(config, name) != default:
                raise ConfigError(
                    f"`python -m dropinf compute` has no option for {name}; expected the default "
                    f"{default!r}, found {getattr(config, name)!r}"
                )


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
    manifest = _read_manifest(run_dir) or None
    if manifest is None and not _job_file(run_dir, COMPUTE_JOB, "lock").exists():
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


class JobRunner:
    """Starts, watches and cancels background jobs, one per run directory and job name.

    Keep one instance per server process (e.g. in ``st.cache_resource``); instances share nothing
    but the files in the run directory, so several instances and processes are safe together.
    """

    def __init__(self, cancel_grace_s: float = 5.0) -> None:
        """Create a runner.

        Args:
            cancel_grace_s: Seconds ``cancel`` waits after SIGTERM before sending SIGKILL.
        """
        self.cancel_grace_s = cancel_grace_s
        self._children: dict[tuple[str, str], subprocess.Popen[bytes]] = {}

    def start(
        self, command: list[str], run_dir: Path, name: str = COMPUTE_JOB, force: bool = False
    ) -> JobStatus:
        """Start ``command`` as the run's job unless one is alive or the run is complete.

        Args:
            command: The argv of the child process.
            run_dir: The run directory (created if missing).
            name: The job's name; jobs of different names run independently.
            force: Start even if the last job of this name completed.

        Returns:
            The job's status after starting (or the status that stopped a new start).

        Raises:
            JobError: The command cannot be started.
        """
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(_job_file(run_dir, name, "mutex")):
            current = self.status(run_dir, name)
            if current.is_active or (current.state == "complete" and not force):
                return current
            child = self._launch(command, run_dir, name)
        self._after_launch(child)
        return self.status(run_dir, name)

    def status(self, run_dir: Path, name: str = COMPUTE_JOB) -> JobStatus:
        """The job's status, read from the run directory's files and process liveness."""
        self._reap()
        return job_status(Path(run_dir), name)

    def cancel(self, run_dir: Path, name: str = COMPUTE_JOB) -> None:
        """Stop the job's whole process group and mark the job (and a running run) cancelled.

        Does nothing when no job is alive.

        Args:
            run_dir: The run directory.
            name: The job's name.
        """
        run_dir = Path(run_dir)
        lock = _read_json(_job_file(run_dir, name, "lock"))
        if not (lock and _lock_alive(lock)):
            return
        self._terminate(int(lock["pid"]))
        _job_file(run_dir, name, "cancelled").write_text(now_iso())
        if name == COMPUTE_JOB:
            _mark_manifest_cancelled(run_dir)

    def _launch(self, command: list[str], run_dir: Path, name: str) -> subprocess.Popen[bytes]:
        for suffix in ("exit", "cancelled"):
            _job_file(run_dir, name, suffix).unlink(missing_ok=True)
        wrapped = ["/bin/sh", "-c", _EXIT_WRAPPER, "sh", str(_job_file(run_dir, name, "exit"))]
        with open(_job_file(run_dir, name, "log"), "ab") as log:
            log.write(f"[{now_iso()}] $ {' '.join(command)}\n".encode())
            log.flush()
            try:
                child = subprocess.Popen(
                    [*wrapped, *command],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=os.getcwd(),
                )
            except OSError as error:
                raise JobError(f"could not start job {command[0]!r}: {error}") from error
        lock = {
            "pid": child.pid,
            "pid_start": _process_start(child.pid),
            "started": now_iso(),
            "command": command,
        }
        atomic_write_json(_job_file(run_dir, name, "lock"), lock)
        self._children[(str(run_dir), name)] = child
        return child

    def _after_launch(self, child: subprocess.Popen[bytes]) -> None:
        """Hook run after the lock is released; the asynchronous runner returns at once."""

    def _reap(self) -> None:
        for key, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[key]

    def _terminate(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.cancel_grace_s
        while time.monotonic() < deadline:
            self._reap()
            if not _pid_alive(pid):
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        self._reap()


class SyncJobRunner(JobRunner):
    """A runner whose ``start`` waits for the job to finish (tests, scripts)."""

    def _after_launch(self, child: subprocess.Popen[bytes]) -> None:
        child.wait()
        self._reap()


def job_status(run_dir: Path, name: str = COMPUTE_JOB) -> JobStatus:
    """A job's status from the run directory alone (no process handles needed).

    Args:
        run_dir: The run directory.
        name: The job's name; ``job`` (the compute job) also reads the run's manifest.

    Returns:
        The status. A live lock means ``running``; otherwise, in order: a complete manifest
        (compute job), a cancel marker, a failed manifest, the recorded exit code, a dead lock
        (the job was killed), a cancelled manifest, a recently updated run computed outside the
        dashboard (``running``) or an interrupted one (``failed``), else ``absent``.
    """
    run_dir = Path(run_dir)
    progress = _progress_status(run_dir) if name == COMPUTE_JOB else JobStatus("running")
    lock_path = _job_file(run_dir, name, "lock")
    lock = _read_json(lock_path)
    if lock and _lock_alive(lock):
        return _replace_state(progress, "running", pid=int(lock["pid"]))
    manifest = _read_manifest(run_dir) if name == COMPUTE_JOB else {}
    if manifest.get("status") == "complete":
        return _replace_state(progress, "complete")
    if _job_file(run_dir, name, "cancelled").exists():
        return _replace_state(progress, "cancelled")
    if manifest.get("status") == "failed":
        error = manifest.get("error") or _log_tail(run_dir, name)
        return _replace_state(progress, "failed", error=error)
    return _finished_status(run_dir, name, progress, manifest.get("status"), lock_path.exists())


def _finished_status(
    run_dir: Path, name: str, progress: JobStatus, verdict: str | None, had_lock: bool
) -> JobStatus:
    """The status of a job that is not alive, once the manifest gave no final verdict."""
    exit_code = _read_exit_code(run_dir, name)
    if exit_code == 0 and name != COMPUTE_JOB:
        return _replace_state(progress, "complete")
    if exit_code is not None or had_lock:
        return _replace_state(progress, "failed", error=_failure_message(run_dir, name, exit_code))
    if verdict == "cancelled":
        return _replace_state(progress, "cancelled")
    if verdict == "running":
        return _external_run_status(run_dir, progress)
    return JobStatus("absent")


def _failure_message(run_dir: Path, name: str, exit_code: int | None) -> str:
    if exit_code is None:
        reason = "the job stopped without reporting an exit code (killed?)"
    elif exit_code == 0:
        reason = "the job exited without completing the run"
    else:
        reason = f"the job exited with code {exit_code}"
    tail = _log_tail(run_dir, name)
    return f"{reason}; start it again to resume" + (f". Last output:\n{tail}" if tail else "")


def _external_run_status(run_dir: Path, progress: JobStatus) -> JobStatus:
    store = RunStore(run_dir)
    engine_files = [store.manifest_path, store.progress_path]
    newest = max(path.stat().st_mtime for path in engine_files if path.exists())
    if time.time() - newest < EXTERNAL_RUN_STALE_S:
        return _replace_state(progress, "running")
    message = "the run was interrupted (no job is writing it); start it again to resume"
    return _replace_state(progress, "failed", error=message)


def _progress_status(run_dir: Path) -> JobStatus:
    store = RunStore(run_dir)
    progress = store.read_progress()
    if progress:
        return JobStatus(
            "running",
            done=int(progress.get("done") or 0),
            total=int(progress.get("total") or 0),
            phase=str(progress.get("phase") or ""),
            examples_per_s=progress.get("examples_per_s"),
            eta_s=progress.get("eta_s"),
        )
    manifest = _read_manifest(run_dir)
    done, total = int(manifest.get("rows_done") or 0), int(manifest.get("n_train") or 0)
    return JobStatus("running", done=done, total=total, phase="gradients" if total else "")


def _read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest ({} when absent); a failed status naming the problem when corrupt."""
    try:
        return RunStore(run_dir).manifest_or_none() or {}
    except CorruptRunError as error:
        return {"status": "failed", "error": str(error)}


def _replace_state(status: JobStatus, state: str, **changes: Any) -> JobStatus:
    values = {**status.__dict__, "pid": None, "error": None, **changes, "state": state}
    return JobStatus(**values)


def _mark_manifest_cancelled(run_dir: Path) -> None:
    store = RunStore(run_dir)
    if store.exists() and store.status == "running":
        store.update_manifest(status="cancelled")


def job_dir(run_dir: str | Path) -> Path:
    """The folder of a run's job files: ``<parent>/.jobs/<run name>`` (outside the run dir)."""
    run_dir = Path(run_dir).absolute()
    return run_dir.parent / ".jobs" / run_dir.name


def job_log_path(run_dir: str | Path, name: str = COMPUTE_JOB) -> Path:
    """The output (stdout and stderr) of a run's job."""
    return _job_file(Path(run_dir), name, "log")


def _job_file(run_dir: Path, name: str, suffix: str) -> Path:
    return job_dir(run_dir) / f"{name}.{suffix}"


def _lock_alive(lock: dict[str, Any]) -> bool:
    pid = lock.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return False
    recorded_start = lock.get("pid_start")
    return recorded_start is None or recorded_start == _process_start(pid)


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` is a running (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _proc_stat_fields(pid)
    return stat is None or stat[0] != "Z"


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to detect pid reuse."""
    stat = _proc_stat_fields(pid)
    return int(stat[19]) if stat else None


def _proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None off Linux."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _read_exit_code(run_dir: Path, name: str) -> int | None:
    try:
        return int(_job_file(run_dir, name, "exit").read_text().strip())
    except (OSError, ValueError):
        return None


def _log_tail(run_dir: Path, name: str) -> str:
    try:
        lines = _job_file(run_dir, name, "log").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(line for line in lines[-_LOG_TAIL_LINES:] if line.strip())


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------------------------
# What a run will cost
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunEstimate:
    """The size and time of a run, before it is started.

    Attributes:
        k: Compressed dimension (exactly the run's).
        n_train: Training examples (rows of the gradient store).
        store_bytes: Size of the float16 gradient store.
        curvature_kind: The concrete curvature (``full``, ``block`` or ``identity``).
        capture_seconds: Calibration plus capturing the training and test gradients.
        curvature_seconds: Factoring, accumulating and applying the curvature blocks.
    """

    k: int
    n_train: int
    store_bytes: int
    curvature_kind: str
    capture_seconds: float
    curvature_seconds: float

    @property
    def seconds(self) -> float:
        """The whole run's estimated wall-clock time."""
        return self.capture_seconds + self.curvature_seconds


def estimate_run(
    model: nn.Module,
    bundle: DatasetBundle,
    compression: CompressionConfig,
    curvature: CurvatureConfig,
    loss_fn: LossFn = cross_entropy_per_sample,
    batch_size: int = 256,
) -> RunEstimate:
    """k, gradient-store size and time of a run, from timed samples on this machine.

    The run's compressors are built as the engine builds them (energy masks from the same
    calibration batches), so k is exact. Time = the calibration, one timed capture batch scaled
    to the training + test examples, and the curvature's dense algebra at the measured matmul
    rate (see ``curvature_flops``).

    Args:
        model: The model, in eval mode, on its device.
        bundle: The dataset (its training split is captured, its test split scored).
        compression: The run's compression config.
        curvature: The run's curvature config.
        loss_fn: ``loss_fn(model, batch) -> (B,)`` per-sample losses.
        batch_size: The run's capture batch size (sets the calibration batches).

    Returns:
        The estimate.

    Raises:
        NoCapturableLayerError: The model has no layer to capture.
    """
    layout = discover_layers(model)
    started = time.perf_counter()
    compressors = build_run_compressors(
        model, layout, compression, bundle.train, loss_fn, batch_size
    )
    calibration_s = time.perf_counter() - started
    capture = GradientCapture(model, layout, _on_model_device(model, compressors))
    n_examples = len(bundle.train) + len(bundle.test)
    kind = curvature.resolve_kind(capture.k)
    flops = curvature_flops(kind, [c.k for c in compressors], len(bundle.train), n_examples)
    per_example = seconds_per_example(capture, bundle.train, loss_fn)
    return RunEstimate(
        k=capture.k,
        n_train=len(bundle.train),
        store_bytes=capture.k * len(bundle.train) * STORE_BYTES_PER_VALUE,
        curvature_kind=kind,
        capture_seconds=calibration_s + per_example * n_examples,
        curvature_seconds=flops / matmul_flops_per_s(),
    )


def seconds_per_example(
    capture: GradientCapture, train: Dataset, loss_fn: LossFn = cross_entropy_per_sample
) -> float:
    """Seconds one example takes through a capture (the second of two timed batches)."""
    batch = _model_batch(capture.model, next(iter(DataLoader(train, batch_size=TIMING_BATCH))))
    capture.capture(loss_fn, batch)
    started = time.perf_counter()
    capture.capture(loss_fn, batch)
    return (time.perf_counter() - started) / len(batch[0])


@cache
def matmul_flops_per_s() -> float:
    """Dense float32 matmul throughput of this machine (one 1024² product, timed once)."""
    matrix = torch.randn(1024, 1024)
    torch.mm(matrix, matrix)
    started = time.perf_counter()
    torch.mm(matrix, matrix)
    return 2 * 1024**3 / max(time.perf_counter() - started, 1e-9)


def _model_batch(model: nn.Module, batch: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    parameter = next(model.parameters())
    return batch_to(batch, parameter.device, parameter.dtype)


def _on_model_device(
    model: nn.Module, compressors: Sequence[LayerCompressor]
) -> list[LayerCompressor]:
    device = next(model.parameters()).device
    return [compressor.to(device) for compressor in compressors]
