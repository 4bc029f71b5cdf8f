"""Background jobs: child processes computing a run, one per run directory and job name.

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
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropinf.errors import CorruptRunError, JobError
from dropinf.run.files import atomic_write_json, exclusive_lock, now_iso, read_json_object
from dropinf.run.store import RunStore

COMPUTE_JOB = "job"
ACTIVE_STATES = ("queued", "running")
# A run whose manifest says "running" with no job of ours is taken as alive while its files
# changed this recently (a `python -m dropinf compute` started from a terminal).
EXTERNAL_RUN_STALE_S = 120.0
_LOG_TAIL_LINES = 5
BAD_INPUT_EXIT = 2  # the CLI's exit code for a refused input (``error: ...`` on stderr)
_EXIT_WRAPPER = 'exit_file="$1"; shift; "$@"; code=$?; echo "$code" > "$exit_file"; exit "$code"'


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
        checkpoint: For a run over several checkpoints: the one being computed, else ``""``.
        checkpoint_index: Its position (0-based) among ``checkpoints``.
        checkpoints: How many checkpoints the run has (0 for a run of one model).
    """

    state: str
    done: int = 0
    total: int = 0
    phase: str = ""
    examples_per_s: float | None = None
    eta_s: float | None = None
    error: str | None = None
    pid: int | None = None
    checkpoint: str = ""
    checkpoint_index: int = 0
    checkpoints: int = 0

    @property
    def is_active(self) -> bool:
        """True while a job is queued or running."""
        return self.state in ACTIVE_STATES

    @property
    def fraction(self) -> float:
        """Share of the current phase done, in [0, 1] (0 when the total is unknown)."""
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0


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
        with exclusive_lock(job_file(run_dir, name, "mutex")):
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
        lock = read_json_object(job_file(run_dir, name, "lock"))
        if not (lock and _lock_alive(lock)):
            return
        self._terminate(int(lock["pid"]))
        job_file(run_dir, name, "cancelled").write_text(now_iso())
        if name == COMPUTE_JOB:
            _mark_manifest_cancelled(run_dir)

    def _launch(self, command: list[str], run_dir: Path, name: str) -> subprocess.Popen[bytes]:
        for suffix in ("exit", "cancelled"):
            job_file(run_dir, name, suffix).unlink(missing_ok=True)
        if name != COMPUTE_JOB:
            job_progress_path(run_dir, name).unlink(missing_ok=True)
        wrapped = ["/bin/sh", "-c", _EXIT_WRAPPER, "sh", str(job_file(run_dir, name, "exit"))]
        with open(job_file(run_dir, name, "log"), "ab") as log:
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
        atomic_write_json(job_file(run_dir, name, "lock"), lock)
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
    progress = _progress_status(run_dir) if name == COMPUTE_JOB else _job_progress(run_dir, name)
    lock_path = job_file(run_dir, name, "lock")
    lock = read_json_object(lock_path)
    if lock and _lock_alive(lock):
        return _replace_state(progress, "running", pid=int(lock["pid"]))
    manifest = read_run_manifest(run_dir) if name == COMPUTE_JOB else {}
    if manifest.get("status") == "complete":
        return _replace_state(progress, "complete")
    if job_file(run_dir, name, "cancelled").exists():
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
    """Why a job failed and what to change, from its exit code and the end of its log.

    A refused input (exit 2, the CLI's ``error:`` line) is fixed by changing the input, so it
    gets that line and that advice; a killed job (no exit code, a signal) is resumed by starting
    it again; a crash names its code and the log's last lines.
    """
    tail = _log_tail(run_dir, name)
    again = "start it again to resume" if name == COMPUTE_JOB else "start it again"
    refusal = _error_line(run_dir, name) if exit_code == BAD_INPUT_EXIT else None
    if refusal is not None:
        return (
            f"the job refused its input: {refusal}. Fix the input it names (model, data or "
            "settings) and start it again; resuming as it is fails the same way"
        )
    if exit_code is None or exit_code < 0 or exit_code > 128:
        reason = "the job was stopped before it finished (killed, e.g. out of memory or a restart)"
        return f"{reason}; {again}" + (f". Last output:\n{tail}" if tail else "")
    reason = "exited without completing" if exit_code == 0 else f"failed (exit code {exit_code})"
    return (
        f"the job {reason}; the output below says why: fix that cause before starting it again"
        + (f". Last output:\n{tail}" if tail else "")
    )


def _error_line(run_dir: Path, name: str) -> str | None:
    """The last ``error: ...`` line the CLI wrote to the job's log, or None."""
    try:
        lines = job_file(run_dir, name, "log").read_text(errors="replace").splitlines()
    except OSError:
        return None
    errors = [line.strip() for line in lines if line.startswith("error:")]
    return errors[-1] if errors else None


def _external_run_status(run_dir: Path, progress: JobStatus) -> JobStatus:
    store = RunStore(run_dir)
    engine_files = [store.manifest_path, store.progress_path]
    newest = max(path.stat().st_mtime for path in engine_files if path.exists())
    if time.time() - newest < EXTERNAL_RUN_STALE_S:
        return _replace_state(progress, "running")
    message = "the run was interrupted (no job is writing it); start it again to resume"
    return _replace_state(progress, "failed", error=message)


def _job_progress(run_dir: Path, name: str) -> JobStatus:
    """The progress a named job (map, retrain) reports in ``<name>.progress``, if any."""
    return _running_status(read_json_object(job_progress_path(run_dir, name)) or {})


def _running_status(progress: dict[str, Any]) -> JobStatus:
    """A running job's status from what it reported (``progress.json`` keys)."""
    return JobStatus(
        "running",
        done=int(progress.get("done") or 0),
        total=int(progress.get("total") or 0),
        phase=str(progress.get("phase") or ""),
        examples_per_s=progress.get("examples_per_s"),
        eta_s=progress.get("eta_s"),
        checkpoint=str(progress.get("checkpoint") or ""),
        checkpoint_index=int(progress.get("checkpoint_index") or 0),
        checkpoints=int(progress.get("checkpoints") or 0),
    )


def _progress_status(run_dir: Path) -> JobStatus:
    store = RunStore(run_dir)
    progress = store.read_progress()
    if progress:
        return _running_status(progress)
    manifest = read_run_manifest(run_dir)
    done, total = int(manifest.get("rows_done") or 0), int(manifest.get("n_train") or 0)
    return JobStatus("running", done=done, total=total, phase="gradients" if total else "")


def read_run_manifest(run_dir: Path) -> dict[str, Any]:
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
    return job_file(Path(run_dir), name, "log")


def job_progress_path(run_dir: str | Path, name: str) -> Path:
    """Where a named job (map, retrain) writes its progress: ``RUN_DIR/<name>_progress.json``.

    The file holds a JSON object with ``phase``, ``done``, ``total`` and optionally
    ``examples_per_s`` and ``eta_s``; ``job_status`` reads it back, and starting the job
    removes the last one. (The retrain job's is ``retrain_progress.json``.)
    """
    return Path(run_dir) / f"{name}_progress.json"


def job_file(run_dir: Path, name: str, suffix: str) -> Path:
    """The job file ``<name>.<suffix>`` of a run (lock, mutex, log, exit, cancelled)."""
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
        return int(job_file(run_dir, name, "exit").read_text().strip())
    except (OSError, ValueError):
        return None


def _log_tail(run_dir: Path, name: str) -> str:
    try:
        lines = job_file(run_dir, name, "log").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(line for line in lines[-_LOG_TAIL_LINES:] if line.strip())
