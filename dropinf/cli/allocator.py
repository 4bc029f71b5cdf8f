"""The process's memory allocator, tuned for the engine's large, short-lived CPU tensors.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB by default) with
a fresh ``mmap`` and returns it on ``free``, so each batch's activations and gradients (tens of
MiB each) are faulted in page by page again: on a 2-core machine about 40 % of a CPU fit went
to those page faults (bench/RESULTS.md §7). ``reuse_freed_memory`` raises both thresholds, so
freed blocks stay in the heap and the next batch reuses them; the peak resident memory grows
by the blocks kept (about 0.4 GB at CIFAR size). It is what preloading jemalloc or tcmalloc
does, the tuning PyTorch's CPU performance guide recommends, without a new dependency.

Only ``python -m dropinf`` calls it (a process of its own: a command, or a dashboard job),
never a library import, and never where the user set glibc's own variables.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
KEPT_BYTES = 1 << 30  # blocks up to 1 GiB come from (and go back to) the heap
USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")


def reuse_freed_memory() -> bool:
    """Keep freed blocks of up to ``KEPT_BYTES`` in the heap for reuse (glibc only).

    Returns:
        True if glibc took both settings; False elsewhere (another C library, or the user
        set ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``LD_PRELOAD``).
    """
    if any(os.environ.get(name) for name in USER_VARIABLES):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, KEPT_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, KEPT_BYTES)
    )
