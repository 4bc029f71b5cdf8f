"""bench/norms.py: both ways of computing the norms' gradients run and store the same values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_norms_bench_compares_hooks_and_vmap_on_both_models():
    command = [sys.executable, str(ROOT / "bench" / "norms.py"), "--n", "24", "--batch-size",
               "12", "--repeats", "1", "--width", "8"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = {
        cells[0]: cells[1:]
        for line in done.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| model")
        and (cells := [c.strip() for c in line.strip("|").split("|")])
    }  # fmt: skip
    assert set(rows) == {"resnet9-gn", "token-mlp"}
    for _parameters, k, hooks, vmap, ratio, *_memory, difference in rows.values():
        assert int(k.replace(",", "")) > 0 and float(ratio) > 0
        assert hooks.endswith(" s") and vmap.endswith(" s")
        assert float(difference) < 1e-2  # float16 stores of the same gradients
