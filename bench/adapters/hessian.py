"""Sizes and the damping scale shared by the Arnoldi methods of dattri and captum."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import Dataset, Subset

from bench.adapters.runner import BATCH, Problem, loader

ARNOLDI_MAX_RANK = 100
HESSIAN_WORK = 2e7  # examples × parameters of the data one Hessian-vector product runs on
HUTCHINSON_PROBES = 10


def arnoldi_sizes(problem: Problem, n_params: int) -> tuple[int, int]:
    """Rank and Hessian examples of the Arnoldi methods (dattri, captum).

    The rank is the shared ``k`` capped at :data:`ARNOLDI_MAX_RANK` (the Krylov space, 2·rank
    Hessian-vector products, is the cost); the Hessian runs on the first whole batches of the
    train split such that examples × parameters stays under :data:`HESSIAN_WORK` (all 2 000 on
    the MLP, one batch of 256 on the CNN).
    """
    rank = min(problem.k or ARNOLDI_MAX_RANK, ARNOLDI_MAX_RANK)
    batches = max(1, math.ceil(HESSIAN_WORK / n_params / BATCH))
    return rank, min(len(problem.train), batches * BATCH)


def hessian_mean_diag(model: nn.Module, dataset: Dataset, n_examples: int) -> float:
    """Mean diagonal of the Hessian of the mean cross-entropy on the first examples.

    Hutchinson's estimate with :data:`HUTCHINSON_PROBES` Rademacher probes (seeded).
    """
    params = {name: p.detach() for name, p in model.named_parameters()}
    inputs, labels = next(iter(loader(Subset(dataset, range(n_examples)), n_examples)))

    def loss(weights):
        logits = torch.func.functional_call(model, weights, (inputs,))
        return functional.cross_entropy(logits, labels)

    gradient = torch.func.grad(loss)
    generator = torch.Generator().manual_seed(0)
    total = 0.0
    for _ in range(HUTCHINSON_PROBES):
        probe = {
            name: torch.randint(0, 2, p.shape, generator=generator).to(p.dtype) * 2 - 1
            for name, p in params.items()
        }
        _, product = torch.func.jvp(gradient, (params,), (probe,))
        total += sum(float((product[name] * probe[name]).sum()) for name in params)
    mean_diag = total / HUTCHINSON_PROBES / sum(p.numel() for p in params.values())
    if mean_diag <= 0:
        raise RuntimeError(f"Hutchinson's mean Hessian diagonal is not positive: {mean_diag}")
    return mean_diag
