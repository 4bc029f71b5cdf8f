"""The CIFAR-size peers benchmark at a tiny size, dropinf only (the main venv has no peer)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "peers_scale.py"
PHASES = ("gradients", "curvature", "scoring", "self_influence")


def run_peers_scale(*flags: str, timeout: float = 180) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), *flags]
    return subprocess.run(command, cwd=ROOT, timeout=timeout, capture_output=True, text=True)


@pytest.mark.slow
def test_peers_scale_smoke_measures_dropinf_in_a_child(tmp_path):
    out = tmp_path / "rows.json"
    flags = ["--n", "48", "--n-test", "6", "--methods", "dropinf", "--threads", "1"]
    result = run_peers_scale(*flags, "--json", str(out))
    assert result.returncode == 0, result.stderr
    payload = json.loads(out.read_text())
    (row,) = payload["rows"]
    assert row["method"] == "dropinf (defaults)" and row["status"] == "finished"
    assert row["error"] is None and row["k"] > 0
    assert all(row["phases"][phase] > 0 for phase in PHASES)
    assert row["total_s"] == pytest.approx(sum(row["phases"].values()))
    assert row["child_wall_s"] > row["total_s"]  # the child's start-up comes on top
    # the child's own high-water mark: the interpreter and torch at least, far below the machine
    assert 100 < row["peak_rss_mb"] < 8192 and 0 < row["peak_above_start_mb"] < row["peak_rss_mb"]
    assert row["stored_mb"] > 48 * row["k"] * 2 / 2**20  # float16 gradients at least
    assert payload["epoch_s"] > 0
    assert "| dropinf (defaults) | finished |" in result.stdout and "| 1.00× |" in result.stdout
    assert "random pixels" in result.stdout and "meaningless for quality" in result.stdout


@pytest.mark.slow
def test_peers_scale_reports_a_method_past_its_time_limit(tmp_path):
    out = tmp_path / "rows.json"
    flags = ["--n", "48", "--n-test", "6", "--methods", "dropinf", "--timeout-s", "1"]
    result = run_peers_scale(*flags, "--json", str(out))
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["status"] == "killed after 1 s (time limit)"  # torch alone takes longer to import
    assert 1 <= row["child_wall_s"] < 30 and "total_s" not in row
    assert "| dropinf (defaults) | killed after 1 s (time limit) | — |" in result.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--n", "0"], "--n: expected a positive integer, found 0"),
        (["--methods", "trak"], "--methods: invalid choice: 'trak'"),
        (["--timeout-s", "-5"], "--timeout-s: expected a positive integer, found -5"),
    ],
)
def test_peers_scale_refuses_bad_options(flags, message):
    result = run_peers_scale(*flags, timeout=60)
    assert result.returncode == 2
    assert "error:" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr
