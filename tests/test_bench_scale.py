"""The scale benchmark end to end at a tiny size: every row field present and sane."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "scale.py"
PHASES = ("calibration", "gradients", "curvature", "self_influence")


def run_scale(*flags: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), *flags]
    return subprocess.run(command, cwd=ROOT, timeout=timeout, capture_output=True, text=True)


@pytest.mark.slow
def test_scale_smoke_writes_sane_rows(tmp_path):
    out = tmp_path / "scale.json"
    flags = ["--sizes", "64", "96", "--models", "small_cnn", "--batch-size", "32"]
    result = run_scale(*flags, "--threads", "1", "--work-dir", str(tmp_path / "runs"),
                       "--out-json", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = json.loads(out.read_text())
    assert payload["failures"] == []
    rows = payload["rows"]
    assert [(row["model"], row["n"]) for row in rows] == [("small_cnn", 64), ("small_cnn", 96)]
    for row in rows:
        assert row["k"] > 0 and row["curvature_kind"] and row["damping"] > 0
        assert all(row["phases"][phase] > 0 for phase in PHASES)
        assert row["fit_s"] >= sum(row["phases"][phase] for phase in PHASES)
        assert row["epoch_s"] > 0 and row["fit_per_epoch"] == pytest.approx(
            row["fit_s"] / row["epoch_s"]
        )
        assert 0.05 < row["peak_rss_gb"] < 24 and 0.05 < row["epoch_peak_rss_gb"] < 24
        assert row["run_dir_bytes"] > row["n"] * row["k"] * 2  # float16 gradients, at least
        assert 0 < row["query_s"] < 30 and row["threads"] == 1 and row["batch_size"] == 32
    assert rows[1]["peak_rss_ratio"] == pytest.approx(
        rows[1]["peak_rss_gb"] / rows[0]["peak_rss_gb"]
    )
    assert "| small_cnn | 96 |" in result.stdout
    assert "random pixels" in result.stdout and "bench/scale.py --sizes 64 96" in result.stdout
    assert sorted(path.name.split("-n")[0] for path in (tmp_path / "runs").iterdir()) == [
        "small_cnn",
        "small_cnn",
    ]  # --work-dir keeps the run directories


@pytest.mark.slow
def test_scale_repeats_alternate_epochs_and_fits_and_report_medians(tmp_path):
    out = tmp_path / "scale.json"
    flags = ["--sizes", "64", "--models", "small_cnn", "--batch-size", "32", "--threads", "1"]
    result = run_scale(*flags, "--repeats", "3", "--out-json", str(out))
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert len(row["fit_s_each"]) == 3 and len(row["epoch_s_each"]) == 3
    assert row["fit_s"] == sorted(row["fit_s_each"])[1]
    assert row["epoch_s"] == sorted(row["epoch_s_each"])[1]
    assert row["fit_s"] >= sum(row["phases"][phase] for phase in PHASES) * 0.5
    assert row["run_dir_bytes"] > row["n"] * row["k"] * 2  # the last fit's run, complete


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sizes", "0"], "--sizes"),
        (["--models", "vgg"], "--models"),
        (["--keep-ratio", "1.5"], "keep_ratio"),
        (["--curvature", "hessian"], "curvature kind"),
        (["--max-kept-units", "-3"], "max_kept_units"),
        (["--repeats", "2", "--nproc", "1", "2"], "--repeats 1 with --nproc > 1"),
    ],
)
def test_scale_refuses_bad_options_before_running(flags, message):
    result = run_scale(*flags, timeout=60)
    assert result.returncode == 2
    assert "error:" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr
