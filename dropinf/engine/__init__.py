"""The facade ``InfluenceEngine`` and the phases of a fit.

``facade`` holds ``InfluenceEngine`` (fit → pairwise_scores / self_influence / query); ``phases``
the steps of a fit (calibrate, gradients, curvature, self-influence, test scores), each committed
to the run store before the next; ``scoring`` the scores against stored gradients;
``ensemble`` one run over several checkpoints (``EnsembleEngine``, scores combined across
them); ``fingerprint`` the digests a run's signature names; ``arguments`` the checks of what callers
pass. Orders calls into ``dropinf.core`` and persists through ``dropinf.run`` (which owns every
file name and the manifest's schema); may import those two (and ``dropinf.errors``), never data
loaders, models, review, the dashboard or the CLI.
"""

from __future__ import annotations

from dropinf.engine.arguments import resolve_device
from dropinf.engine.ensemble import (
    COMBINATIONS,
    DEFAULT_COMBINATION,
    CheckpointInfo,
    EnsembleEngine,
    combine_scores,
    fit_ensemble,
)
from dropinf.engine.facade import InfluenceEngine
from dropinf.engine.fingerprint import model_fingerprint
from dropinf.engine.scoring import load_curvature, stored_gradient_chunks

__all__ = [
    "COMBINATIONS",
    "DEFAULT_COMBINATION",
    "CheckpointInfo",
    "EnsembleEngine",
    "InfluenceEngine",
    "combine_scores",
    "fit_ensemble",
    "load_curvature",
    "model_fingerprint",
    "resolve_device",
    "stored_gradient_chunks",
]
