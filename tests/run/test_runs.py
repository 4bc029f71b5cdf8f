from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dropinf.core import CompressionConfig, CurvatureConfig
from dropinf.run import (
    JobRunner,
    RunRequest,
    SyncJobRunner,
    job_dir,
    job_log_path,
    job_status,
    list_runs,
    run_dir_for,
    run_key,
)

SLEEP = [sys.executable, "-c", "import time; time.sleep(30)"]


def make_request(**compression: object) -> RunRequest:
    return RunRequest(
        checkpoint=Path("/models/a.safetensors"),
        data_spec="digits:noise=0.1,seed=0",
        compression=CompressionConfig(**compression),  # type: ignore[arg-type]
        curvature=CurvatureConfig(),
    )


def wait_until(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def runner():
    job_runner = JobRunner(cancel_grace_s=2.0)
    started: list[Path] = []
    yield job_runner, started
    for run_dir in started:
        job_runner.cancel(run_dir)


def test_run_key_depends_on_content_not_on_paths_or_device():
    request = make_request(keep_ratio=0.25)
    key = run_key(request, "ab" * 32, "cd" * 32)
    assert len(key) == 16 and int(key, 16) >= 0
    moved = RunRequest(Path("/elsewhere/b.pt"), "digits", request.compression,
                       request.curvature, device="cuda", batch_size=64)  # fmt: skip
    assert run_key(moved, "ab" * 32, "cd" * 32) == key
    assert run_key(make_request(keep_ratio=0.5), "ab" * 32, "cd" * 32) != key
    assert run_key(request, "ff" * 32, "cd" * 32) != key
    assert run_key(request, "ab" * 32, "ee" * 32) != key


def test_run_dir_for_is_under_runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DROPINF_HOME", str(tmp_path))
    run_dir = run_dir_for(make_request(), "ab" * 32, "cd" * 32)
    assert run_dir.parent == tmp_path / "runs"
    assert run_dir.name == run_key(make_request(), "ab" * 32, "cd" * 32)


def test_absent_run(tmp_path):
    status = JobRunner().status(tmp_path / "nothing")
    assert status.state == "absent" and not status.is_active


def test_start_running_then_cancel(tmp_path, runner):
    job_runner, started = runner
    started.append(tmp_path)
    status = job_runner.start(SLEEP, tmp_path)
    assert status.state == "running" and status.is_active
    assert status.pid is not None and os.getpgid(status.pid) == status.pid  # own process group
    job_runner.cancel(tmp_path)
    status = job_runner.status(tmp_path)
    assert status.state == "cancelled" and status.pid is None
    assert not Path(
        f"/proc/{json.loads((job_dir(tmp_path) / 'job.lock').read_text())['pid']}"
    ).exists()


def write_stale_running_manifest(run_dir: Path) -> None:
    manifest = run_dir / "manifest.json"
    manifest.write_text(json.dumps({"status": "running", "n_train": 10, "rows_done": 4}))
    an_hour_ago = time.time() - 3600
    os.utime(manifest, (an_hour_ago, an_hour_ago))


def test_cancel_marks_a_running_manifest_cancelled(tmp_path, runner):
    job_runner, started = runner
    started.append(tmp_path)
    write_stale_running_manifest(tmp_path)
    assert job_runner.start(SLEEP, tmp_path).pid is not None
    job_runner.cancel(tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "cancelled"


def test_lock_prevents_a_second_job(tmp_path, runner):
    job_runner, started = runner
    started.append(tmp_path)
    first = job_runner.start(SLEEP, tmp_path)
    second = JobRunner().start([sys.executable, "-c", "raise SystemExit(3)"], tmp_path)
    assert second.state == "running" and second.pid == first.pid


def test_lock_survives_the_engine_emptying_the_run_dir(tmp_path, runner):
    job_runner, started = runner
    run_dir = tmp_path / "run"
    started.append(run_dir)
    first = job_runner.start(SLEEP, run_dir)
    shutil.rmtree(run_dir)  # what the engine does when it starts a fresh run
    run_dir.mkdir()
    second = JobRunner().start(SLEEP, run_dir)
    assert second.state == "running" and second.pid == first.pid
    assert job_dir(run_dir) == tmp_path / ".jobs" / "run"
    assert "time.sleep(30)" in job_log_path(run_dir).read_text()


def test_two_runners_racing_start_exactly_one_process(tmp_path, runner):
    _, started = runner
    started.append(tmp_path)
    marker = tmp_path / "starts.txt"
    command = ["/bin/sh", "-c", f"echo $$ >> {marker}; sleep 30"]
    runners = [JobRunner(), JobRunner(), JobRunner()]
    barrier = threading.Barrier(len(runners))
    results = []

    def race(racer: JobRunner) -> None:
        barrier.wait()
        results.append(racer.start(command, tmp_path))

    threads = [threading.Thread(target=race, args=(racer,)) for racer in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wait_until(marker.exists)
    time.sleep(0.3)  # a second process, had one started, would have written by now
    assert len(marker.read_text().split()) == 1
    assert len({status.pid for status in results}) == 1


def test_stale_lock_is_taken_over(tmp_path, runner):
    job_runner, started = runner
    started.append(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    job_dir(tmp_path).mkdir(parents=True)
    (job_dir(tmp_path) / "job.lock").write_text(json.dumps({"pid": dead.pid, "pid_start": None}))
    assert job_runner.status(tmp_path).state == "failed"  # killed job: resumable
    status = job_runner.start(SLEEP, tmp_path)
    assert status.state == "running" and status.pid != dead.pid


def test_reused_pid_with_other_start_time_is_stale(tmp_path):
    job_dir(tmp_path).mkdir(parents=True)
    (job_dir(tmp_path) / "job.lock").write_text(json.dumps({"pid": os.getpid(), "pid_start": -1}))
    assert job_status(tmp_path).state == "failed"


def test_sync_runner_runs_to_completion(tmp_path):
    out = tmp_path / "out.txt"
    command = [sys.executable, "-c", f"open({str(out)!r}, 'w').write('done')"]
    status = SyncJobRunner().start(command, tmp_path, name="map")
    assert status.state == "complete"
    assert out.read_text() == "done"
    assert (job_dir(tmp_path) / "map.exit").read_text().strip() == "0"


def test_sync_runner_reports_failure_with_log_tail(tmp_path):
    command = [sys.executable, "-c", "import sys; sys.exit('bad checkpoint: expected X')"]
    status = SyncJobRunner().start(command, tmp_path)
    assert status.state == "failed"
    assert "code 1" in status.error and "bad checkpoint: expected X" in status.error


def test_compute_job_follows_the_manifest_and_progress(tmp_path):
    script = (
        "import json, pathlib, sys; d = pathlib.Path(sys.argv[1]);"
        "(d / 'progress.json').write_text(json.dumps({'phase': 'done', 'done': 7, 'total': 7,"
        " 'examples_per_s': 100.0, 'eta_s': 0.0}));"
        "(d / 'manifest.json').write_text(json.dumps({'status': 'complete', 'n_train': 7}))"
    )
    status = SyncJobRunner().start([sys.executable, "-c", script, str(tmp_path)], tmp_path)
    assert (status.state, status.phase, status.done, status.total) == ("complete", "done", 7, 7)
    assert status.fraction == 1.0 and status.examples_per_s == 100.0


def test_complete_run_is_not_started_again(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "complete"}))
    status = SyncJobRunner().start([sys.executable, "-c", "raise SystemExit(1)"], tmp_path)
    assert status.state == "complete" and not job_log_path(tmp_path).exists()


def test_failed_manifest_reports_its_error(tmp_path):
    manifest = {"status": "failed", "error": "NonFiniteError: loss is NaN"}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    status = job_status(tmp_path)
    assert status.state == "failed" and status.error == "NonFiniteError: loss is NaN"


def test_list_runs(tmp_path):
    for key, created in (("aaa", "2024-01-01T00:00:00"), ("bbb", "2024-02-01T00:00:00")):
        (tmp_path / key).mkdir()
        manifest = {
            "status": "complete", "created": created, "k": 64, "n_train": 100,
            "compression": {"method": "dropout", "keep_ratio": 0.25},
            "provenance": {"arch": "small_cnn", "data_spec": "digits"},
        }  # fmt: skip
        (tmp_path / key / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / ".jobs" / "aaa").mkdir(parents=True)
    rows = list_runs(tmp_path)
    assert [row["key"] for row in rows] == ["bbb", "aaa"]
    assert rows[0] | {"path": None} == {
        "key": "bbb", "status": "complete", "method": "dropout", "keep_ratio": 0.25, "k": 64,
        "n_train": 100, "created": "2024-02-01T00:00:00", "arch": "small_cnn",
        "data_spec": "digits", "path": None,
    }  # fmt: skip


def test_run_written_outside_the_dashboard(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "running", "n_train": 10}))
    assert job_status(tmp_path).state == "running"  # e.g. the CLI in a terminal: don't race it
    write_stale_running_manifest(tmp_path)
    status = job_status(tmp_path)
    assert status.state == "failed" and "resume" in status.error
    assert (status.done, status.total) == (4, 10)


def test_a_run_over_checkpoints_reports_which_one_it_computes(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "running", "n_train": 10}))
    progress = {"phase": "gradients", "done": 3, "total": 10, "checkpoint": "03-epoch8"}
    progress |= {"checkpoint_index": 2, "checkpoints": 5}
    (tmp_path / "progress.json").write_text(json.dumps(progress))
    status = job_status(tmp_path)
    assert (status.checkpoint, status.checkpoint_index, status.checkpoints) == ("03-epoch8", 2, 5)
    assert (status.phase, status.done, status.total) == ("gradients", 3, 10)


# ---------------------------------------------------------------- estimates


def small_digits(digits_bundle, n_train: int = 300, n_test: int = 40):
    from dataclasses import replace

    from dropinf.data import Split

    def head(split: Split, n: int) -> Split:
        return Split(split.inputs[:n], split.labels[:n])

    return replace(
        digits_bundle,
        train=head(digits_bundle.train, n_train),
        test=head(digits_bundle.test, n_test),
    )


@pytest.mark.parametrize(
    "compression",
    [
        CompressionConfig(method="dropout", keep_ratio=0.25, mask="energy"),
        CompressionConfig(method="dropout", keep_ratio=0.5, mask="uniform", seed=3),
        CompressionConfig(method="gaussian", keep_ratio=0.1),
    ],
    ids=["energy", "uniform", "gaussian"],
)
def test_estimate_k_is_the_runs_k(digits_bundle, compression):
    import torch

    from dropinf.core import cross_entropy_per_sample
    from dropinf.engine import InfluenceEngine
    from dropinf.models import build_model
    from dropinf.run import estimate_run

    bundle = small_digits(digits_bundle)
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=1, input_size=8, num_classes=10).eval()
    curvature = CurvatureConfig(kind="identity")
    estimate = estimate_run(model, bundle, compression, curvature, batch_size=64)
    engine = InfluenceEngine(model, cross_entropy_per_sample, compression, curvature)
    engine.fit(bundle.train, batch_size=64)  # 5 batches: the energy calibration sums 4
    assert estimate.k == engine.capture.k
    assert estimate.n_train == 300 and estimate.store_bytes == estimate.k * 300 * 2
    assert estimate.curvature_kind == "identity" and estimate.curvature_seconds == 0.0
    assert estimate.seconds == estimate.capture_seconds > 0


def test_estimate_resolves_auto_curvature(digits_bundle):
    import torch

    from dropinf.models import build_model
    from dropinf.run import estimate_run

    bundle = small_digits(digits_bundle, n_train=64, n_test=8)
    torch.manual_seed(0)
    model = build_model("mlp", input_dim=64, num_classes=10).eval()
    compression = CompressionConfig(keep_ratio=0.25, mask="uniform")
    full = estimate_run(model, bundle, compression, CurvatureConfig())
    ekfac = estimate_run(model, bundle, compression, CurvatureConfig(max_full_dim=full.k - 1))
    projected = CompressionConfig(method="gaussian", keep_ratio=0.25)
    block = estimate_run(model, bundle, projected, CurvatureConfig(max_full_dim=full.k - 1))
    kinds = (full.curvature_kind, ekfac.curvature_kind, block.curvature_kind)
    assert kinds == ("full", "ekfac", "block")  # projections have no Kronecker factors
    assert full.curvature_seconds > 0 and ekfac.curvature_seconds > 0


def test_curvature_flops_follow_the_factorisation_of_each_block():
    from dropinf.core import curvature_flops

    cholesky = 100 * 5**2 + 5**3 / 3 + 2 * 110 * 5**2
    assert curvature_flops("full", [2, 3], n_train=100, n_examples=110) == cholesky
    low_rank = 4**2 * 5 + 4**3 + 4 * 6 * 4 * 5
    assert curvature_flops("full", [2, 3], n_train=4, n_examples=6) == low_rank
    per_layer = sum(100 * d**2 + d**3 / 3 + 2 * 110 * d**2 for d in (2, 3))
    assert curvature_flops("block", [2, 3], n_train=100, n_examples=110) == per_layer
    assert curvature_flops("identity", [2, 3], n_train=100, n_examples=110) == 0.0


def test_a_corrupt_manifest_is_a_failed_run_not_a_crash(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    status = job_status(tmp_path / "bad")
    assert status.state == "failed" and "invalid JSON" in status.error
    assert [(row["key"], row["status"]) for row in list_runs(tmp_path)] == [("bad", "failed")]
