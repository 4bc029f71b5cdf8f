"""One adapter per attribution method of the peer benchmark, and the runner they share.

``runner`` holds the shared :class:`Problem` and ``run_method`` (memory sampler, time limit,
output checks); ``measure`` the phase timers, peak memory and bytes on disk; ``hessian`` the
Arnoldi sizes and damping scale dattri and captum share. Each other module adapts one library:
``dropinf_engine``, ``kronfluence_ekfac``, ``traker_trak``, ``dattri_methods``,
``captum_methods``, ``cleanlab_cv``. Peer libraries are imported inside their adapter, so the
dropinf adapters run in the main venv without them. May import anything of dropinf.
"""

from __future__ import annotations

from bench.adapters.captum_methods import captum_arnoldi_adapter, captum_tracin_adapter
from bench.adapters.cleanlab_cv import cleanlab_adapter
from bench.adapters.dattri_methods import (
    dattri_block_adapter,
    dattri_if_adapter,
    dattri_trak_adapter,
)
from bench.adapters.dropinf_engine import dropinf_adapter
from bench.adapters.kronfluence_ekfac import kronfluence_adapter
from bench.adapters.measure import MethodResult
from bench.adapters.runner import MethodTimeoutError, Problem, run_method
from bench.adapters.traker_trak import traker_adapter

__all__ = [
    "MethodResult",
    "MethodTimeoutError",
    "Problem",
    "captum_arnoldi_adapter",
    "captum_tracin_adapter",
    "cleanlab_adapter",
    "dattri_block_adapter",
    "dattri_if_adapter",
    "dattri_trak_adapter",
    "dropinf_adapter",
    "kronfluence_adapter",
    "run_method",
    "traker_adapter",
]
