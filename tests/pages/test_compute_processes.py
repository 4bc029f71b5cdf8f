"""The Compute page's multi-process job: torchrun started as a background job, and cancelled.

``JobRunner.cancel`` stops a job's process group. torchrun starts its workers in sessions of
their own (outside that group), and stops them itself on the SIGTERM it receives: this checks
that cancelling a two-process job leaves no worker behind (gloo on the CPU).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dropinf.cli import compute_command
from dropinf.core import CompressionConfig, CurvatureConfig
from dropinf.data import DEMO_DATA_SPEC
from dropinf.models import ensure_demo_checkpoint
from dropinf.run import JobRunner, RunRequest, job_dir, job_status

pytestmark = pytest.mark.slow

WORKERS_TIMEOUT_S = 120
GONE_TIMEOUT_S = 30


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        table[int(stat.parent.name)] = (int(fields[1]), fields[0])
    return table


def descendants(root: int) -> set[int]:
    table, found, frontier = process_table(), set(), {root}
    while frontier:
        children = {pid for pid, (parent, _) in table.items() if parent in frontier} - found
        found |= children
        frontier = children
    return found


def alive(pid: int) -> bool:
    entry = process_table().get(pid)
    return entry is not None and entry[1] != "Z"


def dropinf_workers(pids: set[int]) -> set[int]:
    """The processes among ``pids`` running ``-m dropinf compute`` (torchrun's workers)."""
    workers = set()
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"torch.distributed.run" not in argv and b"dropinf" in argv and b"compute" in argv:
            workers.add(pid)
    return workers


def test_cancelling_a_two_process_job_stops_torchrun_and_its_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DROPINF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    checkpoint = ensure_demo_checkpoint(progress=False)
    request = RunRequest(checkpoint, DEMO_DATA_SPEC, CompressionConfig(), CurvatureConfig(),
                         batch_size=8)  # fmt: skip
    run_dir = tmp_path / "run"
    runner = JobRunner(cancel_grace_s=10.0)
    command = compute_command(request, run_dir, processes=2)
    status = runner.start(command, run_dir)
    assert status.state == "running"
    deadline, workers = time.monotonic() + WORKERS_TIMEOUT_S, set()
    while len(workers) < 2 and time.monotonic() < deadline:
        assert job_status(run_dir).is_active, (job_dir(run_dir) / "job.log").read_text()
        workers = dropinf_workers(descendants(status.pid))
        time.sleep(0.1)
    assert len(workers) == 2, "torchrun started two workers"
    launched = descendants(status.pid) | {status.pid}

    runner.cancel(run_dir)
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while any(alive(pid) for pid in launched) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in launched if alive(pid)], "no worker or launcher survives"
    assert job_status(run_dir).state == "cancelled"
