"""The facade ``InfluenceEngine`` and the phases of a fit.

The facade ``InfluenceEngine`` (fit → pairwise_scores / self_influence / query) and the phases
of a fit (calibrate, gradients, curvature, self-influence, test scores).

Orders calls into ``dropinf.core`` and persists through ``dropinf.run``; may import those two (and
``dropinf.errors``), never data loaders, models, review or the dashboard.
"""

from __future__ import annotations

from dropinf.engine.facade import (
    InfluenceEngine,
    load_curvature,
    model_fingerprint,
    resolve_device,
    stored_gradient_chunks,
)

__all__ = [
    "InfluenceEngine",
    "load_curvature",
    "model_fingerprint",
    "resolve_device",
    "stored_gradient_chunks",
]
