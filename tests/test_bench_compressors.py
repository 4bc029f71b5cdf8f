"""bench/compressors.py's curvature table: every kind measured against exact influence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("full", "block", "kfac", "ekfac", "identity")


@pytest.mark.slow
def test_curvature_table_has_every_kind_with_sane_fidelity():
    command = [sys.executable, str(ROOT / "bench" / "compressors.py"), "--quick",
               "--tables", "curvatures"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = {
        cells[0]: [float(cell) for cell in cells[1:]]
        for line in done.stdout.splitlines()
        if line.startswith("| ")
        and (cells := [c.strip() for c in line.strip("|").split("|")])
        and cells[0] in KINDS
    }
    assert set(rows) == set(KINDS)
    for fit_s, pearson, spearman, proponents, opponents, auc, own in rows.values():
        assert fit_s > 0 and -1 <= pearson <= 1 and -1 <= spearman <= 1 and -1 <= own <= 1
        assert 0 <= proponents <= 1 and 0 <= opponents <= 1 and 0.5 < auc <= 1
    assert rows["full"][1] > 0.5  # the compressed Fisher tracks exact influence at its λ
    assert rows["full"][1] > rows["identity"][1]  # curvature matters
    assert "keep ratio 0.5, dropout (uniform)" in done.stdout
