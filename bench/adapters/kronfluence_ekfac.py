"""The Kronfluence adapter: EK-FAC on every Linear / Conv2d layer (imported inside)."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from torch.nn import functional

from bench.adapters.measure import MethodResult, folder_bytes, phase
from bench.adapters.runner import BATCH, Problem


def kronfluence_adapter(problem: Problem, result: MethodResult) -> None:
    """Kronfluence EK-FAC on every Linear / Conv2d layer, loss as the measurement."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    class ClassificationTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            inputs, labels = batch
            logits = model(inputs)
            if sample:  # true Fisher: labels sampled from the model
                with torch.no_grad():
                    labels = torch.multinomial(torch.softmax(logits, -1), 1).flatten()
            return functional.cross_entropy(logits, labels, reduction="sum")

        def compute_measurement(self, batch, model):
            inputs, labels = batch
            return functional.cross_entropy(model(inputs), labels, reduction="sum")

    task = ClassificationTask()
    model = prepare_model(copy.deepcopy(problem.model).eval(), task)
    out = Path(tempfile.mkdtemp(dir=problem.workdir, prefix="kronfluence-"))
    analyzer = Analyzer(
        "bench",
        model=model,
        task=task,
        cpu=True,
        output_dir=str(out),
        disable_tqdm=True,
        disable_model_save=True,
    )
    with phase(result, "curvature"):  # EK-FAC factors; gradients are taken again when scoring
        analyzer.fit_all_factors(
            "ekfac",
            dataset=problem.train,
            per_device_batch_size=BATCH,
            factor_args=FactorArguments(strategy="ekfac"),
            overwrite_output_dir=True,
        )
    with phase(result, "curvature"):
        damping = problem.damping_ratio * _ekfac_mean_eigenvalue(analyzer, "ekfac")
    score_args = ScoreArguments(damping_factor=damping)
    with phase(result, "scoring"):
        analyzer.compute_pairwise_scores(
            "pair",
            factors_name="ekfac",
            query_dataset=problem.test,
            train_dataset=problem.train,
            score_args=score_args,
            per_device_query_batch_size=BATCH,
            per_device_train_batch_size=BATCH,
            overwrite_output_dir=True,
        )
        scores = analyzer.load_pairwise_scores("pair")["all_modules"]
    with phase(result, "self_influence"):
        analyzer.compute_self_scores(
            "self",
            factors_name="ekfac",
            train_dataset=problem.train,
            score_args=score_args,
            per_device_train_batch_size=BATCH,
            overwrite_output_dir=True,
        )
        suspicion = analyzer.load_self_scores("self")["all_modules"]
    result.scores = scores.float().numpy()
    result.suspicion = suspicion.float().numpy()
    result.bytes_stored = folder_bytes(out / "bench" / "factors_ekfac")
    result.note = (
        f"EK-FAC (no compression; k = all parameters), λ = {problem.damping_ratio} · mean EK-FAC"
        f" eigenvalue = {damping:.3g} (one λ for every module)"
    )


def _ekfac_mean_eigenvalue(analyzer, factors_name: str) -> float:
    """Mean diagonal of the whole (block-diagonal) EK-FAC matrix: its mean eigenvalue.

    Kronfluence stores each module's eigenvalue matrix as a sum over the processed examples
    and divides it by their count before damping (``Ekfac.prepare``); its own heuristic is
    ``0.1 · mean`` per module. Here the mean runs over every parameter of every module.
    """
    lambdas = analyzer.load_lambda_matrices(factors_name)
    total, count = 0.0, 0
    for name, matrix in lambdas["lambda_matrix"].items():
        processed = lambdas["num_lambda_processed"][name]
        total += float((matrix.double() / processed.double()).sum())
        count += matrix.numel()
    return total / count
