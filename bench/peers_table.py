"""The methods of the peer table, and how each is tuned and scored against the exact one.

Damped methods choose their damping ratio from a shared grid by LDS on held-out (even-indexed)
test examples; LDS is reported on the odd-indexed ones. Fidelity compares dropinf's dropout
scores with exact (identity) scores at the same curvature and damping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from torch.utils.data import Subset

from bench.adapters import (
    MethodResult,
    Problem,
    captum_arnoldi_adapter,
    captum_tracin_adapter,
    cleanlab_adapter,
    dattri_block_adapter,
    dattri_if_adapter,
    dattri_trak_adapter,
    dropinf_adapter,
    kronfluence_adapter,
    run_method,
    traker_adapter,
)
from bench.lds import SubsetOutputs, linear_datamodeling_score
from bench.peers_setting import DAMPING_GRID, fold_trainer
from dropinf import metrics
from dropinf.data import DatasetBundle
from dropinf.models import TrainRecipe

KEEP_RATIO = 0.25
SELECTION_TESTS = 250  # held-out (even-indexed) test examples each method's damping is chosen on


@dataclass(frozen=True)
class Method:
    """A row of the table.

    Attributes:
        adapter: The method's adapter.
        damped: It takes the shared damping grid (chosen on noise seed 0 of each architecture ×
            noise kind, reused on the other seeds).
        heavy: It runs on noise seed 0 only (minutes per setting on 2 cores).
    """

    adapter: Callable[[Problem, MethodResult], None]
    damped: bool = False
    heavy: bool = False


def method_table(
    dropinf_only: bool,
    recipe: TrainRecipe,
    bundle: DatasetBundle,
    extra_keep: tuple[float, ...] = (),
    extra_curvature: str = "auto",
) -> dict[str, Method]:
    """Method label -> method, in table order (dropinf dropout first: it fixes k).

    ``extra_keep`` adds dropinf rows at those keep ratios, fitted with ``extra_curvature``.
    """
    methods = {
        "dropinf dropout": Method(dropinf_adapter("dropout", KEEP_RATIO, "uniform"), True),
        "dropinf dropout (energy mask)": Method(
            dropinf_adapter("dropout", KEEP_RATIO, "energy"), True
        ),
    }
    for keep in extra_keep:
        adapter = dropinf_adapter("dropout", keep, "uniform", extra_curvature)
        kind = "" if extra_curvature == "auto" else f", {extra_curvature}"
        methods[f"dropinf dropout (keep {keep}{kind})"] = Method(adapter, damped=True)
    if dropinf_only:
        return methods
    methods |= {
        "TRAK (traker)": Method(traker_adapter, damped=True),
        "dattri TRAK": Method(dattri_trak_adapter),  # its λ is not reachable: 0
        "dattri LoGra": Method(dattri_block_adapter("logra"), damped=True),
        "dattri FactGraSS": Method(dattri_block_adapter("factgrass"), damped=True),
        "dattri IF (Arnoldi)": Method(dattri_if_adapter("arnoldi"), damped=True),
        "dattri IF (DataInf)": Method(dattri_if_adapter("datainf"), damped=True, heavy=True),
        "dattri IF (explicit)": Method(dattri_if_adapter("explicit")),
        "Kronfluence EK-FAC": Method(kronfluence_adapter, damped=True),
        "captum TracInCP": Method(captum_tracin_adapter),
        "captum IF (Arnoldi)": Method(captum_arnoldi_adapter, damped=True, heavy=True),
        "cleanlab": Method(cleanlab_adapter(fold_trainer(recipe, bundle))),
    }
    return methods


def reference_curvature(arch: str) -> str:
    """Curvature used for the fidelity pair (dropout vs identity at the same curvature).

    The MLP's 9 610 parameters allow the exact full Fisher; the CNN's 151 k do not, so its
    fidelity pair uses the identity curvature (gradient similarity) on both sides.
    """
    return "full" if arch == "mlp" else "identity"


def fidelity_pair(problem: Problem, arch: str) -> tuple[dict[str, float], np.ndarray]:
    """Fidelity of dropout against identity compression at the same curvature and damping.

    Returns:
        The fidelity report (plus the curvature used) and the exact (identity) scores.
    """
    from dropinf.core import CompressionConfig, CurvatureConfig, cross_entropy_per_sample
    from dropinf.engine import InfluenceEngine

    curvature = CurvatureConfig(kind=reference_curvature(arch), damping_ratio=problem.damping_ratio)
    scores = {}
    for method in ("dropout", "identity"):
        compression = CompressionConfig(
            method=method, keep_ratio=KEEP_RATIO, seed=0, mask="uniform"
        )
        engine = InfluenceEngine(problem.model, cross_entropy_per_sample, compression, curvature)
        scores[method] = engine.fit(problem.train).pairwise_scores(problem.test).numpy()
    report = metrics.fidelity(scores["dropout"], scores["identity"], top=10).to_dict()
    report["curvature"] = curvature.kind
    return report, scores["identity"]


def selection_rows(n_test: int) -> np.ndarray:
    """The held-out test examples damping is chosen on: the first even-indexed ones."""
    return np.arange(0, n_test, 2)[:SELECTION_TESTS]


def choose_damping(
    name: str,
    method: Method,
    problem: Problem,
    subsets: SubsetOutputs,
    timeout_s: int,
    grid: tuple[float, ...] = DAMPING_GRID,
) -> tuple[float, MethodResult | None]:
    """The grid ratio with the best LDS on the held-out (even-indexed) test examples.

    Returns:
        The ratio, and the failed run if the method failed on the held-out examples.
    """
    rows = selection_rows(len(problem.test))
    held_out = replace(problem, test=Subset(problem.test, rows.tolist()))
    best, best_lds = grid[0], -np.inf
    for ratio in grid:
        result = run_method(name, method.adapter, replace(held_out, damping_ratio=ratio), timeout_s)
        if result.error is not None:
            return ratio, result
        margins = subsets.margins[:, rows]
        lds = linear_datamodeling_score(result.scores, subsets.masks, margins).lds
        if lds > best_lds:
            best, best_lds = ratio, lds
    return best, None


def report_lds(scores: np.ndarray, subsets: SubsetOutputs) -> float:
    """LDS on the odd-indexed test examples (the even ones choose the damping)."""
    rows = np.arange(1, scores.shape[0], 2)
    report = linear_datamodeling_score(scores[rows], subsets.masks, subsets.margins[:, rows])
    return report.lds
