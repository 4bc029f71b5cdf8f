"""One run by several processes (torch.distributed, gloo on CPU) equals the single-process run.

Tolerance: the stored gradients, metadata and shard layout are bitwise those of one process
(each row is captured in the same batch); the curvature statistics are summed in another order
(float32 ``Σ g gᵀ`` for ``full`` / ``block``, float64 for the K-FAC kinds), so self-influence
and test scores agree to ``SCORE_TOLERANCE`` of the largest |score| (measured ≈ 2e-6 for
``full`` on the digits here).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import Subset

from dropinf.cli import main
from dropinf.core import CompressionConfig, CurvatureConfig, cross_entropy_per_sample
from dropinf.data import load_data
from dropinf.engine import InfluenceEngine
from dropinf.engine.distributed import Team
from dropinf.errors import ConfigError
from dropinf.models import load_checkpoint
from dropinf.run import RunStore

SCORE_TOLERANCE = 1e-5  # of the largest |score|: float32 summation order
TINY_TRAIN = ["--arch", "mlp", "--arch-args", '{"hidden_sizes": [16]}', "--epochs", "2"]
BATCH = "64"  # 1437 rows → 8 shards of 192 under 2 processes: 4 each
STALLED_SHARD = 5  # rank 1 writes shards 4-7: it is killed inside its second
KINDS = ("full", "block", "kfac", "ekfac", "identity")
API_TRAIN, API_TEST = 60, 20  # N = 60 < k = 84: ``full`` is a low-rank block

# Runs ``python -m dropinf`` in a torchrun worker; rank 1 stops inside shard STALL_SHARD (its
# rows partly written) and waits there to be killed.
STALLING_MAIN = """
import os, runpy, sys, time
from pathlib import Path
from dropinf.run import shards

original = shards.ShardWriter.append

def append(self, gradients, meta):
    original(self, gradients, meta)
    stalled = self.path.name == f"shard-{int(os.environ['STALL_SHARD']):05d}.npy"
    if os.environ["RANK"] == "1" and stalled:
        Path(os.environ["STALL_MARKER"]).write_text(str(os.getpid()))
        time.sleep(600)

shards.ShardWriter.append = append
sys.argv = ["dropinf", *sys.argv[1:]]
runpy.run_module("dropinf", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("distributed") / "mlp.safetensors"
    assert main(["train", *TINY_TRAIN, "--data", "digits", "--out", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def single_run(checkpoint: Path, tmp_path_factory) -> RunStore:
    """The reference: ``compute`` in this one process."""
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(compute_args(checkpoint, out)) == 0
    return RunStore(out)


def compute_args(checkpoint: Path, out: Path) -> list[str]:
    return ["compute", "--model", str(checkpoint), "--data", "digits", "--out", str(out),
            "--batch-size", BATCH]  # fmt: skip


def torchrun(program: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start ``torch.distributed.run`` with 2 CPU processes (standalone: a free local port)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "--monitor-interval", "0.2"]  # fmt: skip
    return subprocess.Popen(
        [*launcher, *program],
        env={**os.environ, **env, "CUDA_VISIBLE_DEVICES": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def assert_same_run(single: RunStore, several: RunStore) -> None:
    """Gradients and metadata bitwise equal; scores within SCORE_TOLERANCE."""
    assert several.is_complete()
    assert np.array_equal(several.gradients(), single.gradients())
    for name, values in single.train_metadata().items():
        assert np.array_equal(several.train_metadata()[name], values), name
    for mine, theirs in (
        (several.self_influence(), single.self_influence()),
        (several.test_scores(), single.test_scores()),
    ):
        assert mine.shape == theirs.shape
        scale = np.abs(theirs).max()
        assert np.abs(mine - theirs).max() <= SCORE_TOLERANCE * scale


@pytest.mark.slow
def test_torchrun_with_two_processes_computes_the_single_process_run(
    checkpoint: Path, single_run: RunStore, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    status, stdout, stderr = finished(
        torchrun(["-m", "dropinf", *compute_args(checkpoint, out)], dropinf_env(tmp_path))
    )
    assert status == 0, stderr
    assert stdout.count('"status": "complete"') == 1  # rank 0 alone prints the summary
    several = RunStore(out)
    manifest = several.read_manifest()
    assert manifest["world_size"] == 2 and manifest["rows_done"] == 1437
    assert len(several.complete_shards()) == 8  # each process wrote 4 of them
    assert_same_run(single_run, several)


@pytest.mark.slow
def test_a_rank_killed_mid_gradients_resumes_from_each_ranks_last_complete_shard(
    checkpoint: Path, single_run: RunStore, tmp_path: Path
) -> None:
    out, marker = tmp_path / "run", tmp_path / "stalled.pid"
    script = tmp_path / "stalling_main.py"
    script.write_text(STALLING_MAIN)
    env = {**dropinf_env(tmp_path), "STALL_SHARD": str(STALLED_SHARD), "STALL_MARKER": str(marker)}
    job = torchrun([str(script), *compute_args(checkpoint, out)], env)
    wait_for(marker, job)
    os.kill(int(marker.read_text()), signal.SIGKILL)
    status, _, _ = finished(job)
    assert status != 0  # torchrun ends the job when a rank dies
    store = RunStore(out)
    published = [path.name for path in store.complete_shards()]
    assert published[-1] == f"shard-{STALLED_SHARD - 1:05d}.npy"  # rank 0's 4, rank 1's first
    assert list(store.gradients_dir.glob(".shard-*.tmp"))  # the killed shard, half written
    before = {path.name: path.stat().st_mtime_ns for path in store.complete_shards()}

    resumed = torchrun(["-m", "dropinf", *compute_args(checkpoint, out)], dropinf_env(tmp_path))
    status, _, stderr = finished(resumed)
    assert status == 0, stderr
    assert not list(store.gradients_dir.glob(".shard-*.tmp"))
    after = {path.name: path.stat().st_mtime_ns for path in store.complete_shards()}
    assert {name: after[name] for name in before} == before  # complete shards were kept
    assert len(after) == 8
    assert_same_run(single_run, store)


@pytest.mark.slow
def test_torchrun_computes_a_run_over_several_checkpoints_like_one_process(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "checkpoints"
    train = ["train", *TINY_TRAIN, "--data", "digits", "--out", str(tmp_path / "final.safetensors")]
    assert main([*train, "--save-checkpoints", str(folder)]) == 0  # epochs 1 and 2
    single, several = tmp_path / "single", tmp_path / "several"
    assert main(compute_args(folder, single)) == 0
    status, _, stderr = finished(
        torchrun(["-m", "dropinf", *compute_args(folder, several)], dropinf_env(tmp_path))
    )
    assert status == 0, stderr
    reference, store = RunStore(single), RunStore(several)
    assert (
        store.read_manifest()["ensemble"]["checkpoints"]
        == reference.read_manifest()["ensemble"]["checkpoints"]
    )
    for sub_run in sorted((single / "checkpoints").iterdir()):
        sub_store = RunStore(several / "checkpoints" / sub_run.name)
        assert sub_store.read_manifest()["world_size"] == 2
        assert_same_run(RunStore(sub_run), sub_store)
    for mine, theirs in (
        (store.self_influence(), reference.self_influence()),
        (store.test_scores(), reference.test_scores()),
    ):
        assert np.abs(mine - theirs).max() <= SCORE_TOLERANCE * np.abs(theirs).max()


def dropinf_env(tmp_path: Path) -> dict[str, str]:
    return {"DROPINF_HOME": str(tmp_path / "home")}


def wait_for(marker: Path, job: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not (marker.is_file() and marker.read_text()):
        if job.poll() is not None or time.monotonic() > deadline:
            job.kill()
            _, err = job.communicate()
            pytest.fail(f"rank 1 never reached shard {STALLED_SHARD}: {err[-2000:]}")
        time.sleep(0.05)


# ----------------------------------------------------------- the Python API under a process group
def api_engine(checkpoint: Path, kind: str, run_dir: Path | None) -> InfluenceEngine:
    model = load_checkpoint(checkpoint).model
    return InfluenceEngine(
        model,
        cross_entropy_per_sample,
        CompressionConfig(seed=0),
        CurvatureConfig(kind=kind),
        run_dir=run_dir,
        device="cpu",
        shard_rows=16,  # 4 shards: 2 per process
    )


def api_data() -> tuple[Subset, Subset]:
    bundle = load_data("digits")
    return Subset(bundle.train, range(API_TRAIN)), Subset(bundle.test, range(API_TEST))


def fit_in_group(rank: int, rendezvous: str, checkpoint: Path, folder: Path) -> None:
    """One of 2 spawned processes: fit every kind under an initialised gloo group."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2)
    try:
        assert Team.current() == Team(rank, 2)
        train, test = api_data()
        with pytest.raises(ConfigError, match="shared by the 2 processes"):
            api_engine(checkpoint, "full", None).fit(train, 8)
        for kind in KINDS:
            engine = api_engine(checkpoint, kind, folder / kind).fit(train, 8, test)
            scores = engine.pairwise_scores(test)  # after fit: the whole run, no collective
            torch.save(scores, folder / f"{kind}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_python_api_under_an_initialised_gloo_group(checkpoint: Path, tmp_path: Path) -> None:
    several, single = tmp_path / "several", tmp_path / "single"
    rendezvous = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(fit_in_group, args=(rendezvous, checkpoint, several), nprocs=2, join=True)
    train, test = api_data()
    for kind in KINDS:
        reference = api_engine(checkpoint, kind, single / kind).fit(train, 8, test)
        store = RunStore(several / kind)
        assert store.read_manifest()["world_size"] == 2
        assert_same_run(reference.store, store)
        expected = reference.pairwise_scores(test)
        for rank in (0, 1):
            scores = torch.load(several / f"{kind}-rank{rank}.pt")
            assert (scores - expected).abs().max() <= SCORE_TOLERANCE * expected.abs().max()


def test_shares_of_shards_are_disjoint_contiguous_and_cover_every_shard() -> None:
    for count in range(12):
        for size in (1, 2, 3, 5):
            shares = [Team(rank, size).share(count) for rank in range(size)]
            assert [index for share in shares for index in share] == list(range(count))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
