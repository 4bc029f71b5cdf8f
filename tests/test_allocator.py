"""The CLI process's allocator keeps freed blocks: later batches fault in few new pages."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from dropinf.cli.allocator import reuse_freed_memory

REFAULTS = textwrap.dedent(
    """
    import resource, sys, torch
    from dropinf.cli.allocator import reuse_freed_memory
    tuned = reuse_freed_memory() if sys.argv[1] == "tuned" else None
    torch.manual_seed(0)
    torch.set_num_threads(1)
    layers = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                                 torch.nn.Conv2d(32, 32, 3, padding=1))
    batch = torch.randn(64, 3, 32, 32)  # activations of 8 MiB each
    layers(batch).sum().backward()  # the first batch faults its pages in either way
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        layers(batch).sum().backward()
    print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def batch_faults(mode: str) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", REFAULTS, mode], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    tuned, faults = done.stdout.split()
    return tuned, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_by_the_next_batches() -> None:
    tuned, faults = batch_faults("tuned")
    default, default_faults = batch_faults("default")
    assert (tuned, default) == ("True", "None")
    assert default_faults > 40_000  # each batch's large blocks mapped afresh, 4 KiB at a time
    assert faults < default_faults / 4  # measured: ~1/10 to 1/25


def test_users_own_allocator_settings_are_left_alone(monkeypatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert reuse_freed_memory() is False
