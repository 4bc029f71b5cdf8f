"""The peer benchmark's smoke size: every method it can run here produces sane output.

Uses bench/.peers-venv when it exists (all peers); otherwise the main venv with
``--dropinf-only`` (CI installs no peer: they are benchmark-only and large).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / "bench" / ".peers-venv" / "bin" / "python"


@pytest.mark.slow
def test_peers_smoke_produces_sane_results(tmp_path):
    python = PEERS_PYTHON if PEERS_PYTHON.exists() else Path(sys.executable)
    flags = [] if PEERS_PYTHON.exists() else ["--dropinf-only"]
    out, plot, raw = tmp_path / "PEERS.md", tmp_path / "plot.png", tmp_path / "results.json"
    command = [str(python), "bench/peers.py", "--smoke", *flags, "--out", str(out),
               "--plot", str(plot), "--json", str(raw),
               "--extra-keep", "1.0", "--extra-curvature", "full"]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, timeout=600, capture_output=True)
    payload = json.loads(raw.read_text())
    (setting,) = payload["settings"]
    rows = {row["method"]: row for row in setting["methods"]}
    dropout = rows["dropinf dropout"]
    assert dropout["error"] is None and dropout["k"] > 0
    assert 0.5 < dropout["auc"] <= 1.0  # self-influence finds flipped labels better than chance
    assert dropout["lds"] > 0.0  # predicted subset effects correlate with retrained outputs
    larger = rows["dropinf dropout (keep 1.0, full)"]  # the extra row, its own curvature
    assert larger["error"] is None and larger["k"] > dropout["k"]
    assert "full curvature" in larger["note"] and "auto curvature" in dropout["note"]
    assert -1.0 <= setting["fidelity"]["spearman"] <= 1.0
    for row in rows.values():
        if row["error"] is None:
            assert row["total_s"] > 0 and 0.0 <= row["auc"] <= 1.0
    assert "| dropinf dropout |" in out.read_text()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
