"""The captum adapters (imported inside): TracInCP and the Arnoldi influence function."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Subset

from bench.adapters.hessian import ARNOLDI_MAX_RANK, arnoldi_sizes, hessian_mean_diag
from bench.adapters.measure import MethodResult, phase
from bench.adapters.runner import BATCH, Problem, loader


def captum_tracin_adapter(problem: Problem, result: MethodResult) -> None:
    """Captum TracInCP on one checkpoint: full-gradient dot products (no curvature, k = p)."""
    from captum.influence import TracInCP

    model = copy.deepcopy(problem.model).eval()
    path = Path(tempfile.mkdtemp(dir=problem.workdir, prefix="captum-")) / "ckpt.pt"
    torch.save(model.state_dict(), path)

    def load(net: nn.Module, ckpt: str) -> float:
        net.load_state_dict(torch.load(ckpt, weights_only=True))
        return 1.0  # learning-rate weight of the checkpoint

    tracin = TracInCP(
        model,
        problem.train,
        checkpoints=[str(path)],
        checkpoints_load_func=load,
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
        batch_size=BATCH,
        sample_wise_grads_per_batch=True,
    )
    inputs, labels = next(iter(loader(problem.test, len(problem.test))))
    with phase(result, "scoring"):
        result.scores = tracin.influence((inputs, labels)).numpy()
    with phase(result, "self_influence"):
        result.suspicion = tracin.self_influence().numpy()
    result.bytes_stored = path.stat().st_size
    result.note = "TracInCP, 1 checkpoint, recomputes train gradients per query (nothing cached)"


def captum_arnoldi_adapter(problem: Problem, result: MethodResult) -> None:
    """Captum ArnoldiInfluenceFunction: ``(∇L(x)ᵀR)(∇L(z)ᵀR)`` with ``RRᵀ ≈ (H + λI)⁻¹`` of rank k.

    Same rank, Krylov size and Hessian examples as dattri's Arnoldi (:func:`arnoldi_sizes`).
    Captum's Hessian is that of the *summed* loss, so λ is ``n_hessian`` times the mean-loss one;
    it is added to the Hessian restricted to the Krylov space (``hessian_reg``).
    """
    from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction

    model = copy.deepcopy(problem.model).eval()
    path = Path(tempfile.mkdtemp(dir=problem.workdir, prefix="captum-arnoldi-")) / "ckpt.pt"
    torch.save(model.state_dict(), path)

    def load(net: nn.Module, ckpt: str) -> float:
        net.load_state_dict(torch.load(ckpt, weights_only=True))
        return 1.0

    n_params = sum(p.numel() for p in model.parameters())
    rank, n_hessian = arnoldi_sizes(problem, n_params)
    with phase(result, "curvature"):  # the Arnoldi iteration runs in the constructor
        damping = (
            problem.damping_ratio * n_hessian * hessian_mean_diag(model, problem.train, n_hessian)
        )
        influence = ArnoldiInfluenceFunction(
            model,
            problem.train,
            str(path),
            checkpoints_load_func=load,
            loss_fn=nn.CrossEntropyLoss(reduction="sum"),
            batch_size=BATCH,
            hessian_dataset=Subset(problem.train, range(n_hessian)),
            sample_wise_grads_per_batch=True,
            projection_dim=rank,
            arnoldi_dim=2 * rank,
            hessian_reg=damping,
            seed=0,
        )
    inputs, labels = next(iter(loader(problem.test, len(problem.test))))
    with phase(result, "scoring"):
        result.scores = influence.influence((inputs, labels)).numpy()
    with phase(result, "self_influence"):
        result.suspicion = influence.self_influence().numpy()
    result.k = len(influence.R)
    result.bytes_stored = result.k * n_params * 4  # R: rank parameter-sized vectors
    result.note = (
        f"captum Arnoldi, rank {result.k} (k capped at {ARNOLDI_MAX_RANK}), Krylov {2 * rank},"
        f" Hessian of the summed loss on {n_hessian} examples, λ = {problem.damping_ratio} ·"
        f" mean diag H (Hutchinson) = {damping:.3g}"
    )
