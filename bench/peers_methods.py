"""One adapter per attribution method of the peer benchmark.

Every adapter takes the same trained model, the same train / test splits in the same order, the
same per-sample cross-entropy loss, float32 and the same thread count, and returns a
:class:`MethodResult` with its scores as (n_test, n_train), ``+ = proponent``, and a per-example
suspicion (self-influence) for mislabel detection. Peer libraries are imported inside their
adapter, so the dropinf adapters run in the main venv without them.
"""

from __future__ import annotations

import copy
import math
import signal
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peers_measure import MethodResult, PeakMemory, folder_bytes, phase
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, Dataset, Subset

BATCH = 256


@dataclass
class Problem:
    """The shared inputs of every method on one setting.

    Attributes:
        model: The trained checkpoint (every adapter gets its own deep copy).
        train: Training split (noisy labels), fixed order.
        test: Test split (the first ``n_test`` examples are scored).
        k: Compressed dimension matched across methods that have one.
        damping_ratio: Damping as a multiple of the mean diagonal of the curvature.
        num_classes: Number of classes.
        workdir: Scratch folder for methods that write to disk.
    """

    model: nn.Module
    train: Dataset
    test: Dataset
    k: int
    damping_ratio: float
    num_classes: int
    workdir: Path


def loader(dataset: Dataset, batch_size: int = BATCH) -> DataLoader:
    """A deterministic (unshuffled) loader."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


class MethodTimeoutError(TimeoutError):
    """A method ran past the benchmark's per-method time limit."""


def _on_alarm(signum: int, frame: object) -> None:
    raise MethodTimeoutError("ran past the per-method time limit")


def run_method(
    name: str,
    adapter: Callable[[Problem, MethodResult], None],
    problem: Problem,
    timeout_s: int = 0,
) -> MethodResult:
    """Run one adapter under the memory sampler; record the exception text if it fails.

    Args:
        name: Method label.
        adapter: The method's adapter.
        problem: The shared inputs.
        timeout_s: Stop the method after this many seconds (0: no limit); a stopped method is
            reported with ``error = "MethodTimeoutError: ... (> N s)"``.
    """
    result = MethodResult(name=name)
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(timeout_s)
    try:
        with PeakMemory() as memory:
            adapter(problem, result)
        result.peak_bytes = memory.peak
        check_output(result, len(problem.test), len(problem.train))
    except Exception as error:  # a peer failing is a result, not a crash of the benchmark
        result.error = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        if isinstance(error, MethodTimeoutError):
            result.error += f" (> {timeout_s} s)"
        result.note = traceback.format_exc(limit=-3)[-1500:]
        result.scores = result.suspicion = None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return result


def check_output(result: MethodResult, n_test: int, n_train: int) -> None:
    """Refuse outputs of the wrong shape or with NaN / inf (reported as the method's error)."""
    expected = {"scores": (n_test, n_train), "suspicion": (n_train,)}
    for name, shape in expected.items():
        value = getattr(result, name)
        if value is None:
            continue
        if value.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, the method returned {value.shape}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name}: expected finite values, found NaN or infinity")


# --------------------------------------------------------------------------------- dropinf


def dropinf_adapter(method: str, keep_ratio: float, mask: str = "uniform"):
    """An adapter running dropinf's InfluenceEngine with one compression method."""

    def adapter(problem: Problem, result: MethodResult) -> None:
        from dropinf import review
        from dropinf.core import CompressionConfig, CurvatureConfig, cross_entropy_per_sample
        from dropinf.engine import InfluenceEngine

        compression = CompressionConfig(method=method, keep_ratio=keep_ratio, seed=0, mask=mask)
        curvature = CurvatureConfig(kind="auto", damping_ratio=problem.damping_ratio)
        run_dir = Path(tempfile.mkdtemp(dir=problem.workdir, prefix=f"dropinf-{method}-"))
        engine = InfluenceEngine(
            copy.deepcopy(problem.model),
            cross_entropy_per_sample,
            compression,
            curvature,
            run_dir=run_dir,
            overwrite=True,
        )
        _time_engine_phases(engine, result)
        engine.fit(problem.train, batch_size=BATCH)
        with phase(result, "scoring"):
            result.scores = engine.pairwise_scores(problem.test, batch_size=BATCH).numpy()
        with phase(result, "self_influence"):
            result.self_influence = engine.self_influence().numpy()
            losses = engine.store.train_metadata()["loss"]
            result.suspicion = review.suspicion(result.self_influence, losses)
        result.bytes_stored = folder_bytes(run_dir)
        result.k = int(engine.store.read_manifest()["k"])
        result.note = (
            f"{method}, keep {keep_ratio}, mask {mask}, auto curvature; detects by the "
            "leave-one-out loss (loss + self-influence / N)"
        )

    return adapter


ENGINE_PHASES = {
    "_prepare_capture": "gradients",
    "_gradient_phase": "gradients",
    "_curvature_phase": "curvature",
    "_self_influence_phase": "self_influence",
}


def _time_engine_phases(engine, result: MethodResult) -> None:
    """Wrap the engine's fit stages so each one's time lands in its phase."""

    def timed(method, name):
        def wrapper(*args, **kwargs):
            with phase(result, name):
                return method(*args, **kwargs)

        return wrapper

    for attribute, name in ENGINE_PHASES.items():
        setattr(engine, attribute, timed(getattr(engine, attribute), name))


# ------------------------------------------------------------------------------- kronfluence


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


# ------------------------------------------------------------------------------------ traker


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


# ------------------------------------------------------------------------------------ dattri


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
ARNOLDI_MAX_RANK = 100
HESSIAN_WORK = 2e7  # examples × parameters of the data one Hessian-vector product runs on
HUTCHINSON_PROBES = 10
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


# ------------------------------------------------------------------------------------ captum


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


# ---------------------------------------------------------------------------------- cleanlab


def cleanlab_adapter(train_fold: Callable[[np.ndarray], nn.Module], folds: int = 5):
    """Cleanlab ``find_label_issues`` on cross-validated predicted probabilities.

    Args:
        train_fold: Trains the same recipe on the training examples of a boolean mask.
        folds: Number of cross-validation folds.
    """

    def adapter(problem: Problem, result: MethodResult) -> None:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        labels = np.asarray([int(y) for _, y in problem.train])
        with phase(result, "cross_val_training"):
            probs = _cross_val_probs(problem.train, labels, train_fold, problem.num_classes, folds)
        with phase(result, "find_label_issues"):
            issues = find_label_issues(labels, probs, filter_by="prune_by_noise_rate")
            quality = get_label_quality_scores(labels, probs)
        result.suspicion = 1.0 - quality
        result.bytes_stored = probs.nbytes
        result.note = f"{folds}-fold CV probs; flags {int(issues.sum())} issues"

    return adapter


def _cross_val_probs(train, labels, train_fold, num_classes: int, folds: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    fold_of = rng.permutation(len(labels)) % folds
    probs = np.zeros((len(labels), num_classes), dtype=np.float64)
    inputs = torch.stack([x for x, _ in train])
    for fold in range(folds):
        model = train_fold(fold_of != fold).eval()
        held_out = np.flatnonzero(fold_of == fold)
        with torch.no_grad():
            logits = model(inputs[torch.from_numpy(held_out)])
        probs[held_out] = torch.softmax(logits, -1).double().numpy()
    return probs
