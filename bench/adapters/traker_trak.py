"""The TRAK adapter (``traker``, imported inside): one checkpoint, dense projection to k."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.adapters.measure import MethodResult, folder_bytes, phase
from bench.adapters.runner import Problem, loader


def traker_adapter(problem: Problem, result: MethodResult) -> None:
    """TRAK (``traker``) with its CPU ``BasicProjector`` (dense Gaussian), proj_dim = k."""
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    model = copy.deepcopy(problem.model).eval()
    grad_dim = sum(p.numel() for p in model.parameters())
    projector = BasicProjector(
        grad_dim=grad_dim, proj_dim=problem.k, seed=0, proj_type=ProjectionType.normal, device="cpu"
    )
    out = Path(tempfile.mkdtemp(dir=problem.workdir, prefix="traker-"))
    traker = TRAKer(
        model=model,
        task="image_classification",
        train_set_size=len(problem.train),
        save_dir=str(out),
        device="cpu",
        projector=projector,
        proj_dim=problem.k,
        use_half_precision=False,
        load_from_save_dir=True,
    )
    checkpoint = model.state_dict()
    with phase(result, "gradients"):
        traker.load_checkpoint(checkpoint, model_id=0)
        for batch in loader(problem.train):
            traker.featurize(batch=batch, num_samples=len(batch[0]))
    with phase(result, "curvature"):
        features = torch.as_tensor(np.asarray(traker.saver.current_store["features"]))  # (n, k)
        mean_diag = float(features.float().pow(2).sum(dim=0).mean())  # mean diag of ΦᵀΦ
        traker.score_computer.lambda_reg = problem.damping_ratio * mean_diag
        traker.finalize_features()
    result.scores = _traker_scores(traker, checkpoint, problem.test, "test", result, "scoring")
    self_scores = _traker_scores(
        traker, checkpoint, problem.train, "self", result, "self_influence"
    )
    result.suspicion = np.diag(self_scores).copy()
    result.bytes_stored = folder_bytes(out)
    result.k = problem.k
    result.note = "TRAK, 1 checkpoint, λ = shared ratio · mean diag ΦᵀΦ; self = diag of train×train"


def _traker_scores(traker, checkpoint, dataset, name, result, phase_name) -> np.ndarray:
    with phase(result, phase_name):
        traker.start_scoring_checkpoint(
            exp_name=name, checkpoint=checkpoint, model_id=0, num_targets=len(dataset)
        )
        for batch in loader(dataset):
            traker.score(batch=batch, num_samples=len(batch[0]))
        scores = traker.finalize_scores(exp_name=name)  # (n_train, n_targets)
    return np.asarray(scores, dtype=np.float32).T
