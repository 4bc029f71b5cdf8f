"""The dattri adapters (imported inside): TRAK, LoGra / FactGraSS and influence functions."""

from __future__ import annotations

import copy
import math
import tempfile

import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import Dataset, Subset

from bench.adapters.hessian import (
    ARNOLDI_MAX_RANK,
    HUTCHINSON_PROBES,
    arnoldi_sizes,
    hessian_mean_diag,
)
from bench.adapters.measure import MethodResult, phase
from bench.adapters.runner import BATCH, Problem, loader


def _dattri_task(model: nn.Module):
    """The functional (per-example, ``torch.func``) task of dattri's TRAK."""
    from dattri.task import AttributionTask

    def loss_func(params, data):
        inputs, labels = data
        logits = torch.func.functional_call(model, params, inputs.unsqueeze(0))
        return functional.cross_entropy(logits, labels.unsqueeze(0))

    return AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict())


def _dattri_batch_task(model: nn.Module):
    """The hook-based (whole-batch) task of dattri's block-projected IF (LoGra, FactGraSS).

    The loss is the batch *mean*: dattri's compressor multiplies the captured output gradients
    by the batch size to get per-example gradients, and its test pass hard-codes the mean.
    """
    from dattri.task import AttributionTask

    def loss_func(net, batch, device):
        inputs, labels = (tensor.to(device) for tensor in batch)
        return functional.cross_entropy(net(inputs), labels)

    return AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict())


def dattri_trak_adapter(problem: Problem, result: MethodResult) -> None:
    """Dattri's TRAKAttributor (dense Gaussian projection to k), one checkpoint."""
    from dattri.algorithm.trak import TRAKAttributor

    model = copy.deepcopy(problem.model).eval()
    task = _dattri_task(model)

    def correct_probability(params, data):
        inputs, labels = data
        logits = torch.func.functional_call(model, params, inputs.unsqueeze(0))
        return torch.exp(-functional.cross_entropy(logits, labels.unsqueeze(0)))

    attributor = TRAKAttributor(
        task,
        correct_probability,
        device="cpu",
        projector_kwargs={"proj_dim": problem.k, "device": "cpu"},
    )
    with phase(result, "scoring"):  # no .cache(): its self_attribute then refuses the loader
        result.scores = attributor.attribute(loader(problem.test), loader(problem.train)).T.numpy()
    with phase(result, "self_influence"):
        result.suspicion = attributor.self_attribute(loader(problem.train)).numpy().ravel()
    result.k = problem.k
    result.bytes_stored = len(problem.train) * problem.k * 4
    result.note = (
        "dattri TRAK, λ = 0 (its default: the shared ratio is not applied, ΦᵀΦ is built inside"
        " attribute() and not reachable without reimplementing it); recomputes train features"
        " per call"
    )


def dattri_block_adapter(kind: str):
    """Dattri's block-projected IF: ``logra`` (factorised Gaussian) or ``factgrass``.

    The per-layer projection is ``side²`` with ``side = round(√(k / layers))``, so the stored
    dimension over all layers matches the shared ``k``; the damping is dattri's own relative
    one, ``λ = damping_ratio · mean diagonal`` of each layer's projected empirical Fisher.
    """

    def adapter(problem: Problem, result: MethodResult) -> None:
        model = copy.deepcopy(problem.model).eval()
        layers = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
        side = max(1, round(math.sqrt(max(problem.k, 1) / len(layers))))
        attributor = _block_attributor(kind, model, layers, side * side, problem)
        train_loader = loader(problem.train)
        with phase(result, "gradients"):  # projected gradients, eFIM inverse, IFVP
            attributor.cache(train_loader)
        with phase(result, "scoring"):
            scores = attributor.attribute(train_loader, loader(problem.test))
        with phase(result, "self_influence"):
            result.suspicion = attributor.compute_self_attribution().numpy()
        result.scores = scores.T.numpy()
        result.k = int(attributor.total_proj_dim)
        result.bytes_stored = 2 * len(problem.train) * result.k * 4  # gradients + IFVP
        covered = sum(p.numel() for name in layers for p in model.get_submodule(name).parameters())
        total = sum(p.numel() for p in model.parameters())
        result.note = (
            f"dattri {kind}, {side}² per Linear layer × {len(layers)} (covers {covered:,} of"
            f" {total:,} parameters: its hooks take nn.Linear only), λ = {problem.damping_ratio}"
            " · mean diag of each layer's projected eFIM"
            + ("; 2nd stage Gaussian (its SJLT is CUDA-only)" if kind == "factgrass" else "")
        )

    return adapter


def _block_attributor(kind: str, model: nn.Module, layers: list[str], proj_dim: int, problem):
    """Build a LoGra / FactGraSS attributor with fresh metadata and per-example compressors.

    Two dattri pitfalls are avoided: with ``cache_dir=None`` its metadata is read from and
    written to ``./batch_metadata.json``, so a file left by an earlier run with other sizes is
    silently reused (wrong sample counts, then a shape error); and it sets up the compressors
    by running the model on ``first_batch[0][0]``, a single example *without* its batch
    dimension, which breaks any model that is not flattened first (the CNN). Here the cache
    folder is fresh and the compressors are set up on a batch of one example.
    """
    from dattri.algorithm.block_projected_if.core.compressor import setup_model_compressors
    from dattri.algorithm.factgrass import FactGraSSAttributor
    from dattri.algorithm.logra import LoGraAttributor

    kinds = {"logra": LoGraAttributor, "factgrass": FactGraSSAttributor}
    if kind not in kinds:
        raise ValueError(f"unknown dattri block-projected kind {kind!r}: one of {list(kinds)}")
    cache_dir = tempfile.mkdtemp(dir=problem.workdir, prefix=f"dattri-{kind}-")
    attributor = kinds[kind](
        _dattri_batch_task(model),
        layer_names=layers,
        damping=problem.damping_ratio,
        device="cpu",
        proj_dim=proj_dim,
        offload="cpu",
        cache_dir=cache_dir,
    )
    first_example = next(iter(loader(problem.train, 1)))[0]
    attributor.compressors = setup_model_compressors(
        attributor.model,
        layers,
        sparsifier_kwargs=attributor.sparsifier_kwargs,
        projector_kwargs=attributor.projector_kwargs,
        sample_inputs=(first_example,),  # dattri runs the model on sample_inputs[0]
        device="cpu",
    )
    return attributor


DATTRI_IF_KINDS = ("arnoldi", "datainf", "explicit")

DATAINF_CHUNK_BYTES = 2**24  # below glibc's largest mmap threshold: no page faults per chunk
DATAINF_WORK = 6e10  # queries × Fisher examples × parameters (≈ 70 s of dattri on 2 cores)


def dattri_if_adapter(kind: str):
    """Dattri's influence-function attributors: ``arnoldi`` or ``datainf`` (``explicit`` refuses).

    Scores are ``∇L(test)ᵀ (H + λI)⁻¹ ∇L(train)`` with dattri's own approximation of the
    inverse, built from its ``generate_*_rep`` / ``transform_*_rep`` steps in one pass over each
    split (its ``attribute()`` redoes the test transform for every train batch). Suspicion is
    the self-influence ``∇L(z)ᵀ (H + λI)⁻¹ ∇L(z)``.
    """
    if kind not in DATTRI_IF_KINDS:
        raise ValueError(f"unknown dattri IF kind {kind!r}: one of {DATTRI_IF_KINDS}")

    def adapter(problem: Problem, result: MethodResult) -> None:
        if kind == "explicit":
            raise RuntimeError(
                "dattri IFAttributorExplicit is not run: its unchunked torch.func.hessian needs"
                " memory ∝ parameters × examples (10.6 GB for 400 examples of the 9 610-parameter"
                " MLP, ≈ 45 GB for 2 000) and is rebuilt on every transform call"
            )
        model = copy.deepcopy(problem.model).eval()
        task = _dattri_if_task(model)
        with phase(result, "curvature"):
            attributor, batch_size = DATTRI_IF_BUILDERS[kind](task, model, problem, result)
        with phase(result, "scoring"):
            result.scores = _dattri_if_scores(attributor, problem, batch_size).numpy()
        with phase(result, "self_influence"):
            result.suspicion = _dattri_if_self(attributor, problem.train, batch_size).numpy()

    return adapter


def _dattri_if_task(model: nn.Module):
    """The functional task of dattri's IF attributors: mean cross-entropy over a batch.

    Per-example gradients call it on a batch of one (dattri vmaps over ``data.unsqueeze(0)``
    along dimension 1); the Hessian-based attributors call it on the whole batch.
    """
    from dattri.task import AttributionTask

    def loss_func(params, data):
        inputs, labels = data
        logits = torch.func.functional_call(model, params, inputs)
        return functional.cross_entropy(logits, labels)

    return AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict())


def _dattri_arnoldi(task, model: nn.Module, problem: Problem, result: MethodResult):
    """IFAttributorArnoldi: top-``rank`` eigenpairs of ``H + λI`` from a Krylov space of 2·rank."""
    from dattri.algorithm.influence_function import IFAttributorArnoldi

    n_params = sum(p.numel() for p in model.parameters())
    rank, n_hessian = arnoldi_sizes(problem, n_params)
    damping = problem.damping_ratio * hessian_mean_diag(model, problem.train, n_hessian)
    attributor = IFAttributorArnoldi(
        task, device="cpu", proj_dim=rank, max_iter=2 * rank, regularization=damping, seed=0
    )
    attributor.cache(loader(Subset(problem.train, range(n_hessian))))  # the Hessian's data
    project = attributor.arnoldi_projectors[0]
    positive = torch.isfinite(project(torch.zeros(1, n_params)))[0]  # runs the iteration now
    # dattri keeps the top-rank eigenvalues by magnitude and scales by 1/√eigenvalue: the
    # directions of negative eigenvalues come out NaN; they are dropped here
    attributor.arnoldi_projectors[0] = lambda rep: project(rep)[:, positive]
    result.k = int(positive.sum())
    result.bytes_stored = result.k * n_params * 4
    result.note = (
        f"dattri IF Arnoldi, top {rank} |eigenvalues| of H + λI (k capped at {ARNOLDI_MAX_RANK}),"
        f" {result.k} positive kept, Krylov {2 * rank}, Hessian on {n_hessian}"
        f" examples, λ = {problem.damping_ratio} · mean diag H (Hutchinson, {HUTCHINSON_PROBES}"
        f" probes) = {damping:.3g}"
    )
    return attributor, BATCH


def _dattri_datainf(task, model: nn.Module, problem: Problem, result: MethodResult):
    """IFAttributorDataInf: layer-wise closed-form inverse of per-example ``g gᵀ + λI``."""
    from dattri.algorithm.influence_function import IFAttributorDataInf

    n_params = sum(p.numel() for p in model.parameters())
    queries = len(problem.test) + len(problem.train)  # scored test examples + self-influence
    n_fisher = min(len(problem.train), max(1, math.floor(DATAINF_WORK / (queries * n_params))))
    attributor = IFAttributorDataInf(task, device="cpu", regularization=1.0)
    attributor.cache(loader(Subset(problem.train, range(n_fisher))))  # the eFIM's examples
    gradients = attributor._cached_train_reps[0].detach()  # (n_train, p): its eFIM's factors
    mean_diag = float(gradients.pow(2).sum(dim=1).mean()) / gradients.shape[1]
    attributor.regularization = problem.damping_ratio * mean_diag
    widest = max(
        sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules()
    )
    # its transform holds (chunk, batch, layer) tensors with chunk = batch = the query batch
    batch_size = max(1, math.isqrt(DATAINF_CHUNK_BYTES // (4 * widest)))
    result.bytes_stored = gradients.numel() * 4  # the cached train gradients
    result.note = (
        f"dattri IF DataInf, all layers, eFIM on {n_fisher} examples, λ ="
        f" {problem.damping_ratio} · its mean diag = {attributor.regularization:.3g} (one λ for"
        f" every layer), query batch {batch_size}"
    )
    return attributor, batch_size


DATTRI_IF_BUILDERS = {"arnoldi": _dattri_arnoldi, "datainf": _dattri_datainf}


def _dattri_if_scores(attributor, problem: Problem, batch_size: int) -> torch.Tensor:
    """(n_test, n_train) scores: transformed test gradients · transformed train gradients."""
    queries = torch.cat(
        [
            attributor.transform_test_rep(0, attributor.generate_test_rep(0, data)).detach()
            for data in _dattri_batches(problem.test, batch_size)
        ]
    )
    columns = []
    for data in _dattri_batches(problem.train, BATCH):
        train = attributor.transform_train_rep(0, attributor.generate_train_rep(0, data))
        columns.append(queries @ train.detach().T)
    return torch.cat(columns, dim=1)


def _dattri_if_self(attributor, dataset: Dataset, batch_size: int) -> torch.Tensor:
    """Self-influence of each example: its train and test transforms, dotted."""
    values = []
    for data in _dattri_batches(dataset, batch_size):
        gradient = attributor.generate_train_rep(0, data)
        train = attributor.transform_train_rep(0, gradient)
        test = attributor.transform_test_rep(0, gradient)
        values.append((train * test).sum(dim=1).detach())
    return torch.cat(values)


def _dattri_batches(dataset: Dataset, batch_size: int):
    """Batches shaped as dattri's attributors pass them (a leading axis of size one)."""
    for batch in loader(dataset, batch_size):
        yield tuple(tensor.unsqueeze(0) for tensor in batch)
