"""The dropinf adapter: ``InfluenceEngine`` with one compression method, its fit phases timed."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

from bench.adapters.measure import MethodResult, folder_bytes, phase
from bench.adapters.runner import BATCH, Problem


def dropinf_adapter(method: str, keep_ratio: float, mask: str = "uniform", curvature: str = "auto"):
    """An adapter running dropinf's InfluenceEngine with one compression method and curvature."""

    def adapter(problem: Problem, result: MethodResult) -> None:
        from dropinf import review
        from dropinf.core import CompressionConfig, CurvatureConfig, cross_entropy_per_sample
        from dropinf.engine import InfluenceEngine

        compression = CompressionConfig(method=method, keep_ratio=keep_ratio, seed=0, mask=mask)
        config = CurvatureConfig(kind=curvature, damping_ratio=problem.damping_ratio)
        run_dir = Path(tempfile.mkdtemp(dir=problem.workdir, prefix=f"dropinf-{method}-"))
        engine = InfluenceEngine(
            copy.deepcopy(problem.model),
            cross_entropy_per_sample,
            compression,
            config,
            run_dir=run_dir,
            overwrite=True,
        )
        engine.fit(problem.train, batch_size=BATCH)
        _add_fit_timings(engine.store.read_manifest(), result)
        with phase(result, "scoring"):
            result.scores = engine.pairwise_scores(problem.test, batch_size=BATCH).numpy()
        with phase(result, "self_influence"):
            result.self_influence = engine.self_influence().numpy()
            losses = engine.store.train_metadata()["loss"]
            result.suspicion = review.suspicion(result.self_influence, losses)
        result.bytes_stored = folder_bytes(run_dir)
        result.k = int(engine.store.read_manifest()["k"])
        result.note = (
            f"{method}, keep {keep_ratio}, mask {mask}, {curvature} curvature; detects by the "
            "leave-one-out loss (loss + self-influence / N)"
        )

    return adapter


FIT_PHASES = {
    "calibration": "gradients",
    "gradients": "gradients",
    "curvature": "curvature",
    "self_influence": "self_influence",
}
"""The fit's phases (its manifest ``timings``) -> the benchmark's phase each one lands in."""


def _add_fit_timings(manifest: dict, result: MethodResult) -> None:
    """Add the seconds the fit recorded per phase to the result's phases."""
    for fit_phase, seconds in manifest["timings"].items():
        name = FIT_PHASES.get(fit_phase, fit_phase)
        result.phases[name] = result.phases.get(name, 0.0) + seconds
