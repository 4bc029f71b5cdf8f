"""Run integrity: nothing lost, nothing stale, crash-consistent publishing, one writer per run."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dropinf.cli import main
from dropinf.core import CompressionConfig, CurvatureConfig, cross_entropy_per_sample
from dropinf.engine import InfluenceEngine
from dropinf.errors import RunConfigMismatchError, RunDirectoryError, RunLockedError
from dropinf.run import RunStore

REPO = Path(__file__).resolve().parents[2]
RUN_KWARGS = {
    "dtype": torch.float64,
    "shard_rows": 16,
    "compression": CompressionConfig(keep_ratio=0.5, mask="energy"),
}
TINY_TRAIN = ["--arch", "mlp", "--arch-args", '{"hidden_sizes": [16]}', "--epochs", "1"]


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def make_train(n: int = 40, seed: int = 1) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 6, generator=generator, dtype=torch.float64)
    return TensorDataset(inputs, torch.randint(0, 3, (n,), generator=generator))


def make_test() -> TensorDataset:
    return make_train(7, seed=2)


def make_engine(run_dir: Path, **changes: object) -> InfluenceEngine:
    return InfluenceEngine(
        make_model(), cross_entropy_per_sample, run_dir=run_dir, **{**RUN_KWARGS, **changes}
    )


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "thesis.tex").write_text("\\chapter{Five years of work}")
    (path / "figures").mkdir(exist_ok=True)
    (path / "figures" / "plot.pdf").write_bytes(b"%PDF")
    return path


def assert_user_files_intact(path: Path) -> None:
    assert (path / "thesis.tex").read_text() == "\\chapter{Five years of work}"
    assert (path / "figures" / "plot.pdf").read_bytes() == b"%PDF"


# ------------------------------------------------------------------------- 1. nothing lost


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_of_user_files_is_refused_and_kept(tmp_path: Path, overwrite: bool) -> None:
    folder = user_folder(tmp_path / "u")
    with pytest.raises(RunDirectoryError, match=r"expected an empty folder or a dropinf run.*2 "):
        make_engine(folder, overwrite=overwrite).fit(make_train())
    assert_user_files_intact(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["figures", "thesis.tex"]


def test_overwriting_a_run_deletes_only_dropinf_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_engine(run).fit(make_train(), test_dataset=make_test())
    user_folder(run)
    (run / "gradients" / "notes.txt").write_text("mine")
    other = CompressionConfig(keep_ratio=0.25, mask="uniform")
    with pytest.raises(RunConfigMismatchError):
        make_engine(run, compression=other).fit(make_train())
    engine = make_engine(run, compression=other, overwrite=True).fit(make_train())
    assert engine.store.read_manifest()["compression"]["keep_ratio"] == 0.25
    assert not engine.store.test_scores_exist()  # the old run's scores went with it
    assert_user_files_intact(run)
    assert (run / "gradients" / "notes.txt").read_text() == "mine"


def test_out_that_is_a_file_or_lies_below_one_is_refused(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for out in (afile, afile / "run"):
        with pytest.raises(RunDirectoryError, match="found a file"):
            make_engine(out).fit(make_train())
    assert afile.read_text() == "keep me"


# ------------------------------------------------------------------------- 2. nothing stale


def relabelled(dataset: TensorDataset) -> TensorDataset:
    inputs, labels = dataset.tensors
    return TensorDataset(inputs, (labels + 1) % 3)


def perturbed(dataset: TensorDataset) -> TensorDataset:
    inputs, labels = dataset.tensors
    return TensorDataset(inputs + 1e-3, labels)


@pytest.mark.parametrize("change", [relabelled, perturbed], ids=["labels", "inputs"])
def test_other_data_of_the_same_size_is_refused(tmp_path: Path, change) -> None:
    make_engine(tmp_path / "run").fit(make_train())
    with pytest.raises(RunConfigMismatchError, match="data_fingerprint"):
        make_engine(tmp_path / "run").fit(change(make_train()))


def test_a_supplied_data_fingerprint_names_the_data(tmp_path: Path) -> None:
    make_engine(tmp_path / "run").fit(make_train(), data_fingerprint="a" * 64)
    with pytest.raises(RunConfigMismatchError, match="data_fingerprint"):
        make_engine(tmp_path / "run").fit(make_train(), data_fingerprint="b" * 64)


def test_other_test_data_rescores_the_test_split(tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "run").fit(make_train(), test_dataset=make_test())
    first = np.array(engine.store.test_scores())
    other = relabelled(make_test())
    again = make_engine(tmp_path / "run").fit(make_train(), test_dataset=other)
    expected = make_engine(tmp_path / "fresh").fit(make_train(), test_dataset=other)
    assert not np.array_equal(first, again.store.test_scores())
    assert np.array_equal(again.store.test_scores(), expected.store.test_scores())


def test_a_run_of_an_older_format_gets_a_clear_message(tmp_path: Path) -> None:
    store = make_engine(tmp_path / "run").fit(make_train()).store
    store.update_manifest(format=1)
    with pytest.raises(RunConfigMismatchError, match="older run format 1"):
        make_engine(tmp_path / "run").fit(make_train())
    make_engine(tmp_path / "run", overwrite=True).fit(make_train())
    assert store.read_manifest()["format"] == 2


# ---------------------------------------------------------------------- 3. crash-consistent

KILLED_FIT = textwrap.dedent(
    """
    import os, sys
    import dropinf.engine.phases
    from dropinf.core import CurvatureConfig
    from tests.run.test_run_integrity import make_engine, make_test, make_train

    dropinf.engine.phases.PROGRESS_INTERVAL = float("inf")  # a deterministic number of publishes
    kill_at, calls, replace = int(sys.argv[2]), [0], os.replace

    def publish(source, target):
        calls[0] += 1
        if calls[0] == kill_at:
            os._exit(9)
        replace(source, target)

    os.replace = publish
    curvature = CurvatureConfig(kind=sys.argv[3])
    make_engine(sys.argv[1], curvature=curvature).fit(make_train(), 8, make_test())
    print(calls[0])
    """
)


def killed_fit(run_dir: Path, kill_at: int, kind: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", KILLED_FIT, str(run_dir), str(kill_at), kind],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def scores_of(engine: InfluenceEngine) -> tuple[np.ndarray, np.ndarray]:
    return np.array(engine.store.self_influence()), np.array(engine.store.test_scores())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["auto", "ekfac"])  # ekfac: K-FAC statistics beside each shard
def test_a_kill_before_any_publish_resumes_to_identical_scores(tmp_path: Path, kind: str) -> None:
    complete = killed_fit(tmp_path / "whole", 0, kind)
    assert complete.returncode == 0, complete.stderr
    publishes = int(complete.stdout.split()[-1])
    assert publishes >= (23 if kind == "ekfac" else 20)  # manifest, compressors, 3 shards...
    curvature = CurvatureConfig(kind=kind)
    expected = scores_of(make_engine(tmp_path / "whole", curvature=curvature))

    def kill_and_resume(kill_at: int) -> tuple[int, int]:
        run_dir = tmp_path / f"kill-{kill_at}"
        killed = killed_fit(run_dir, kill_at, kind)
        return kill_at, killed.returncode

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(kill_and_resume, range(1, publishes + 1)))
    assert all(code == 9 for _, code in outcomes), outcomes
    for kill_at, _ in outcomes:
        resumed = make_engine(tmp_path / f"kill-{kill_at}", curvature=curvature)
        resumed.fit(make_train(), batch_size=8, test_dataset=make_test())
        for got, want in zip(scores_of(resumed), expected, strict=True):
            assert np.array_equal(got, want), f"kill before publish {kill_at}"
        assert not list((tmp_path / f"kill-{kill_at}").rglob("*.tmp"))


def test_compressors_saved_without_their_manifest_entry_are_rebuilt(tmp_path: Path) -> None:
    expected = scores_of(make_engine(tmp_path / "whole").fit(make_train(), 8, make_test()))
    engine = make_engine(tmp_path / "run").fit(make_train(), 8, make_test())
    engine.store.update_manifest(k=None, shard_rows=None, status="running")  # killed in between
    for path in [*engine.store.complete_shards(), engine.store.self_influence_path]:
        path.unlink()
    resumed = make_engine(tmp_path / "run").fit(make_train(), 8, make_test())
    for got, want in zip(scores_of(resumed), expected, strict=True):
        assert np.array_equal(got, want)


# ------------------------------------------------------------------------ 4. one writer


def test_a_second_writer_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    message = f"already being computed by PID {os.getpid()}"
    with RunStore(tmp_path / "run").writer_lock(), pytest.raises(RunLockedError, match=message):
        make_engine(tmp_path / "run").fit(make_train())
    make_engine(tmp_path / "run").fit(make_train())  # released: the next writer computes


def test_a_holder_that_has_not_yet_written_its_pid_is_still_named(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.prepare()
    descriptor = os.open(store.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(descriptor, fcntl.LOCK_EX)  # locked, record not yet written (the CI race)
    late = threading.Timer(0.2, os.pwrite, (descriptor, b'{"pid": 4242, "since": "x"}', 0))
    late.start()
    try:
        with pytest.raises(RunLockedError, match="already being computed by PID 4242 since x"):
            make_engine(tmp_path / "run").fit(make_train())
    finally:
        late.join()
        os.close(descriptor)


def test_a_folder_another_writer_makes_meanwhile_is_not_taken_for_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, is_dir, looked = tmp_path / "run", Path.is_dir, []
    run.mkdir()

    def made_just_after_the_first_look(path: Path) -> bool:
        if path == run and not looked:
            looked.append(path)
            return False  # another `compute` creates it between this look and the next
        return is_dir(path)

    monkeypatch.setattr(Path, "is_dir", made_just_after_the_first_look)
    RunStore(run).check_location()  # the CI race: "expected a folder …, found a file"
    assert looked == [run]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("integrity") / "mlp.safetensors"
    assert main(["train", *TINY_TRAIN, "--data", "digits", "--out", str(path)]) == 0
    return path


def compute_cli(checkpoint: Path, out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "dropinf", "compute", "--model", str(checkpoint)]
    command += ["--data", "digits", "--out", str(out), "--device", "cpu", *extra]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_eight_concurrent_computes_leave_one_complete_run(checkpoint: Path, tmp_path: Path) -> None:
    children = [compute_cli(checkpoint, tmp_path / "run") for _ in range(8)]
    outcomes = [(child.wait(timeout=300), child.stderr.read().decode()) for child in children]
    assert all(code in (0, 2) for code, _ in outcomes), outcomes
    assert any(code == 0 for code, _ in outcomes)
    assert not any("Traceback" in stderr for _, stderr in outcomes)
    for code, stderr in outcomes:
        if code == 2:
            assert stderr.startswith("error: ") and "already being computed by PID" in stderr
    single = compute_cli(checkpoint, tmp_path / "single")
    assert single.wait(timeout=300) == 0
    shared, alone = RunStore(tmp_path / "run"), RunStore(tmp_path / "single")
    assert shared.is_complete()
    assert np.array_equal(shared.self_influence(), alone.self_influence())
    assert np.array_equal(shared.test_scores(), alone.test_scores())
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_cli_refuses_a_locked_run_and_a_user_folder(checkpoint: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunStore(run).writer_lock():
        child = compute_cli(checkpoint, run)
        assert child.wait(timeout=300) == 2
        stderr = child.stderr.read().decode()
    assert stderr.startswith(f"error: run directory {run} is already being computed by PID ")
    assert f"PID {os.getpid()} since" in stderr and "Traceback" not in stderr
    folder = user_folder(tmp_path / "u")
    child = compute_cli(checkpoint, folder, "--overwrite")
    assert child.wait(timeout=300) == 2
    stderr = child.stderr.read().decode()
    assert stderr.startswith("error: expected an empty folder or a dropinf run directory")
    assert "Traceback" not in stderr and "thesis.tex" in stderr
    assert_user_files_intact(folder)


def test_cli_refuses_a_run_of_other_data(checkpoint: Path, tmp_path: Path, capsys) -> None:
    common = ["compute", "--model", str(checkpoint), "--out", str(tmp_path / "run")]
    assert main([*common, "--data", "digits:noise=0.1,seed=0", "--no-test-scores"]) == 0
    assert main([*common, "--data", "digits:noise=0.3,seed=7", "--no-test-scores"]) == 2
    assert "data_fingerprint" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["provenance"]["data_spec"] == "digits:noise=0.1,seed=0"
